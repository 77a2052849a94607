"""GGUF export: the metadata llama.cpp needs, tensors as llama.cpp expects them, clear errors."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from hslm.config import GLOBAL, SLIDING, ModelConfig
from hslm.export.gguf import GGUFExportError, gguf_name, write_gguf
from hslm.model import Gemma3
from model_factory import perturb_norms


def make_model(vocab_size: int, **overrides) -> Gemma3:
    torch.manual_seed(0)
    model = Gemma3(ModelConfig.preset("tiny", vocab_size=vocab_size, init_std=0.1, **overrides))
    perturb_norms(model)
    return model.eval()


def field_value(reader: gguf.GGUFReader, key: str):
    field = reader.fields[key]
    values = [field.parts[i] for i in field.data]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(values[0]).decode("utf-8")
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [v.tolist()[0] for v in values]
    return values[0].tolist()[0]


@pytest.fixture(scope="module")
def layout_model(trained_tokenizer):
    # A non-default layout: llama.cpp would assume "global every 6th" without the bool array.
    layers = [GLOBAL, SLIDING, GLOBAL, SLIDING, SLIDING]
    return make_model(trained_tokenizer.vocab_size, n_layers=5, layer_types=layers,
                      rope_base_local=5_000.0, rope_base_global=200_000.0)


def test_metadata_describes_the_model(layout_model, trained_tokenizer, tmp_path):
    config = layout_model.config
    reader = gguf.GGUFReader(write_gguf(layout_model, trained_tokenizer, tmp_path / "m.gguf", "f32"))
    expected = {
        "general.architecture": "gemma3",
        "gemma3.context_length": config.context_length,
        "gemma3.embedding_length": config.hidden_size,
        "gemma3.block_count": config.n_layers,
        "gemma3.feed_forward_length": config.ffn_size,
        "gemma3.attention.head_count": config.n_heads,
        "gemma3.attention.head_count_kv": config.n_kv_heads,
        "gemma3.attention.key_length": config.head_dim,
        "gemma3.attention.value_length": config.head_dim,
        "gemma3.rope.freq_base": config.rope_base_global,
        "gemma3.rope.freq_base_swa": config.rope_base_local,
        "gemma3.attention.sliding_window": config.sliding_window,
        "gemma3.attention.sliding_window_pattern": [t == SLIDING for t in config.layer_types],
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": trained_tokenizer.bos_id,
        "tokenizer.ggml.eos_token_id": trained_tokenizer.eos_id,
        "tokenizer.ggml.unknown_token_id": trained_tokenizer.unk_id,
        "tokenizer.ggml.padding_token_id": trained_tokenizer.pad_id,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
        "general.languages": None,  # checked below
    }
    for key, value in expected.items():
        assert key in reader.fields, key
        if value is not None:
            got = field_value(reader, key)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, key
    assert field_value(reader, "gemma3.attention.layer_norm_rms_epsilon") == pytest.approx(
        config.rms_norm_eps)
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == trained_tokenizer.vocab_size
    types = field_value(reader, "tokenizer.ggml.token_type")
    assert types[trained_tokenizer.end_of_turn_id] == gguf.TokenType.CONTROL
    assert types[trained_tokenizer.unk_id] == gguf.TokenType.UNKNOWN
    assert gguf.TokenType.BYTE in types
    assert "<start_of_turn>" in field_value(reader, "tokenizer.chat_template")


@pytest.mark.parametrize("out_type, ggml_type", [
    ("f32", gguf.GGMLQuantizationType.F32), ("f16", gguf.GGMLQuantizationType.F16),
    ("bf16", gguf.GGMLQuantizationType.BF16),
])
def test_tensors_round_trip(layout_model, trained_tokenizer, tmp_path, out_type, ggml_type):
    reader = gguf.GGUFReader(write_gguf(layout_model, trained_tokenizer, tmp_path / "m.gguf", out_type))
    tensors = {t.name: t for t in reader.tensors}
    state = layout_model.state_dict()
    assert set(tensors) == {gguf_name(name) for name in state}  # tied head stored once
    assert "output.weight" not in tensors
    tolerance = {"f32": 0, "f16": 1e-3, "bf16": 1e-2}[out_type]
    for name, tensor in state.items():
        stored = tensors[gguf_name(name)]
        expected = tensor.float().numpy()
        if name.endswith("norm.weight"):  # llama.cpp multiplies by the weight: store 1 + w
            assert stored.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(stored.data), expected + 1.0)
            continue
        assert stored.tensor_type == ggml_type
        data = np.asarray(stored.data)
        if ggml_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.dequantize(data, ggml_type)
        data = data.reshape(expected.shape).astype(np.float32)
        assert np.abs(data - expected).max() <= tolerance * np.abs(expected).max() + 1e-7, name


def test_untied_head_is_written(trained_tokenizer, tmp_path):
    model = make_model(trained_tokenizer.vocab_size, tie_embeddings=False)
    reader = gguf.GGUFReader(write_gguf(model, trained_tokenizer, tmp_path / "m.gguf", "f32"))
    assert "output.weight" in {t.name for t in reader.tensors}


def test_export_errors(trained_tokenizer, tmp_path):
    model = make_model(trained_tokenizer.vocab_size)
    with pytest.raises(GGUFExportError, match="unknown GGUF type"):
        write_gguf(model, trained_tokenizer, tmp_path / "m.gguf", "q8_0")
    with pytest.raises(GGUFExportError, match="embedding rows"):
        write_gguf(make_model(trained_tokenizer.vocab_size + 8), trained_tokenizer,
                   tmp_path / "m.gguf", "f32")
    with pytest.raises(GGUFExportError, match="does not exist"):
        write_gguf(model, trained_tokenizer, tmp_path / "missing" / "m.gguf", "f32")
    with pytest.raises(GGUFExportError, match="query_pre_attn_scalar"):
        write_gguf(make_model(trained_tokenizer.vocab_size, query_pre_attn_scalar=20),
                   trained_tokenizer, tmp_path / "m.gguf", "f32")
