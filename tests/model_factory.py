"""Small Gemma 3 models shared by the model, interop, generation and export tests.

Weights are perturbed away from the default init so that comparisons mean something: the RMSNorm
weights are non-zero (so the (1 + w) scale matters) and the init std is large enough that logits
are O(1-10) and attention is far from uniform.
"""

from __future__ import annotations

import pytest
import torch

from hslm.config import GLOBAL, SLIDING, ModelConfig
from hslm.model import Gemma3

WINDOW = 16  # the tiny preset's sliding window
SEQ_LEN = 3 * WINDOW  # test sequences are longer than the window (3x)
LAYOUT = [GLOBAL, SLIDING, GLOBAL, SLIDING, SLIDING]  # not Gemma's "every 6th is global"

# name -> overrides of the tiny preset
CONFIGS = {
    # the tiny preset's layout: sliding, sliding, global, sliding; tied embeddings
    "mixed": {},
    # a non-default layout (starts and ends differently from Gemma's 5:1 pattern), untied output
    # head, one KV head (4:1 grouped-query), and non-default RoPE bases / scale / eps so that a
    # value dropped on the way to transformers shows up
    "custom": {
        "n_layers": 5, "layer_types": [GLOBAL, SLIDING, GLOBAL, GLOBAL, SLIDING],
        "tie_embeddings": False, "n_kv_heads": 1, "rope_base_local": 500.0,
        "rope_base_global": 20_000.0, "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-5,
    },
}


def make_config(name: str = "mixed", **overrides) -> ModelConfig:
    values = {"vocab_size": 256, "context_length": 128, "init_std": 0.3, **CONFIGS[name], **overrides}
    config = ModelConfig.preset("tiny", **values)
    assert config.sliding_window == WINDOW
    return config


def perturb_norms(model: torch.nn.Module, std: float = 0.3) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, std)


def make_model(config: ModelConfig, seed: int = 0) -> Gemma3:
    torch.manual_seed(seed)
    model = Gemma3(config).eval()
    perturb_norms(model)
    return model


def left_padded_batch(vocab_size: int, padding=(0, 5, 21), length: int = SEQ_LEN, seed: int = 1):
    """(input_ids, attention_mask, position_ids) for rows left-padded by `padding` columns.

    One row's padding (21) is longer than the window. Padded columns hold token 0.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (len(padding), length), generator=generator)
    mask = torch.ones(len(padding), length, dtype=torch.long)
    for row, pad in enumerate(padding):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run token by token: extra threads cost more than they save, and make timings
    erratic on a busy 2-core machine. Use it with `from model_factory import single_thread`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def briefly_trained_model(tokenizer, hindi_data_dir, **overrides) -> Gemma3:
    """A small model with a non-default layout, trained for a few hundred steps on real Hindi
    so that its predictions are peaked like a real model's (quantization errors on random
    weights say little). head_dim differs from hidden/heads and both RoPE bases from
    llama.cpp's defaults, so every layout key in the file matters. `overrides` change the
    tiny preset's shape further."""
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", **{
        "vocab_size": tokenizer.vocab_size, "n_layers": 5, "layer_types": LAYOUT,
        "head_dim": 32, "query_pre_attn_scalar": 32, "rope_base_local": 5_000.0,
        "rope_base_global": 200_000.0, **overrides})
    model = Gemma3(config)
    lines = (hindi_data_dir / "stories_hindi_discourse_sentences.txt").read_text("utf-8")
    stream_ids = torch.tensor(tokenizer.encode(lines[:200_000]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        starts = torch.randint(0, len(stream_ids) - 65, (16,), generator=generator)
        batch = torch.stack([stream_ids[s:s + 65] for s in starts])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 6.5  # it learned something (uniform would be ln(8000) = 9.0)
    return model.eval()
