"""The Gemma 3 model: parity with transformers, KV cache, padding, dtypes, errors, init."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hslm.export.hf import save_hf
from model_factory import (
    SEQ_LEN,
    WINDOW,
    left_padded_batch,
    make_config,
    make_model,
    single_thread,  # noqa: F401  (autouse fixture)
)

from hslm.config import SLIDING
from hslm.model import Gemma3, attention_masks

TOL = 1e-4


def max_diff_on_real_positions(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    valid = mask.bool()
    return (a[valid] - b[valid]).abs().max().item()


@pytest.fixture(scope="module", params=["mixed", "custom"])
def model_and_folder(request, tmp_path_factory):
    config = make_config(request.param)
    model = make_model(config)
    folder = save_hf(model, tmp_path_factory.mktemp(f"hf-{request.param}"))
    return model, folder


def test_test_models_are_meaningful(model_and_folder):
    """Logits are O(1-10) and the norms are not at their (1 + 0) init."""
    model, _ = model_and_folder
    ids, mask, _ = left_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)[mask.bool()]
    assert 1.0 < logits.std().item() < 10.0
    assert logits.abs().max().item() < 100.0
    assert all(p.abs().mean() > 0.1 for n, p in model.named_parameters() if "norm" in n)


# ---------------------------------------------------------------- parity with transformers
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_fp32_parity_with_transformers(model_and_folder, attn_implementation):
    transformers = pytest.importorskip("transformers")
    model, folder = model_and_folder
    config = model.config
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation=attn_implementation, dtype=torch.float32).eval()
    assert type(reference).__name__ == "Gemma3ForCausalLM"
    assert reference.config.layer_types == config.layer_types
    tied = reference.lm_head.weight.data_ptr() == reference.model.embed_tokens.weight.data_ptr()
    assert tied == config.tie_embeddings

    ids, mask, positions = left_padded_batch(config.vocab_size)
    assert ids.shape[1] > config.sliding_window
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert max_diff_on_real_positions(ours, theirs, mask) <= TOL


def test_sliding_window_changes_logits_beyond_the_window():
    """Makes the parity tests meaningful: the window matters from column `sliding_window` on."""
    config = make_config()
    model = make_model(config)
    unwindowed = Gemma3(dataclasses.replace(config, sliding_window=config.context_length)).eval()
    unwindowed.load_state_dict(model.state_dict())
    ids, _, _ = left_padded_batch(config.vocab_size, padding=(0,))
    with torch.no_grad():
        a, b = model(ids), unwindowed(ids)
    inside = (a[:, :WINDOW] - b[:, :WINDOW]).abs().max().item()
    beyond = (a[:, WINDOW:] - b[:, WINDOW:]).abs().amax(-1)
    assert inside <= 1e-5  # a token sees itself and the window - 1 tokens before it
    assert beyond.min().item() > 1e-3  # every later position loses some keys


def test_left_padding_does_not_change_real_tokens():
    config = make_config()
    model = make_model(config)
    ids, mask, _ = left_padded_batch(config.vocab_size)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        noisy = ids.clone()
        noisy[~mask.bool()] = 7  # what sits in the padding must not matter
        batch_noisy = model(noisy, attention_mask=mask)
        for row in range(ids.shape[0]):
            real = mask[row].bool()
            alone = model(ids[row:row + 1, real])[0]
            assert (alone - batch[row, real]).abs().max().item() <= 1e-5
    assert max_diff_on_real_positions(batch, batch_noisy, mask) <= 1e-5
    assert torch.isfinite(batch).all()
    # a padded query would see no key (softmax of nothing = NaN in some kernels): it sees itself
    global_mask, sliding_mask = attention_masks(config, mask.bool(), 0, ids.shape[1], None)
    for attend in (global_mask, sliding_mask):
        assert attend.any(-1).all()
        assert not attend[2, 0, 5, :5].any()  # padding is never attended to by a padded query either


# ---------------------------------------------------------------- KV cache
def cached_logits(model, ids, mask, chunks):
    cache = model.new_cache(ids.shape[0])
    outputs, start = [], 0
    for size in chunks:
        stop = start + size
        outputs.append(model(ids[:, start:stop], attention_mask=mask[:, :stop], cache=cache))
        start = stop
    assert start == ids.shape[1] and cache.length == start
    return torch.cat(outputs, dim=1), cache


@pytest.mark.parametrize("name", ["mixed", "custom"])
@pytest.mark.parametrize("chunks", [
    [WINDOW + 4] + [1] * (SEQ_LEN - WINDOW - 4),  # prefill longer than the window, then decode
    [5, 7, 6, 20, 3, 1, 6],  # chunks crossing the window boundaries, one longer than the window
    [1] * 3 + [9] * 5,  # decode first, then chunks
], ids=["prefill+decode", "chunked", "decode+chunked"])
def test_kv_cache_matches_full_forward(name, chunks):
    config = make_config(name)
    model = make_model(config)
    ids, mask, _ = left_padded_batch(config.vocab_size)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        incremental, _ = cached_logits(model, ids, mask, chunks)
    assert incremental.shape == full.shape
    assert max_diff_on_real_positions(incremental, full, mask) <= TOL


def test_kv_cache_remembers_padding_when_decoding_without_mask():
    """After a padded prefill, decoding steps may omit attention_mask; `last_only` gives one row."""
    config = make_config()
    model = make_model(config)
    ids, mask, _ = left_padded_batch(config.vocab_size, padding=(0, 7))
    prefill = WINDOW + 3
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_cache(2)
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], cache=cache, last_only=True)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(prefill, SEQ_LEN)]
    assert steps[0].shape == (2, 1, config.vocab_size)
    incremental = torch.cat(steps, dim=1)
    assert (incremental - full[:, prefill - 1:]).abs().max().item() <= TOL


def test_sliding_layer_cache_is_bounded():
    config = make_config()
    model = make_model(config)
    sliding = [i for i in range(config.n_layers) if config.layer_types[i] == SLIDING]
    global_ = [i for i in range(config.n_layers) if i not in sliding]
    assert sliding and global_
    ids, mask, _ = left_padded_batch(config.vocab_size)
    cache = model.new_cache(ids.shape[0])
    sizes = []
    with torch.no_grad():
        model(ids[:, :5], attention_mask=mask[:, :5], cache=cache)
        for t in range(5, SEQ_LEN):
            model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)
            for i in sliding:
                assert cache.keys[i].shape[2] <= config.sliding_window
                assert cache.values[i].shape[2] <= config.sliding_window
            sizes.append(sum(cache.keys[i].numel() + cache.values[i].numel() for i in sliding))
    assert cache.length == SEQ_LEN == 3 * config.sliding_window
    assert len(set(sizes)) == 1  # sliding-layer memory does not grow with the length
    for i in global_:  # global layers keep every column
        assert cache.keys[i].shape[2] >= SEQ_LEN


# ---------------------------------------------------------------- dtypes
def test_bf16_forward_is_close_to_fp32():
    config = make_config()
    model = make_model(config)
    ids, mask, _ = left_padded_batch(config.vocab_size)
    with torch.no_grad():
        fp32 = model(ids, attention_mask=mask)
        model_bf16 = model.to(torch.bfloat16)
        assert model_bf16.embed.weight.dtype == torch.bfloat16
        bf16 = model_bf16(ids, attention_mask=mask)
        cached, _ = cached_logits(model_bf16, ids, mask, [20] + [1] * (SEQ_LEN - 20))
    assert bf16.dtype == torch.bfloat16 and cached.dtype == torch.bfloat16
    valid = mask.bool()
    for out in (bf16, cached):
        out = out.float()[valid]
        assert torch.isfinite(out).all()
        error = (out - fp32[valid]).abs()
        assert error.mean().item() <= 0.05 * fp32[valid].abs().mean().item()
        assert error.max().item() <= 0.1 * fp32[valid].abs().max().item()
        agree = (out.argmax(-1) == fp32[valid].argmax(-1)).float().mean().item()
        assert agree >= 0.9


# ---------------------------------------------------------------- errors
def test_context_length_overflow_raises():
    config = make_config(context_length=32)
    model = make_model(config)
    ids = torch.randint(3, config.vocab_size, (2, 33))
    with torch.no_grad():
        assert model(ids[:, :32]).shape == (2, 32, config.vocab_size)  # exactly the context is fine
        with pytest.raises(ValueError, match=r"33 tokens is longer than the model's context length \(32\)"):
            model(ids)
        cache = model.new_cache(2)
        model(ids[:, :30], cache=cache)
        with pytest.raises(ValueError, match=r"33 tokens .*context length \(32\)"):
            model(ids[:, 30:33], cache=cache)


def test_attention_mask_of_wrong_shape_raises():
    config = make_config()
    model = make_model(config)
    ids = torch.randint(3, config.vocab_size, (2, 10))
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 10\).*got \(2, 9\)"):
            model(ids, attention_mask=torch.ones(2, 9))
        with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 10\)"):
            model(ids, attention_mask=torch.ones(3, 10))
        cache = model.new_cache(2)
        model(ids[:, :9], attention_mask=torch.ones(2, 9), cache=cache)
        # with a cache the mask covers cached + new columns, not just the new token
        with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 10\).*got \(2, 1\)"):
            model(ids[:, 9:], attention_mask=torch.ones(2, 1), cache=cache)


# ---------------------------------------------------------------- init
def linear_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def norm_weights(model):
    return [p for n, p in model.named_parameters() if "norm" in n]


@pytest.mark.parametrize("tie", [True, False])
def test_normal_init(tie):
    torch.manual_seed(0)
    config = make_config(vocab_size=4000, init="normal", init_std=0.02, tie_embeddings=tie)
    model = Gemma3(config)
    assert len(linear_weights(model)) == 7 * config.n_layers + (0 if tie else 1)
    assert norm_weights(model) and all((w == 0).all() for w in norm_weights(model))
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.embed.weight.mean().abs().item() < 1e-3
    for weight in linear_weights(model):
        assert weight.std().item() == pytest.approx(0.02, rel=0.1)
    if not tie:
        assert model.output_weight is model.lm_head.weight
        assert not torch.equal(model.lm_head.weight, model.embed.weight)
    else:
        assert model.output_weight is model.embed.weight


def test_torch_default_init():
    torch.manual_seed(0)
    config = make_config(vocab_size=4000, init="torch-default")
    model = Gemma3(config)
    assert all((w == 0).all() for w in norm_weights(model))
    assert model.embed.weight.std().item() == pytest.approx(1.0, rel=0.02)
    for weight in linear_weights(model):
        bound = 1 / math.sqrt(weight.shape[1])  # kaiming_uniform_(a=sqrt(5))
        assert weight.abs().max().item() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
