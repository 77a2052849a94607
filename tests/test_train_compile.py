"""torch.compile on the training step and on decoding: no graph breaks in the training
forward/backward, and a decode step compiled once for every token (ring slots are tensors).

Compiled with Dynamo plus AOTAutograd (forward and backward graphs traced) but without
Inductor's code generation, which adds minutes on 2 cores and no graph break."""

from __future__ import annotations

import torch
import torch._dynamo
from model_factory import SEQ_LEN, make_config, make_model, single_thread  # noqa: F401
from torch._dynamo.testing import CompileCounter

from hslm.train.loss import LanguageModelLoss


def test_training_step_compiles_to_one_graph():
    model = make_model(make_config()).train()
    ids = torch.randint(3, model.config.vocab_size, (2, SEQ_LEN + 1),
                        generator=torch.Generator().manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    step = LanguageModelLoss(model, chunk_tokens=32)  # what TrainStep compiles: model + loss
    explanation = torch._dynamo.explain(step)(inputs, targets)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # raises on a break
    loss = compiled(inputs, targets)
    loss.backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    eager = step(inputs, targets)
    eager.backward()
    assert abs(loss.item() - eager.item()) <= 1e-4 * abs(eager.item())
    for compiled_grad, param in zip(compiled_grads, model.parameters()):
        assert torch.allclose(compiled_grad, param.grad, rtol=1e-4, atol=1e-6)


def test_compiled_decoding_does_not_recompile_per_token():
    torch._dynamo.reset()
    model = make_model(make_config())
    ids = torch.randint(3, model.config.vocab_size, (2, 20 + 64),
                        generator=torch.Generator().manual_seed(0))
    counter = CompileCounter()
    decode = torch.compile(model, backend=counter, dynamic=True)
    compiled_logits, eager_logits = [], []
    with torch.no_grad():
        caches = [model.new_cache(2, capacity=model.config.context_length) for _ in range(2)]
        for cache in caches:
            model(ids[:, :20], cache=cache)  # prefill, not compiled
        for t in range(20, 20 + 64):  # 64 steps: the ring of 16 slots wraps four times
            token = ids[:, t:t + 1].clone()  # a fresh tensor per token, as in generation
            compiled_logits.append(decode(token, cache=caches[0]))
            eager_logits.append(model(token, cache=caches[1]))
            assert counter.frame_count == 1, f"recompiled at token {t}"
    assert caches[0].length == caches[1].length == 84
    assert torch.equal(caches[0].ring_columns, caches[1].ring_columns)
    assert (torch.cat(compiled_logits, 1) - torch.cat(eager_logits, 1)).abs().max().item() <= 1e-5
