"""ONNX folders for ONNX Runtime, onnxruntime-genai and onnxruntime-web.

The graph is exported with `torch.onnx.export(dynamo=True)` from the model's own forward with
a `PastKV` cache, so one graph serves the prompt (past length 0) and every decoding step.
Inputs and outputs use onnxruntime-genai's names:

    input_ids [batch, seq]  attention_mask [batch, past + seq]  position_ids [batch, seq]
    past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
    -> logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past + seq, head_dim]

Each layer's attention is ONNX Runtime's fused `GroupQueryAttention` (see
`hslm.export.onnx_attention`), so past and present may also share one buffer of any capacity
(onnxruntime-genai's `past_present_share_buffer`): bound as both, it is updated in place, and
the attention mask's length says how many of its columns are the past. Sliding layers get every
past column as well and attend to the last `sliding_window` of them (a token sees itself and
the window - 1 before it). The folder holds
`model.onnx` (its `metadata_props` describe the model: layer types, window, RoPE bases,
special tokens, chat template, hslm version, config), the tokenizer (tokenizer.model,
tokenizer.json with a post-processor that prepends <bos>, tokenizer_config.json) and
`genai_config.json`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from hslm import __version__
from hslm.export.onnx_attention import FusedAttentionPastKV, translation_table
from hslm.model import Gemma3
from hslm.chat import CHAT_TEMPLATE

MODEL_FILE = "model.onnx"
GENAI_CONFIG_FILE = "genai_config.json"
OPSET = 20
# Names in the graph (onnxruntime-genai's convention).
PAST_KEY, PAST_VALUE = "past_key_values.{}.key", "past_key_values.{}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{}.key", "present.{}.value"
# metadata_props keys; "hslm.config" holds the whole ModelConfig as JSON.
META_PREFIX = "hslm."


class OnnxExportError(ValueError):
    """A model/tokenizer/folder that cannot be exported as asked (message says why)."""


class _GraphForward(nn.Module):
    """The exported signature: flat past tensors in, logits and flat present tensors out."""

    def __init__(self, model: Gemma3):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        n_layers = self.model.config.n_layers
        # The mask covers past + new columns; the past buffers may be longer (shared with the
        # presents, see hslm.export.onnx_attention).
        past_length = attention_mask.shape[1] - input_ids.shape[1]
        cache = FusedAttentionPastKV([past[2 * i] for i in range(n_layers)],
                                     [past[2 * i + 1] for i in range(n_layers)], past_length)
        logits = self.model(input_ids, attention_mask, position_ids, cache)
        presents = [t for pair in zip(cache.keys, cache.values) for t in pair]
        return (logits, *presents)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the graph, in order."""
    pasts = [name.format(i) for i in range(n_layers) for name in (PAST_KEY, PAST_VALUE)]
    presents = [name.format(i) for i in range(n_layers) for name in (PRESENT_KEY, PRESENT_VALUE)]
    return ["input_ids", "attention_mask", "position_ids", *pasts], ["logits", *presents]


def _example_inputs(model: Gemma3):
    # Sizes other than 0 and 1, so that the exporter keeps every dimension symbolic.
    cfg = model.config
    batch, past, new = 2, 3, 5
    input_ids = torch.randint(0, cfg.vocab_size, (batch, new))
    attention_mask = torch.ones(batch, past + new, dtype=torch.long)
    position_ids = torch.arange(past, past + new).expand(batch, new)
    dtype = model.embed.weight.dtype
    pasts = tuple(torch.zeros(batch, cfg.n_kv_heads, past, cfg.head_dim, dtype=dtype)
                  for _ in range(2 * cfg.n_layers))
    return input_ids, attention_mask, position_ids, pasts


def metadata(model: Gemma3, tokenizer) -> dict[str, str]:
    """What a runtime needs to know about the graph and checks before running it."""
    cfg = model.config
    values = {
        "version": __version__,
        "config": json.dumps(cfg.to_dict()),
        "layer_types": json.dumps(cfg.layer_types),
        "sliding_window": cfg.sliding_window,
        "rope_base_local": cfg.rope_base_local,
        "rope_base_global": cfg.rope_base_global,
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "end_of_turn_token_id": tokenizer.end_of_turn_id,
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_sha256": tokenizer.sha256,
    }
    return {META_PREFIX + key: str(value) for key, value in values.items()}


def genai_config(model: Gemma3, tokenizer) -> dict:
    """onnxruntime-genai's description of the folder (its model builder's layout)."""
    cfg = model.config
    return {
        "model": {
            "type": "gemma3_text",
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": [tokenizer.eos_id, tokenizer.end_of_turn_id],
            "pad_token_id": tokenizer.pad_id,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.context_length,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
                "num_attention_heads": cfg.n_heads,
                "num_key_value_heads": cfg.n_kv_heads,
                "num_hidden_layers": cfg.n_layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": PAST_KEY.replace("{}", "%d"),
                           "past_value_names": PAST_VALUE.replace("{}", "%d")},
                "outputs": {"logits": "logits",
                            "present_key_names": PRESENT_KEY.replace("{}", "%d"),
                            "present_value_names": PRESENT_VALUE.replace("{}", "%d")},
            },
        },
        "search": {
            "max_length": cfg.context_length, "min_length": 0, "do_sample": False,
            "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "top_p": 1.0,
            "temperature": 1.0, "repetition_penalty": 1.0, "early_stopping": True,
            "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0,
            # One buffer of max_length per layer, updated in place (see the module doc).
            "past_present_share_buffer": True,
        },
    }


def write_folder_files(folder: Path, model: Gemma3, tokenizer) -> None:
    """The tokenizer and genai_config.json beside the graph."""
    tokenizer.save(folder, model_max_length=model.config.context_length)
    (folder / GENAI_CONFIG_FILE).write_text(
        json.dumps(genai_config(model, tokenizer), indent=2) + "\n", encoding="utf-8")


def export_onnx(model: Gemma3, tokenizer, folder: str | Path) -> Path:
    """Write an fp32 ONNX folder for `model` + `tokenizer`; returns the graph's path."""
    import onnx

    cfg = model.config
    if tokenizer.vocab_size > cfg.vocab_size:
        raise OnnxExportError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{cfg.vocab_size} embedding rows")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OnnxExportError(f"cannot create the output folder {folder}: {err.strerror}") from None
    if model.embed.weight.dtype != torch.float32:  # the graph is fp32; leave the caller's model be
        model = copy.deepcopy(model).float()
    inputs, outputs = io_names(cfg.n_layers)
    past_dims = {0: "batch_size", 2: "past_sequence_length"}
    dynamic_shapes = ({0: "batch_size", 1: "sequence_length"},
                      {0: "batch_size", 1: "total_sequence_length"},
                      {0: "batch_size", 1: "sequence_length"},
                      tuple(past_dims for _ in range(2 * cfg.n_layers)))
    with torch.no_grad():
        program = torch.onnx.export(_GraphForward(model).eval(), _example_inputs(model), dynamo=True,
                                    opset_version=OPSET, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=dynamic_shapes, optimize=True,
                                    custom_translation_table=translation_table(), verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(model, tokenizer))
    path = folder / MODEL_FILE
    onnx.save_model(proto, path)
    write_folder_files(folder, model, tokenizer)
    return path
