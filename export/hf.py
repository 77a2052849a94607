"""Hugging Face folders: `config.json` (model_type `gemma3_text`) + `model.safetensors` + tokenizer.

`save_hf` writes a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads;
`load_hf` reads such a folder back, including Google's `gemma-3-270m` layout (and the text part
of multimodal Gemma 3 checkpoints). Only local files are read: nothing here touches a hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hslm import __version__
from hslm.config import ConfigError, ModelConfig, gemma3_layer_types
from hslm.model import Gemma3

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"
# Prefixes that put the text model inside larger checkpoints (Gemma 3 multimodal, older layouts).
HF_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")

# hslm parameter name -> Hugging Face name, for per-layer names without the `layers.{i}.` part.
HF_LAYER_NAMES = {
    "input_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "post_attn_norm.weight": "post_attention_layernorm.weight",
    "pre_ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "post_ffn_norm.weight": "post_feedforward_layernorm.weight",
}
HF_TOP_NAMES = {"embed.weight": "embed_tokens.weight", "final_norm.weight": "norm.weight"}


class HFFormatError(ValueError):
    """A folder that is not a loadable Gemma 3 text model (message says why)."""


def hf_name(name: str) -> str:
    """hslm parameter name -> Hugging Face Gemma3ForCausalLM name."""
    if name == "lm_head.weight":
        return name
    if name in HF_TOP_NAMES:
        return "model." + HF_TOP_NAMES[name]
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{HF_LAYER_NAMES[rest]}"


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "num_hidden_layers": config.n_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_size,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": config.sliding_window,
        "layer_types": list(config.layer_types),
        # transformers >= 5 reads rope_parameters; 4.x reads rope_theta / rope_local_base_freq.
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": config.rope_base_local},
            "full_attention": {"rope_type": "default", "rope_theta": config.rope_base_global},
        },
        "rope_theta": config.rope_base_global,
        "rope_local_base_freq": config.rope_base_local,
        "rms_norm_eps": config.rms_norm_eps,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "attention_bias": False,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "bos_token_id": config.bos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "hslm_version": __version__,
    }


def config_from_hf(values: dict) -> ModelConfig:
    """ModelConfig from a Hugging Face Gemma 3 config.json (transformers 4.x or 5.x style)."""
    if "text_config" in values:  # multimodal Gemma 3: the language model's part
        values = {**values["text_config"], "model_type": "gemma3_text"}
    model_type = values.get("model_type")
    if model_type not in ("gemma3_text", "gemma3"):
        raise HFFormatError(f"model_type is {model_type!r}; only Gemma 3 text models are supported")
    if not isinstance(values.get("num_hidden_layers"), int):
        raise HFFormatError("config.json lacks the key 'num_hidden_layers' (an integer)")
    n_layers = values["num_hidden_layers"]
    rope = values.get("rope_parameters") or {}
    local_base = (rope.get("sliding_attention") or {}).get("rope_theta",
                                                           values.get("rope_local_base_freq", 10_000.0))
    global_base = (rope.get("full_attention") or {}).get("rope_theta", values.get("rope_theta", 1_000_000.0))
    layer_types = values.get("layer_types") or gemma3_layer_types(
        n_layers, values.get("sliding_window_pattern", values.get("_sliding_window_pattern", 6)))
    if values.get("final_logit_softcapping") or values.get("attn_logit_softcapping"):
        raise HFFormatError("logit soft-capping is not part of the Gemma 3 architecture hslm implements")
    # RoPE scaling (Gemma 3 4B+: linear, factor 8 on global layers) and bidirectional attention
    # (EmbeddingGemma) change the logits; hslm implements neither, so refuse rather than ignore.
    for params in [values.get("rope_scaling"), rope, *rope.values()]:
        if isinstance(params, dict):
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type != "default":
                raise HFFormatError(f"RoPE scaling {rope_type!r} is not supported (hslm implements "
                                    "plain RoPE only)")
    if values.get("use_bidirectional_attention"):
        raise HFFormatError("bidirectional attention (an encoder such as EmbeddingGemma) is not "
                            "supported: hslm models are causal")
    eos = values.get("eos_token_id", 1)
    try:
        return ModelConfig(
            vocab_size=values["vocab_size"],
            context_length=values.get("max_position_embeddings", 32_768),
            n_layers=n_layers,
            hidden_size=values["hidden_size"],
            n_heads=values["num_attention_heads"],
            n_kv_heads=values["num_key_value_heads"],
            head_dim=values.get("head_dim", values["hidden_size"] // values["num_attention_heads"]),
            ffn_size=values["intermediate_size"],
            sliding_window=values["sliding_window"],
            layer_types=layer_types,
            rope_base_local=float(local_base),
            rope_base_global=float(global_base),
            rms_norm_eps=values.get("rms_norm_eps", 1e-6),
            query_pre_attn_scalar=int(values.get("query_pre_attn_scalar", values.get("head_dim", 256))),
            tie_embeddings=values.get("tie_word_embeddings", True),
            init_std=values.get("initializer_range", 0.02),
            pad_token_id=values.get("pad_token_id", 0) or 0,
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            bos_token_id=values.get("bos_token_id", 2),
        )
    except KeyError as err:
        raise HFFormatError(f"config.json lacks the key {err}") from None
    except ConfigError as err:
        raise HFFormatError(f"config.json does not describe a valid model: {err}") from None


def save_hf(model: Gemma3, output_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Write `model` (and `tokenizer`, if given) as a Hugging Face folder; returns the folder."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype or model.embed.weight.dtype
    tensors = {hf_name(name): tensor.detach().to(dtype).contiguous().cpu()
               for name, tensor in model.state_dict().items()}
    save_file(tensors, output_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    config = hf_config(model.config, dtype)
    (output_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": config["bos_token_id"], "pad_token_id": config["pad_token_id"],
                  "eos_token_id": config["eos_token_id"]}
    if tokenizer is not None:
        generation["eos_token_id"] = [tokenizer.eos_id, tokenizer.end_of_turn_id]
        tokenizer.save(output_dir)
    (output_dir / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n",
                                                     encoding="utf-8")
    return output_dir


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise HFFormatError(f"{index} is not a valid safetensors index: {err!r}") from None
        for shard in shards:
            # A file in the folder, by name: an index must not read weights from elsewhere.
            # (Symbolic links inside the folder are followed, as in Hugging Face's cache.)
            if not isinstance(shard, str) or not shard.strip() or Path(shard).is_absolute() \
                    or ".." in Path(shard).parts:
                raise HFFormatError(f"{index} names a weights file outside {folder}: {shard!r}")
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise HFFormatError(f"no *.safetensors weights in {folder}")
    return files


def load_hf(folder: str | Path, dtype: torch.dtype = torch.float32) -> Gemma3:
    """Load a Hugging Face Gemma 3 text folder (local files only) into an hslm model."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise HFFormatError(f"{folder} has no {CONFIG_FILE}; is it a Hugging Face model folder?")
    try:
        config = config_from_hf(json.loads(config_path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as err:
        raise HFFormatError(f"{config_path} is not valid JSON: {err}") from None

    with torch.device("meta"):  # shapes only: the real tensors come from the files
        model = Gemma3(config)
    expected = model.state_dict()
    wanted = {hf_name(name): name for name in expected}
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        try:
            with safe_open(path, framework="pt") as weights:
                for key in weights.keys():
                    name = wanted.get(_strip_prefix(key))
                    if name is not None:
                        state[name] = weights.get_tensor(key).to(dtype)
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise HFFormatError(f"cannot read weights {path}: {err}") from None
    missing = sorted(set(expected) - set(state))
    if missing:
        raise HFFormatError(f"{folder} lacks {len(missing)} weight(s), e.g. "
                            f"{[hf_name(m) for m in missing[:3]]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise HFFormatError(f"weight {hf_name(name)} has shape {tuple(tensor.shape)}, the config "
                                f"implies {tuple(expected[name].shape)}")
    model.load_state_dict(state, assign=True)
    return model


def _strip_prefix(key: str) -> str:
    if key == "lm_head.weight":
        return key
    for prefix in HF_TEXT_PREFIXES:
        if key.startswith(prefix):
            return "model." + key[len(prefix):]
    return key
