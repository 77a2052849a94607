"""Hugging Face folders: save_hf/load_hf round trips, Google's gemma-3-270m layout, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hslm.export.hf import HFFormatError, config_from_hf, hf_config, load_hf, save_hf
from model_factory import (
    left_padded_batch,
    make_config,
    make_model,
    single_thread,  # noqa: F401  (autouse fixture)
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hslm.config import GLOBAL, SLIDING

TOL = 1e-4
DELETE = object()  # in a config change: remove the key


def read_config(folder):
    return json.loads((folder / "config.json").read_text())


def edited_config(folder, change: dict) -> dict:
    """The folder's config.json values with `change` applied (DELETE removes a key)."""
    values = read_config(folder)
    for key, value in change.items():
        if value is DELETE:
            values.pop(key)
        else:
            values[key] = value
    return values


def write_config(folder, values):
    (folder / "config.json").write_text(json.dumps(values, indent=2))


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- save_hf -> load_hf
@pytest.mark.parametrize("name", ["mixed", "custom"])
def test_round_trip_is_bit_exact(tmp_path, name):
    model = make_model(make_config(name))
    folder = save_hf(model, tmp_path / "hf")
    assert read_config(folder)["model_type"] == "gemma3_text"
    loaded = load_hf(folder)
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.state_dict()
    assert set(original) == set(restored)
    for key, tensor in original.items():
        assert restored[key].dtype == torch.float32
        assert restored[key].device.type == "cpu"
        assert torch.equal(restored[key], tensor), key
    ids, mask, _ = left_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask), model(ids, attention_mask=mask))
    if not model.config.tie_embeddings:
        assert not torch.equal(loaded.output_weight, loaded.embed.weight)

    # transformers 4.x reads rope_theta / rope_local_base_freq instead of rope_parameters
    legacy = read_config(folder)
    del legacy["rope_parameters"]
    write_config(folder, legacy)
    assert load_hf(folder).config == model.config


@pytest.mark.parametrize("change, expected", [
    ({"eos_token_id": [106, 1]}, {"eos_token_id": 106}),  # the first of a list of stop tokens
    ({"pad_token_id": None}, {"pad_token_id": 0}),
    ({"head_dim": DELETE, "num_attention_heads": 8, "num_key_value_heads": 2}, {"head_dim": 8}),
    ({"layer_types": DELETE, "num_hidden_layers": 7}, {"layer_types": [SLIDING] * 5 + [GLOBAL, SLIDING]}),
    ({"layer_types": DELETE, "_sliding_window_pattern": 2}, {"layer_types": [SLIDING, GLOBAL] * 2}),
    ({"rope_parameters": DELETE, "rope_theta": 3e5, "rope_local_base_freq": 7e3},
     {"rope_base_global": 3e5, "rope_base_local": 7e3}),
])
def test_config_json_details(saved, change, expected):
    values = edited_config(saved, change)
    config = config_from_hf(values)
    for key, value in expected.items():
        assert getattr(config, key) == value, key


def test_bf16_save(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    model = make_model(make_config("custom"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folder = save_hf(model, tmp_path / "bf16", dtype=torch.bfloat16)
    fp32_folder = save_hf(model, tmp_path / "fp32")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not modified
    assert model.embed.weight.dtype == torch.float32

    assert read_config(folder)["torch_dtype"] == "bfloat16"
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        names = weights.keys()
        assert names and all(weights.get_tensor(k).dtype == torch.bfloat16 for k in names)
    size_bf16 = (folder / "model.safetensors").stat().st_size
    size_fp32 = (fp32_folder / "model.safetensors").stat().st_size
    assert size_bf16 < 0.55 * size_fp32

    as_bf16 = load_hf(folder, dtype=torch.bfloat16)
    expected = model.to(torch.bfloat16).state_dict()
    for key, tensor in as_bf16.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[key]), key

    # upcast to fp32, hslm and transformers agree on the bf16 folder
    ours = load_hf(folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids, mask, positions = left_padded_batch(ours.config.vocab_size)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = theirs(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert (a - b)[mask.bool()].abs().max().item() <= TOL


# ---------------------------------------------------------------- Google's layout
WINDOW = 8
# transformers-4.x style, as in google/gemma-3-270m's config.json: rope_theta /
# rope_local_base_freq, a sliding_window_pattern instead of layer_types, bf16 weights.
GOOGLE_TEXT_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": 300,
    "max_position_embeddings": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "hidden_activation": "gelu_pytorch_tanh",
    "sliding_window": WINDOW,
    "sliding_window_pattern": 3,  # -> sliding, sliding, full, sliding, sliding, full
    "rope_theta": 50_000.0,
    "rope_local_base_freq": 1_000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "initializer_range": 0.3,
    "tie_word_embeddings": True,
    "use_cache": True,
    "bos_token_id": 2,
    "eos_token_id": [1, 106],
    "pad_token_id": 0,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.55.0",
}
GOOGLE_LAYER_TYPES = [SLIDING, SLIDING, GLOBAL, SLIDING, SLIDING, GLOBAL]


@pytest.fixture(scope="module")
def google(tmp_path_factory):
    """A small checkpoint in Google's gemma-3-270m layout, its weights made by transformers.

    Returns (folder, weights {HF name: bf16 tensor}, batch, reference logits from transformers).
    """
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_values = {k: v for k, v in GOOGLE_TEXT_CONFIG.items()
                 if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")}
    reference = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**hf_values))
    assert reference.config.layer_types == GOOGLE_LAYER_TYPES
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    weights = {k: v.detach().to(torch.bfloat16).contiguous()
               for k, v in reference.state_dict().items() if k != "lm_head.weight"}  # tied
    folder = tmp_path_factory.mktemp("google") / "gemma-3-small"
    folder.mkdir()
    write_config(folder, GOOGLE_TEXT_CONFIG)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert loaded.config.layer_types == GOOGLE_LAYER_TYPES
    ids, mask, positions = left_padded_batch(300, padding=(0, 4, 11), length=3 * WINDOW + 6)
    with torch.no_grad():
        logits = loaded(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert logits[mask.bool()].std().item() > 1.0  # the comparison means something
    return folder, weights, (ids, mask, positions), logits


def multimodal_folder(src, dst, prefix, text_config):
    dst.mkdir()
    weights = {prefix + k.removeprefix("model."): v for k, v in load_file(src / "model.safetensors").items()}
    # parts of a multimodal checkpoint that the text model must skip
    weights["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(8, 3, 2, 2)
    weights["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(8, 64)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    write_config(dst, {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                       "text_config": text_config,
                       "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8},
                       "mm_tokens_per_image": 256, "image_token_index": 262144})
    return dst


def sharded_folder(src, dst):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    weights = load_file(src / "model.safetensors")
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: weights[k] for k in shard_keys}, dst / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in shard_keys})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return dst


@pytest.mark.parametrize("layout", ["text", "sharded", "multimodal", "multimodal-new-prefix"])
def test_google_layout_matches_transformers(google, tmp_path, layout):
    folder, _, (ids, mask, positions), reference_logits = google
    text_config = {k: v for k, v in GOOGLE_TEXT_CONFIG.items()
                   if k not in ("architectures", "torch_dtype", "transformers_version")}
    if layout == "sharded":
        folder = sharded_folder(folder, tmp_path / "sharded")
    elif layout == "multimodal":  # Google's released multimodal checkpoints
        folder = multimodal_folder(folder, tmp_path / "mm", "language_model.model.", text_config)
    elif layout == "multimodal-new-prefix":  # what transformers >= 4.52 saves
        folder = multimodal_folder(folder, tmp_path / "mm2", "model.language_model.", text_config)

    model = load_hf(folder)
    config = model.config
    assert config.layer_types == GOOGLE_LAYER_TYPES
    assert (config.rope_base_local, config.rope_base_global) == (1_000.0, 50_000.0)
    assert (config.sliding_window, config.context_length, config.vocab_size) == (WINDOW, 128, 300)
    assert config.eos_token_id == 1 and config.tie_embeddings
    assert ids.shape[1] > 3 * config.sliding_window
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
    assert (logits - reference_logits)[mask.bool()].abs().max().item() <= TOL

    if layout == "sharded":  # the sharded folder is also one that transformers reads the same way
        from transformers import AutoModelForCausalLM

        theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            b = theirs(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        assert (logits - b)[mask.bool()].abs().max().item() <= TOL


def test_google_layout_bf16_load_is_exact(google):
    folder, weights, _, _ = google
    model = load_hf(folder, dtype=torch.bfloat16)
    assert torch.equal(model.embed.weight, weights["model.embed_tokens.weight"])
    assert torch.equal(model.layers[4].mlp.down_proj.weight, weights["model.layers.4.mlp.down_proj.weight"])
    assert torch.equal(model.layers[2].attn.k_norm.weight, weights["model.layers.2.self_attn.k_norm.weight"])
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# ---------------------------------------------------------------- errors
@pytest.fixture()
def saved(tmp_path):
    model = make_model(make_config())
    return save_hf(model, tmp_path / "saved")


def test_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(HFFormatError, match=r"has no config\.json; is it a Hugging Face model folder"):
        load_hf(saved)
    with pytest.raises(HFFormatError, match="has no config.json"):
        load_hf(saved / "does-not-exist")


def test_config_that_is_not_json(saved):
    (saved / "config.json").write_text("vocab_size: 256\n")
    with pytest.raises(HFFormatError, match=r"config\.json is not valid JSON"):
        load_hf(saved)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, r"model_type is 'llama'; only Gemma 3 text models are supported"),
    ({"model_type": DELETE}, r"model_type is None"),
    ({"hidden_size": DELETE}, r"config\.json lacks the key 'hidden_size'"),
    ({"num_hidden_layers": DELETE}, r"config\.json lacks the key 'num_hidden_layers'"),
    ({"num_key_value_heads": 3}, r"does not describe a valid model: n_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
    ({"layer_types": ["full_attention"] * 3}, r"does not describe a valid model: layer_types has 3 entries but n_layers is 4"),
    ({"final_logit_softcapping": 30.0}, r"soft-capping is not part of the Gemma 3 architecture"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, r"RoPE scaling 'linear' is not supported"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                          "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}},
     r"RoPE scaling 'linear' is not supported"),
    ({"use_bidirectional_attention": True}, r"bidirectional attention .* not supported"),
])
def test_unsupported_configs(saved, change, message):
    values = edited_config(saved, change)
    write_config(saved, values)
    with pytest.raises(HFFormatError, match=message):
        load_hf(saved)


def test_missing_weight(saved):
    weights = load_file(saved / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, saved / "model.safetensors")
    with pytest.raises(HFFormatError, match=r"lacks 1 weight\(s\), e\.g\. \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        load_hf(saved)


def test_untied_config_without_output_head(saved):
    write_config(saved, {**read_config(saved), "tie_word_embeddings": False})
    with pytest.raises(HFFormatError, match=r"lacks 1 weight\(s\), e\.g\. \['lm_head\.weight'\]"):
        load_hf(saved)


def test_no_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(HFFormatError, match=r"no \*\.safetensors weights in"):
        load_hf(saved)


def test_checkpoint_of_another_shape(saved):
    config = make_config()
    # the same config file, but with another FFN width: the weights are 192 wide, the config says 128
    write_config(saved, hf_config(make_config(ffn_size=128), torch.float32))
    with pytest.raises(HFFormatError, match=r"weight model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight "
                       r"has shape \((192, 64|64, 192)\), the config implies \((128, 64|64, 128)\)"):
        load_hf(saved)
    assert config.ffn_size == 192 and config.hidden_size == 64
    # another vocabulary
    write_config(saved, hf_config(make_config(vocab_size=300), torch.float32))
    with pytest.raises(HFFormatError, match=r"weight model\.embed_tokens\.weight has shape \(256, 64\), "
                       r"the config implies \(300, 64\)"):
        load_hf(saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weights(saved, damage):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not safetensors" * 64,
                      "empty": b""}[damage])
    with pytest.raises(HFFormatError, match=r"cannot read weights .*model\.safetensors"):
        load_hf(saved)


def test_broken_shard_index(saved):
    index = saved / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(HFFormatError, match=r"cannot read weights .*model-00001-of-00002\.safetensors"):
        load_hf(saved)
    index.write_text("{not json")
    with pytest.raises(HFFormatError, match=r"is not a valid safetensors index"):
        load_hf(saved)
