"""ModelConfig: preset shapes, parameter counts, JSON/YAML files, validation messages."""

from __future__ import annotations

import json

import pytest
import torch

from hslm.config import GLOBAL, SLIDING, ConfigError, ModelConfig
from hslm.model import Gemma3

HINDI_270M = {
    "vocab_size": 50_000, "context_length": 1_024, "n_layers": 18, "hidden_size": 640,
    "n_heads": 4, "n_kv_heads": 1, "head_dim": 256, "ffn_size": 2_048, "sliding_window": 512,
    "rope_base_local": 10_000.0, "rope_base_global": 1_000_000.0, "tie_embeddings": True,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6,
}
GOOGLE_270M_TOTAL = 268_098_176  # Google's published parameter count for gemma-3-270m


# ---------------------------------------------------------------- presets
def test_hindi_270m_preset_shapes():
    config = ModelConfig.preset("hindi-270m")
    for key, value in HINDI_270M.items():
        assert getattr(config, key) == value, key
    # 5 sliding : 1 global, layer i global iff (i + 1) % 6 == 0
    assert config.layer_types == [GLOBAL if (i + 1) % 6 == 0 else SLIDING for i in range(18)]
    assert [i for i, t in enumerate(config.layer_types) if t == GLOBAL] == [5, 11, 17]
    assert config.q_size == 1024 and config.kv_size == 256
    assert ModelConfig() == config  # the defaults are the Hindi model


def test_gemma3_270m_preset_is_google_shape():
    config = ModelConfig.preset("gemma3-270m")
    assert config.vocab_size == 262_144 and config.context_length == 32_768
    hindi = ModelConfig.preset("hindi-270m")
    # everything else is the same body
    assert {**config.to_dict(), "vocab_size": 0, "context_length": 0} == \
        {**hindi.to_dict(), "vocab_size": 0, "context_length": 0}


def test_tiny_preset_has_both_layer_types_and_a_short_window():
    config = ModelConfig.preset("tiny")
    assert set(config.layer_types) == {SLIDING, GLOBAL}
    assert len(config.layer_types) == config.n_layers
    assert config.sliding_window < 64
    assert config.sliding_window < config.context_length


def test_preset_overrides():
    config = ModelConfig.preset("tiny", n_layers=7, vocab_size=123)
    assert config.n_layers == 7 and config.vocab_size == 123
    # changing the depth regenerates Gemma's pattern unless layer types are given
    assert config.layer_types == [SLIDING] * 5 + [GLOBAL, SLIDING]
    explicit = ModelConfig.preset("tiny", n_layers=2, layer_types=[GLOBAL, GLOBAL])
    assert explicit.layer_types == [GLOBAL, GLOBAL]
    assert ModelConfig.preset("tiny").hidden_size == ModelConfig.preset("tiny", n_layers=7).hidden_size


# ---------------------------------------------------------------- parameter counts
def expected_counts(vocab, hidden, layers, heads, kv_heads, head_dim, ffn, tied=True):
    """Independent count from the shapes."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden + 2 * head_dim  # q,k,v,o + q/k norms
    mlp = 3 * hidden * ffn  # gate, up, down
    norms = 4 * hidden  # input, post-attention, pre-ffn, post-ffn
    non_embedding = layers * (attention + mlp + norms) + hidden  # + final norm
    embedding = vocab * hidden * (1 if tied else 2)
    return {"total": non_embedding + embedding, "embedding": embedding, "non_embedding": non_embedding}


def model_counts(config: ModelConfig, device: str = "cpu") -> dict[str, int]:
    with torch.device(device):
        model = Gemma3(config)
    total = sum(p.numel() for p in model.parameters())
    assert total == model.num_parameters()
    embedding = model.embed.weight.numel() + (0 if config.tie_embeddings else model.lm_head.weight.numel())
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def test_hindi_270m_param_counts():
    config = ModelConfig.preset("hindi-270m")
    expected = expected_counts(50_000, 640, 18, 4, 1, 256, 2_048)
    assert expected == {"total": 132_326_016, "embedding": 32_000_000, "non_embedding": 100_326_016}
    assert config.param_counts() == expected
    assert model_counts(config, device="meta") == expected


@pytest.mark.parametrize("preset, published_body", [("hindi-1b", 698e6), ("hindi-4b", 3_209e6)])
def test_larger_shapes_have_gemma3_bodies(preset, published_body):
    # The Gemma 3 report's non-embedding counts (1B: 698M, 4B: 3,209M); the vocabulary is Hindi.
    counts = ModelConfig.preset(preset).param_counts()
    assert counts["non_embedding"] == pytest.approx(published_body, rel=0.005)
    assert counts["embedding"] == 50_000 * ModelConfig.preset(preset).hidden_size


def test_gemma3_270m_total_is_googles_published_count():
    config = ModelConfig.preset("gemma3-270m")
    expected = expected_counts(262_144, 640, 18, 4, 1, 256, 2_048)
    assert expected["total"] == GOOGLE_270M_TOTAL  # 167,772,160 embedding + 100,326,016 body
    assert config.param_counts() == expected
    assert model_counts(config, device="meta") == expected
    # an untied output head (rasbt's default) is what makes it ~436M instead of ~268M
    untied = ModelConfig.preset("gemma3-270m", tie_embeddings=False)
    assert model_counts(untied, device="meta")["total"] == GOOGLE_270M_TOTAL + 262_144 * 640


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "n_layers": 3, "n_kv_heads": 4}])
def test_tiny_param_counts(overrides):
    config = ModelConfig.preset("tiny", **overrides)
    c = config
    expected = expected_counts(c.vocab_size, c.hidden_size, c.n_layers, c.n_heads, c.n_kv_heads,
                               c.head_dim, c.ffn_size, tied=c.tie_embeddings)
    assert config.param_counts() == expected
    assert model_counts(config) == expected


# ---------------------------------------------------------------- files
CUSTOM = {"n_layers": 5, "layer_types": [GLOBAL, SLIDING, SLIDING, GLOBAL, GLOBAL],
          "tie_embeddings": False, "rope_base_local": 123.5, "rms_norm_eps": 1e-5,
          "init": "torch-default", "eos_token_id": 3}


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("preset", ["tiny", "hindi-270m"])
def test_save_load_round_trip(tmp_path, suffix, preset):
    config = ModelConfig.preset(preset, **CUSTOM)
    path = tmp_path / f"model{suffix}"
    config.save(path)
    loaded = ModelConfig.load(path)
    assert loaded == config
    assert loaded.layer_types == CUSTOM["layer_types"]  # the explicit per-layer layout survives
    assert type(loaded.rms_norm_eps) is float and type(loaded.tie_embeddings) is bool
    if suffix == ".json":
        assert json.loads(path.read_text())["layer_types"] == CUSTOM["layer_types"]


def test_preset_plus_overrides_in_a_file(tmp_path):
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text("preset: tiny\nvocab_size: 1234\nn_layers: 6\nsliding_window: 8\n")
    config = ModelConfig.load(yaml_path)
    assert config == ModelConfig.preset("tiny", vocab_size=1234, n_layers=6, sliding_window=8)
    assert config.hidden_size == ModelConfig.preset("tiny").hidden_size  # from the preset
    assert config.layer_types == [SLIDING] * 5 + [GLOBAL]  # regenerated for 6 layers

    json_path = tmp_path / "model.json"
    json_path.write_text(json.dumps({"preset": "tiny", "layer_types": [GLOBAL] * 4}))
    assert ModelConfig.load(json_path).layer_types == [GLOBAL] * 4
    assert ModelConfig.load(json_path).vocab_size == ModelConfig.preset("tiny").vocab_size


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-5` as a string; the config must still get a float."""
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\nrms_norm_eps: 1e-5\nrope_base_global: 1e6\n")
    config = ModelConfig.load(path)
    assert config.rms_norm_eps == 1e-5 and type(config.rms_norm_eps) is float
    assert config.rope_base_global == 1e6 and type(config.rope_base_global) is float
    logits = Gemma3(config)(torch.tensor([[1, 2, 3]]))  # and the model runs with it
    assert logits.shape == (1, 3, config.vocab_size)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("make, message", [
    (lambda: ModelConfig.preset("gemma-9000"),
     r"unknown preset 'gemma-9000'; available: hindi-270m, gemma3-270m, hindi-1b, hindi-4b, tiny"),
    (lambda: ModelConfig.preset("tiny", n_heads=4, n_kv_heads=3),
     r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
    (lambda: ModelConfig.preset("tiny", sliding_window=0), r"sliding_window must be a positive integer, got 0"),
    (lambda: ModelConfig.preset("tiny", sliding_window=-4), r"sliding_window must be a positive integer, got -4"),
    (lambda: ModelConfig.preset("tiny", layer_types=[SLIDING, GLOBAL]),
     r"layer_types has 2 entries but n_layers is 4"),
    (lambda: ModelConfig.preset("tiny", n_layers=3, layer_types=[SLIDING] * 4),
     r"layer_types has 4 entries but n_layers is 3"),
    (lambda: ModelConfig.preset("tiny", layer_types=[SLIDING, "local", GLOBAL, "chunked"]),
     r"unknown layer type\(s\) \['chunked', 'local'\]; use 'sliding_attention' or 'full_attention'"),
    (lambda: ModelConfig.preset("tiny", hidden_dim=64), r"unknown config key\(s\) \['hidden_dim'\]; known keys:"),
    (lambda: ModelConfig.from_dict({"vocab": 10, "n_layer": 2}), r"unknown config key\(s\) \['n_layer', 'vocab'\]"),
    (lambda: ModelConfig.preset("tiny", n_layers=0), r"n_layers must be a positive integer, got 0"),
    (lambda: ModelConfig.preset("tiny", n_layers="4"), r"n_layers must be a positive integer, got '4'"),
    (lambda: ModelConfig.preset("tiny", head_dim=15), r"head_dim must be even"),
    (lambda: ModelConfig.preset("tiny", rms_norm_eps=0), r"rms_norm_eps must be > 0, got 0"),
    (lambda: ModelConfig.preset("tiny", rope_base_local="ten"), r"rope_base_local must be a number, got 'ten'"),
    (lambda: ModelConfig.preset("tiny", init="xavier"), r"unknown init 'xavier'; choose one of \['normal', 'torch-default'\]"),
    (lambda: ModelConfig.preset("tiny", vocab_size=100, eos_token_id=100),
     r"eos_token_id=100 is not a token id in the vocabulary \(0..99\)"),
    (lambda: ModelConfig.preset("tiny", bos_token_id=None), r"bos_token_id=None is not a token id"),
])
def test_validation_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_validate_catches_later_mutation():
    config = ModelConfig.preset("tiny")
    config.n_kv_heads = 3
    with pytest.raises(ConfigError, match="multiple of n_kv_heads"):
        Gemma3(config)


@pytest.mark.parametrize("name, text, message", [
    ("list.yaml", "- vocab_size\n- 10\n", r"must contain a mapping of config keys"),
    ("scalar.json", "42", r"must contain a mapping of config keys"),
    ("empty.yaml", "", r"must contain a mapping of config keys"),
    ("bad.yaml", "vocab_size: [1, 2\nn_layers: 3\n", r"cannot parse .*bad\.yaml"),
    ("bad.json", '{"vocab_size": 10,}', r"cannot parse .*bad\.json"),
    ("unknown.yaml", "preset: tiny\nwindow: 8\n", r"unknown config key\(s\) \['window'\]"),
    ("badpreset.yaml", "preset: huge\n", r"unknown preset 'huge'"),
])
def test_file_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        ModelConfig.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.load(tmp_path)  # a directory is not a config file
