"""Attention by case: every kernel for unpadded, uncached sequences (causal SDPA on global
layers; FlexAttention or window-blocked SDPA on sliding ones) equals the boolean-mask path, whose
parity with transformers tests/test_model.py checks, in logits and in gradients."""

from __future__ import annotations

import pytest
import torch
from model_factory import SEQ_LEN, make_config, make_model, single_thread  # noqa: F401

import hslm.model
from hslm.config import GLOBAL, SLIDING, ConfigError, ModelConfig
from hslm.model import Gemma3
from hslm.train.loss import LanguageModelLoss

TOL = 1e-4


def loss_and_grads(model: Gemma3, kernel: str, ids: torch.Tensor):
    """Logits of a forward without attention_mask, and the gradient of every parameter."""
    model.use_attention(kernel)
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    (logits.float().square().mean()).backward()  # every logit gets a gradient
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits.detach(), grads


def assert_same(reference, other):
    (logits_a, grads_a), (logits_b, grads_b) = reference, other
    assert (logits_a - logits_b).abs().max().item() <= TOL
    for name, grad in grads_a.items():
        scale = grad.abs().max().item()
        assert (grad - grads_b[name]).abs().max().item() <= TOL * max(scale, 1.0), name


@pytest.mark.parametrize("name", ["mixed", "custom"])  # custom: 4 query heads on 1 KV head
@pytest.mark.parametrize("query_block", [8, 20, 256])  # 20: blocks not aligned to the window
def test_window_blocks_equal_the_dense_masks_tiny(name, query_block, monkeypatch):
    monkeypatch.setattr(hslm.model, "QUERY_BLOCK", query_block)
    model = make_model(make_config(name)).train()
    ids = torch.randint(3, model.config.vocab_size, (3, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    assert SEQ_LEN > model.config.sliding_window
    assert_same(loss_and_grads(model, "sdpa-mask", ids), loss_and_grads(model, "sdpa-blocks", ids))


@pytest.mark.parametrize("name", ["mixed", "custom"])
def test_flex_attention_equals_the_dense_masks_tiny(name):
    """Forward only: FlexAttention has no backward on CPU (PyTorch refuses it); eagerly it runs
    its unfused reference (the same numerics as its fused kernels)."""
    model = make_model(make_config(name))
    ids = torch.randint(3, model.config.vocab_size, (3, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.use_attention("sdpa-mask")
        reference = model(ids)
        model.use_attention("flex")
        assert (model(ids) - reference).abs().max().item() <= TOL


def hindi_270m_attention_shape() -> ModelConfig:
    """hindi-270m's attention (head_dim 256, 4 query heads on 1 KV head, window 512, its RoPE
    bases and scale) in two layers, one of each kind, with a small vocabulary."""
    return ModelConfig.preset("hindi-270m", vocab_size=512, n_layers=2,
                              layer_types=[SLIDING, GLOBAL], init_std=0.05)


def test_every_kernel_equals_the_dense_masks_at_hindi_270m_shape():
    config = hindi_270m_attention_shape()
    torch.manual_seed(0)
    model = Gemma3(config).train()
    length = config.sliding_window + 128  # queries past the window lose keys
    ids = torch.randint(3, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    reference = loss_and_grads(model, "sdpa-mask", ids)
    assert_same(reference, loss_and_grads(model, "sdpa-blocks", ids))
    with torch.no_grad():
        model.use_attention("flex")
        assert (model(ids) - reference[0]).abs().max().item() <= TOL
        # the window matters at this length: without it the logits differ
        model.use_attention("sdpa-mask")
        unwindowed = Gemma3(ModelConfig.preset(
            "hindi-270m", vocab_size=512, n_layers=2, layer_types=[GLOBAL, GLOBAL]))
        unwindowed.load_state_dict(model.state_dict())
        assert (unwindowed(ids) - reference[0])[:, config.sliding_window:].abs().max() > 1e-3


def test_training_forward_builds_no_dense_mask(monkeypatch):
    """The training loss on unpadded input never calls attention_masks (the [B, 1, T, T]
    boolean masks); forcing sdpa-mask does, which shows the patch is in the path."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dense attention mask was built")
    monkeypatch.setattr(hslm.model, "attention_masks", refuse)
    model = make_model(make_config()).train()
    ids = torch.randint(3, model.config.vocab_size, (2, SEQ_LEN + 1))
    loss = LanguageModelLoss(model, chunk_tokens=32)
    for kernel in ("auto", "sdpa-blocks"):
        model.use_attention(kernel)
        loss(ids[:, :-1], ids[:, 1:]).backward()
    model.use_attention("sdpa-mask")
    with pytest.raises(AssertionError, match="dense attention mask"):
        loss(ids[:, :-1], ids[:, 1:])


def test_unknown_attention_kernel_is_refused():
    with pytest.raises(ConfigError, match="unknown attention 'flash'"):
        make_model(make_config()).use_attention("flash")
