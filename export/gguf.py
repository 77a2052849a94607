"""GGUF files for llama.cpp (`general.architecture = gemma3`), written with the `gguf` package.

Everything llama.cpp needs to compute what the PyTorch model computes is written explicitly,
because its defaults change the logits silently: head dims (default hidden/heads), both RoPE
bases (default 10k for both), the window (default: no layer windowed) and the per-layer
sliding pattern (default: period 6). Norm weights are stored as (1 + w) in F32, as llama.cpp's
Gemma graph multiplies by the weight directly. A tied output head is stored once.

This module writes unquantized files (f32, f16, bf16); quantized types are made from an f32
file by llama.cpp's own quantizer (`hslm.quant.llama_cpp`).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from hslm import __version__
from hslm.config import ModelConfig
from hslm.model import Gemma3
from hslm.chat import CHAT_TEMPLATE

ARCH = gguf.MODEL_ARCH.GEMMA3
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]

# Output type name -> (tensor type for 2-D weights, file type recorded in general.file_type).
FILE_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}

# hslm per-layer parameter -> GGUF tensor kind (names come from gguf's own table).
LAYER_TENSORS = {
    "input_norm.weight": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.q_proj.weight": gguf.MODEL_TENSOR.ATTN_Q,
    "attn.k_proj.weight": gguf.MODEL_TENSOR.ATTN_K,
    "attn.v_proj.weight": gguf.MODEL_TENSOR.ATTN_V,
    "attn.o_proj.weight": gguf.MODEL_TENSOR.ATTN_OUT,
    "attn.q_norm.weight": gguf.MODEL_TENSOR.ATTN_Q_NORM,
    "attn.k_norm.weight": gguf.MODEL_TENSOR.ATTN_K_NORM,
    "post_attn_norm.weight": gguf.MODEL_TENSOR.ATTN_POST_NORM,
    "pre_ffn_norm.weight": gguf.MODEL_TENSOR.FFN_PRE_NORM,
    "mlp.gate_proj.weight": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj.weight": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.down_proj.weight": gguf.MODEL_TENSOR.FFN_DOWN,
    "post_ffn_norm.weight": gguf.MODEL_TENSOR.FFN_POST_NORM,
}
TOP_TENSORS = {
    "embed.weight": gguf.MODEL_TENSOR.TOKEN_EMBD,
    "final_norm.weight": gguf.MODEL_TENSOR.OUTPUT_NORM,
    "lm_head.weight": gguf.MODEL_TENSOR.OUTPUT,
}


class GGUFExportError(ValueError):
    """A model/tokenizer pair that cannot be written as asked (message says why)."""


def gguf_name(name: str) -> str:
    """hslm parameter name -> GGUF tensor name."""
    if name in TOP_TENSORS:
        return gguf.TENSOR_NAMES[TOP_TENSORS[name]] + ".weight"
    _, layer, rest = name.split(".", 2)
    return gguf.TENSOR_NAMES[LAYER_TENSORS[rest]].format(bid=int(layer)) + ".weight"


def _tensor_data(name: str, tensor: torch.Tensor, weight_type) -> tuple[np.ndarray, object]:
    """(array, type) to store: norms as 1 + w in F32, other 1-D tensors F32, matrices converted."""
    data = tensor.detach().float().cpu().numpy()
    if name.endswith("norm.weight"):
        return (data + 1.0).astype(np.float32), gguf.GGMLQuantizationType.F32
    if data.ndim < 2 or weight_type == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if weight_type == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), weight_type
    return gguf.quantize(data, weight_type), weight_type  # bf16: gguf-py packs the bits


def _write_metadata(writer: gguf.GGUFWriter, config: ModelConfig, file_type, name: str) -> None:
    writer.add_name(name)
    writer.add_languages(["hi"])
    writer.add_license("apache-2.0")
    writer.add_string("general.source.hslm_version", __version__)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_size)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_base_global)
    writer.add_rope_freq_base_swa(config.rope_base_local)
    writer.add_sliding_window(config.sliding_window)
    writer.add_sliding_window_pattern([config.is_sliding(i) for i in range(config.n_layers)])


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer) -> None:
    pieces, scores, kinds = zip(*tokenizer.vocabulary())
    writer.add_tokenizer_model("llama")  # SentencePiece BPE, merged by score
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(pieces))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(kinds))
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)  # the tokenizer is trained without a dummy prefix
    writer.add_chat_template(CHAT_TEMPLATE)


def write_gguf(model: Gemma3, tokenizer, path: str | Path, out_type: str = "f16",
               name: str = "hslm") -> Path:
    """Write `model` + `tokenizer` as a GGUF file of `out_type` (f32, f16, bf16)."""
    if out_type not in FILE_TYPES:
        raise GGUFExportError(f"unknown GGUF type {out_type!r}; this writer makes "
                              f"{', '.join(FILE_TYPES)} (quantized types come from hslm.quant)")
    config = model.config
    if tokenizer.vocab_size != config.vocab_size:
        raise GGUFExportError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model has "
                              f"{config.vocab_size} embedding rows; llama.cpp needs them equal")
    if config.query_pre_attn_scalar != config.head_dim:
        raise GGUFExportError(
            f"llama.cpp scales attention by 1/sqrt(head_dim) and reads no other scale; this model "
            f"uses query_pre_attn_scalar={config.query_pre_attn_scalar} with head_dim={config.head_dim}")
    path = Path(path)
    if not path.parent.is_dir():
        raise GGUFExportError(f"output folder does not exist: {path.parent}")
    weight_type, file_type = FILE_TYPES[out_type]
    writer = gguf.GGUFWriter(path, ARCH_NAME)
    _write_metadata(writer, config, file_type, name)
    _write_tokenizer(writer, tokenizer)
    for param_name, tensor in model.state_dict().items():
        data, data_type = _tensor_data(param_name, tensor, weight_type)
        writer.add_tensor(gguf_name(param_name), data, raw_dtype=data_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except OSError as err:
        raise GGUFExportError(f"cannot write {path}: {err}") from None
    finally:
        writer.close()
    return path
