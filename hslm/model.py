"""The Gemma 3 text model, readable top to bottom.

    tokens -> embedding * sqrt(hidden) -> N x Block -> RMSNorm -> tied output head -> logits

    Block:  x = x + post_attn_norm(Attention(input_norm(x)))
            x = x + post_ffn_norm(GatedGELU(pre_ffn_norm(x)))

Attention uses grouped-query heads, RMSNorm on queries and keys, and rotate-half RoPE. Layers are
either *sliding* (a token sees itself and the `sliding_window - 1` tokens before it, RoPE base
10k) or *global* (the whole causal context, RoPE base 1M). Numerics follow Hugging Face's
`Gemma3ForCausalLM`: norms and the embedding scale are computed in fp32.

Attention by case, all inside `Attention`: training and prefill without padding or cache build no
[T x T] mask — global layers call SDPA with `is_causal=True` (flash kernels on GPUs) and sliding
layers FlexAttention with a sliding-window `BlockMask` (GPUs; it has no CPU backward) or, on
CPUs, SDPA over blocks of queries, each with only the keys of its window. Padded batches and
cached decoding use boolean masks (`attention_masks`); `use_attention("sdpa-mask")` forces them.

Positions: a batch may be left-padded. `attention_mask` (1 = token, 0 = padding) is over every
column seen so far, and `position_ids` default to the count of real tokens before each one.
Window distances are measured in columns, which equals positions for left padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from hslm.config import ConfigError, ModelConfig

# How unpadded, uncached sequences are attended (see `Attention`): auto = flex on CUDA,
# sdpa-blocks elsewhere; sdpa-mask = the boolean masks of padded batches, the reference.
ATTENTION_KERNELS = ("auto", "flex", "sdpa-blocks", "sdpa-mask")
QUERY_BLOCK = 256  # queries per SDPA call in sdpa-blocks (128-512 measured alike on CPU)


class RMSNorm(nn.Module):
    """RMSNorm with Gemma's (1 + w) scale, w initialised to zero, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).type_as(x)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """cos/sin tables [B, T, head_dim] for rotate-half RoPE, computed in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device,
                                            dtype=torch.float32) / head_dim))
    # The outer product as Hugging Face's Gemma writes it, [1, D/2, 1] @ [B, 1, T]: the form
    # ONNX Runtime's rotary fusion recognises in an exported graph (see hslm.quant.onnx).
    angles = (inv_freq[None, :, None] @ positions[:, None, :].float()).transpose(1, 2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of past tokens, for incremental decoding.

    Global layers keep every past column (storage grows by doubling up to the context length).
    Sliding layers keep only the last `sliding_window` columns in a ring buffer, so their memory
    is bounded whatever the length. Keys are stored after RoPE, so the order inside the ring does
    not matter: masks are built from the column index stored for each slot.

    `capacity` allocates global layers' storage up front (e.g. the context length): shapes then
    never change, so a decode step compiled with `torch.compile(dynamic=True)` is compiled once
    (ring slots are tensors, the length a symbolic int), not once per token.
    """

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype, capacity: int = 0):
        self.config = config
        self.length = 0  # columns seen so far
        self.key_valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        window = config.sliding_window
        self.ring_columns = torch.full((window,), -1, dtype=torch.long, device=device)  # -1: empty
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in range(config.n_layers):
            slots = window if config.is_sliding(layer) else capacity
            shape = (batch_size, config.n_kv_heads, slots, config.head_dim)
            self.keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.values.append(torch.zeros(shape, device=device, dtype=dtype))

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class PastKV:
    """Keys and values of every past column as plain tensors [B, kv_heads, past, head_dim], one
    pair per layer; each layer appends its new columns (present = past + new).

    The cache of an exported graph (ONNX), whose past and present are inputs and outputs: no
    ring buffer and no in-place writes, and sliding layers keep every column too (the window is
    applied by the mask). Without an `attention_mask`, every past column is a real token.
    Attention over it is the cache's own `attend`, so that an exporter can replace it by a
    runtime's fused operator (see `hslm.export.onnx_attention`).
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = list(keys), list(values)
        self.length = keys[0].shape[2]

    def attend(self, layer: int, q, k, v, mask, scale: float, window: int | None) -> torch.Tensor:
        """Append the new keys/values of `layer`; its attention output [B, T, heads * head_dim].
        q: [B, heads, T, D]; k, v: [B, kv_heads, T, D]; mask: [B, 1, T, past + T] (True = attend).
        The mask already applies `window` (sliding layers; None: global), which a fused kernel
        may use to skip columns."""
        self.keys[layer] = torch.cat((self.keys[layer], k), dim=2)
        self.values[layer] = torch.cat((self.values[layer], v), dim=2)
        out = F.scaled_dot_product_attention(q, self.keys[layer], self.values[layer],
                                             attn_mask=mask, scale=scale,
                                             enable_gqa=q.shape[1] != k.shape[1])
        return out.transpose(1, 2).flatten(2)


def attention_masks(config: ModelConfig, key_valid: torch.Tensor, first_column: int,
                    n_new: int, ring_columns: torch.Tensor | None):
    """Boolean SDPA masks (True = attend) for the new columns [first_column, first_column + n_new).

    Returns (global_mask [B,1,T,first_column+T], sliding_mask [B,1,T,K]). Without a cache the
    sliding keys are all columns; with one they are the ring slots followed by the new columns,
    or, when decoding one token, the ring slots alone (see `Attention._update_cache`).
    A padded query would see no key at all (softmax of nothing = NaN), so it sees itself.
    """
    device = key_valid.device
    query_cols = torch.arange(first_column, first_column + n_new, device=device)
    all_cols = torch.arange(first_column + n_new, device=device)

    def mask_for(key_cols: torch.Tensor, window: int | None) -> torch.Tensor:
        distance = query_cols[:, None] - key_cols[None, :]
        allowed = (distance >= 0) & (key_cols[None, :] >= 0)
        if window is not None:
            allowed &= distance < window
        valid = key_valid[:, key_cols.clamp(min=0)]  # [B, K]
        allowed = allowed[None] & valid[:, None, :]
        allowed |= (distance == 0)[None]
        return allowed[:, None]

    global_mask = mask_for(all_cols, None)
    if ring_columns is None:
        sliding_keys = all_cols
    elif n_new == 1:  # decoding writes the new column into the ring before attending
        sliding_keys = ring_columns.clone()
        # a tensor slot: an int one would make torch.compile specialise on each ring slot
        sliding_keys[query_cols % config.sliding_window] = query_cols
    else:
        sliding_keys = torch.cat((ring_columns, query_cols))
    sliding_mask = mask_for(sliding_keys, config.sliding_window)
    return global_mask, sliding_mask


def single_query_attention(q, k, v, mask, scale):
    """Attention for one new token per sequence (decoding), as two small matmuls.

    SDPA's CPU flash kernel has a fixed cost per call that dominates when there is one query
    (~0.3 ms fp32, ~0.9 ms bf16 per layer). The query heads that share a key/value head are
    stacked as rows, so grouped-query attention needs no copy of the keys. Computed in fp32:
    CPU bf16 batched matmuls of these shapes are slower than converting.
    q: [B, Hq, 1, D]; k, v: [B, Hkv, S, D]; mask: [B, 1, 1, S] (True = attend).
    """
    B, n_heads, _, head_dim = q.shape
    n_kv = k.shape[1]
    grouped = q.float().reshape(B, n_kv, n_heads // n_kv, head_dim)
    scores = (grouped @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v.float()
    return out.reshape(B, n_heads, 1, head_dim).to(q.dtype)


_SLIDING_BLOCK_MASKS: dict[tuple[int, int, str], BlockMask] = {}


def sliding_block_mask(length: int, window: int, device) -> BlockMask:
    """FlexAttention's block-sparse sliding-window causal mask for `length` queries and keys,
    built once per (length, window, device): blocks entirely outside the window are skipped."""
    key = (length, window, str(device))
    if key not in _SLIDING_BLOCK_MASKS:
        def in_window(batch, head, query, key_column):
            return (query >= key_column) & (query - key_column < window)
        _SLIDING_BLOCK_MASKS[key] = create_block_mask(in_window, None, None, length, length,
                                                      device=device)
    return _SLIDING_BLOCK_MASKS[key]


def window_blocked_attention(q, k, v, window: int, scale: float) -> torch.Tensor:
    """Sliding-window causal attention as SDPA over blocks of QUERY_BLOCK queries, each seeing
    only the keys its window reaches, with a [block x keys] mask: exact, and without the
    [T x T] scores a full mask costs (on CPUs, where FlexAttention has no backward).
    q: [B, heads, T, D]; k, v: [B, kv_heads, T, D]."""
    T = q.shape[2]
    outputs = []
    for start in range(0, T, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, T)
        first_key = max(0, start - window + 1)
        distance = (torch.arange(start, stop, device=q.device)[:, None]
                    - torch.arange(first_key, stop, device=q.device)[None, :])
        outputs.append(F.scaled_dot_product_attention(
            q[:, :, start:stop], k[:, :, first_key:stop], v[:, :, first_key:stop],
            attn_mask=(distance >= 0) & (distance < window), scale=scale,
            enable_gqa=q.shape[1] != k.shape[1]))
    return torch.cat(outputs, dim=2)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.config = config
        self.layer = layer
        self.sliding = config.is_sliding(layer)
        self.q_proj = nn.Linear(config.hidden_size, config.q_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.kv_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.kv_size, bias=False)
        self.o_proj = nn.Linear(config.q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.kernel = "auto"  # for unmasked calls; set by Gemma3.use_attention

    def forward(self, x, rope, mask, cache: KVCache | PastKV | None):
        """mask: boolean [B, 1, T, keys] (True = attend), or None for causal attention over
        exactly these T columns (no padding, no cache)."""
        cfg = self.config
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2))
        k = self.k_norm(self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2))
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        scale = cfg.query_pre_attn_scalar ** -0.5
        if isinstance(cache, PastKV):
            window = cfg.sliding_window if self.sliding else None
            return self.o_proj(cache.attend(self.layer, q, k, v, mask, scale, window))
        if mask is None:
            out = self._unmasked(q, k, v, scale)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, cfg.q_size))
        if cache is not None:
            k, v = self._update_cache(cache, k, v)
        if T == 1:
            out = single_query_attention(q, k, v, mask, scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                 enable_gqa=cfg.n_heads != cfg.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, cfg.q_size))

    def _unmasked(self, q, k, v, scale: float) -> torch.Tensor:
        """Causal attention over these columns alone, by the kernel fitting the layer and device."""
        window, T = self.config.sliding_window, q.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if not self.sliding or T <= window:  # the window cuts nothing: plain causal
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=gqa)
        kernel = self.kernel
        if kernel == "auto":
            kernel = "flex" if q.device.type == "cuda" else "sdpa-blocks"
        if kernel == "flex":
            return flex_attention(q, k, v, block_mask=sliding_block_mask(T, window, q.device),
                                  scale=scale, enable_gqa=gqa)
        return window_blocked_attention(q, k, v, window, scale)

    def _update_cache(self, cache: KVCache, k, v):
        """Store the new keys/values; return the keys/values this layer attends over."""
        first, T = cache.length, k.shape[2]
        old_k, old_v = cache.keys[self.layer], cache.values[self.layer]
        if self.sliding:
            window = self.config.sliding_window
            if T == 1:  # decoding: the new column replaces the one leaving the window
                slot = torch.arange(first, first + 1, device=k.device) % window  # see attention_masks
                old_k[:, :, slot] = k
                old_v[:, :, slot] = v
                return old_k, old_v
            # A chunk's early queries still need the columns its later ones would overwrite:
            # attend over ring + chunk, then keep the chunk's last `window` columns.
            keys, values = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)
            keep = min(T, window)
            slots = torch.arange(first + T - keep, first + T, device=k.device) % window
            old_k[:, :, slots] = k[:, :, T - keep:]
            old_v[:, :, slots] = v[:, :, T - keep:]
            return keys, values
        needed = first + T
        if old_k.shape[2] < needed:  # grow by doubling, never past the context length
            capacity = min(max(needed, 2 * old_k.shape[2], 64), max(needed, self.config.context_length))
            grown_shape = (*old_k.shape[:2], capacity, old_k.shape[3])
            grown_k = old_k.new_zeros(grown_shape)
            grown_v = old_v.new_zeros(grown_shape)
            grown_k[:, :, :first] = old_k[:, :, :first]
            grown_v[:, :, :first] = old_v[:, :, :first]
            cache.keys[self.layer], cache.values[self.layer] = grown_k, grown_v
            old_k, old_v = grown_k, grown_v
        old_k[:, :, first:needed] = k
        old_v[:, :, first:needed] = v
        return old_k[:, :, :needed], old_v[:, :, :needed]


class GatedGELU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.ffn_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.ffn_size, bias=False)
        self.down_proj = nn.Linear(config.ffn_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_norm = RMSNorm(config.hidden_size, eps)
        self.attn = Attention(config, layer)
        self.post_attn_norm = RMSNorm(config.hidden_size, eps)
        self.pre_ffn_norm = RMSNorm(config.hidden_size, eps)
        self.mlp = GatedGELU(config)
        self.post_ffn_norm = RMSNorm(config.hidden_size, eps)

    def forward(self, x, rope, mask, cache):
        x = x + self.post_attn_norm(self.attn(self.input_norm(x), rope, mask, cache))
        return x + self.post_ffn_norm(self.mlp(self.pre_ffn_norm(x)))


class Gemma3(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = "auto"  # see use_attention
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights as `config.init` says; RMSNorm weights start at zero (scale 1).

        "normal" (default): every linear and the embedding ~ N(0, init_std), as Hugging Face's
        Gemma. "torch-default": PyTorch's Kaiming-uniform linears and N(0, 1) embeddings, the
        original Hindi model's init (kept for comparison; with tied embeddings its logits start
        large).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if self.config.init == "normal":
                    nn.init.normal_(module.weight, std=self.config.init_std)
                else:
                    module.reset_parameters()
            elif isinstance(module, nn.Embedding):
                std = self.config.init_std if self.config.init == "normal" else 1.0
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.zeros_(module.weight)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.config.tie_embeddings else self.lm_head.weight

    def use_attention(self, kernel: str) -> None:
        """How unpadded, uncached sequences are attended: one of ATTENTION_KERNELS (same
        numerics; flex needs a GPU for gradients and torch.compile for speed)."""
        if kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"unknown attention {kernel!r}; choose one of {ATTENTION_KERNELS}")
        self.attention = kernel
        for block in self.layers:
            block.attn.kernel = kernel

    def new_cache(self, batch_size: int, capacity: int = 0) -> KVCache:
        weight = self.embed.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype, capacity)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] with `last_only`) for `input_ids` [B, T].

        With a `cache` (`KVCache` or `PastKV`), input_ids are the columns after those already
        cached and `attention_mask`, if given, covers the cached columns plus the new ones.
        """
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, cache)
        if last_only:
            hidden = hidden[:, -1:]
        return F.linear(hidden, self.output_weight)

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        cfg = self.config
        B, T = input_ids.shape
        first = cache.length if cache is not None else 0
        if first + T > cfg.context_length:
            raise ValueError(f"sequence of {first + T} tokens is longer than the model's context "
                             f"length ({cfg.context_length})")
        if attention_mask is None:
            key_valid = torch.ones(B, first + T, dtype=torch.bool, device=input_ids.device)
            if isinstance(cache, KVCache):
                key_valid[:, :first] = cache.key_valid
        else:
            key_valid = attention_mask.to(device=input_ids.device, dtype=torch.bool)
            if key_valid.shape != (B, first + T):
                raise ValueError(f"attention_mask must have shape {(B, first + T)} (cached + new "
                                 f"columns), got {tuple(key_valid.shape)}")
        if position_ids is None:
            position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, first:]

        x = self.embed(input_ids)
        x = (x.float() * math.sqrt(cfg.hidden_size)).to(x.dtype)
        rope_local = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_base_local, x.dtype)
        rope_global = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_base_global, x.dtype)
        if cache is None and attention_mask is None and self.attention != "sdpa-mask":
            global_mask = sliding_mask = None  # causal over these columns: no mask to build
        else:
            ring = cache.ring_columns if isinstance(cache, KVCache) else None
            global_mask, sliding_mask = attention_masks(cfg, key_valid, first, T, ring)

        for block in self.layers:
            sliding = block.attn.sliding
            x = block(x, rope_local if sliding else rope_global,
                      sliding_mask if sliding else global_mask, cache)

        if isinstance(cache, KVCache):
            window = cfg.sliding_window
            keep = min(T, window)
            new_cols = torch.arange(first + T - keep, first + T, device=input_ids.device)
            cache.ring_columns[new_cols % window] = new_cols
            cache.key_valid = key_valid
            cache.length = first + T
        return self.final_norm(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
