"""Quantization-aware training: each fake-quantizer equals its exporter's real quantizer (llama.cpp
for GGUF q4_0 / iq4_nl, ONNX Runtime for int4) bit for bit, the straight-through gradient
flows, and a QAT fine-tune through hslm-train exports to 4 bits that hslm-parity passes, closer
to its float model than post-training quantization gets to its base."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from hslm.config import ModelConfig
from hslm.export.gguf import gguf_name, write_gguf
from hslm.export.onnx import MODEL_FILE, export_onnx
from hslm.model import Gemma3
from hslm.quant.llama_cpp import quantize_gguf
from hslm.quant.onnx import (QuantizeOptions, merge_sibling_matmuls, quantize_onnx_folder,
                             untie_output_head)
from hslm.train.config import TrainConfig
from hslm.train.qat import (GRIDS, fake_quantize, gguf_plan, onnx_int4_plan, snap_to_grids,
                            start_fake_quantization)
from train_factory import small_run

PARITY_TEXT = "stories_bhaav_sentences.txt"
GGUF_TARGETS = ("q4_0", "iq4_nl")


def run_cli(main, argv) -> int:
    try:
        main(argv)
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.fixture(scope="module")
def base_model_dir(shard_dir, trained_tokenizer_dir, tmp_path_factory):
    """The tiny model trained by hslm-train for 20 steps (the weights QAT starts from)."""
    from hslm.apps.train import main

    out = tmp_path_factory.mktemp("base")
    values = small_run(shard_dir, trained_tokenizer_dir, out, steps=20, warmup=2, lr=1e-2,
                       eval_every=20, checkpoint_every=20)
    main([f"{key}={value}" for key, value in values.items()] + ["--samples", "0"])
    return out / "model"


def weights(kind: str, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, generator=generator) * 0.02
    # heavy tails with outliers, as trained weights have, on a coarse lattice so that exact
    # rounding ties and blocks whose largest values are +m and -m occur
    heavy = torch.distributions.StudentT(2.5).sample(shape) * 0.02
    return torch.round(heavy * 256) / 256


def model_with(kind: str, vocab_size: int, tie_embeddings: bool = True) -> Gemma3:
    """The tiny preset with every matrix drawn as `weights(kind)`, or the trained base."""
    torch.manual_seed(0)
    model = Gemma3(ModelConfig.preset("tiny", vocab_size=vocab_size,
                                      tie_embeddings=tie_embeddings))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(weights(kind, tuple(parameter.shape), generator))
    return model.eval()


def load_model(folder) -> Gemma3:
    from hslm.loader import load_torch_model

    return load_torch_model(folder)[0].eval()


@pytest.fixture(params=["normal", "heavy-tailed", "trained"])
def sample_model(request, trained_tokenizer, base_model_dir) -> Gemma3:
    if request.param == "trained":
        return load_model(base_model_dir)
    return model_with(request.param, trained_tokenizer.vocab_size)


@pytest.mark.parametrize("target", GGUF_TARGETS)
def test_gguf_grids_equal_llama_cpp(sample_model, target, trained_tokenizer, tmp_path):
    f32 = write_gguf(sample_model, trained_tokenizer, tmp_path / "f32.gguf", "f32")
    quantized = quantize_gguf(f32, tmp_path / f"{target}.gguf", target).path
    state = {gguf_name(name): value for name, value in sample_model.state_dict().items()}
    compared = 0
    for tensor in gguf.GGUFReader(quantized).tensors:
        if tensor.tensor_type.name.lower() != target:
            continue
        weight = state[tensor.name]
        theirs = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        ours = GRIDS[target](weight).numpy()
        assert np.array_equal(ours, theirs), \
            f"{tensor.name}: {int((ours != theirs).sum())} of {ours.size} values differ"
        compared += ours.size
    assert compared > 0.9 * sum(p.numel() for n, p in sample_model.named_parameters()
                                if p.dim() == 2 and n != "embed.weight")


def onnx_weights(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The 4-bit weights of a quantized graph, dequantized as ONNX Runtime's kernels do, by the
    name of the fp32 initializer they replaced, as [rows, cols] with blocks of 32 along the rows
    (a MatMul's weight transposed, an embedding as it is)."""
    initializers = {init.name: init for init in graph.graph.initializer}
    found = {}
    for node in graph.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            assert len(node.input) == 3  # symmetric: no zero points (the kernel's is 8)
            packed = numpy_helper.to_array(initializers[node.input[1]])
            scales = numpy_helper.to_array(initializers[node.input[2]])
            n, k, block = attributes["N"], attributes["K"], attributes["block_size"]
            q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1)[:, :k]
            values = (q.astype(np.float32) - 8) * np.repeat(scales.reshape(n, -1), block, 1)[:, :k]
            found[node.input[1].removesuffix("_Q4")] = values
        elif node.op_type == "GatherBlockQuantized":
            packed = np.frombuffer(initializers[node.input[0]].raw_data, dtype=np.uint8)
            scales = numpy_helper.to_array(initializers[node.input[2]])
            q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(scales.shape[0], -1)
            q = np.where(q > 7, q.astype(np.int16) - 16, q).astype(np.float32)  # signed int4
            found[node.input[0].removesuffix("_Q4")] = \
                q * np.repeat(scales, attributes["block_size"], axis=1)
    return found


def test_onnx_int4_grid_equals_onnx_runtime(base_model_dir, trained_tokenizer, tmp_path):
    # one export (they are slow) holding each kind of weights: the trained model's, with
    # layer 2 random normal and layer 3 and half the embedding heavy-tailed on a lattice
    sample_model = load_model(base_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer, kind in ((2, "normal"), (3, "heavy-tailed")):
            for parameter in sample_model.layers[layer].parameters():
                if parameter.dim() == 2:
                    parameter.copy_(weights(kind, tuple(parameter.shape), generator))
        half = sample_model.embed.weight[: sample_model.config.vocab_size // 2]
        half.copy_(weights("heavy-tailed", tuple(half.shape), generator))
    export_onnx(sample_model, trained_tokenizer, tmp_path / "fp32")
    # every weight at 4 bits, the tied head too (by default it is 8-bit, see onnx_int4_plan)
    quantize_onnx_folder(tmp_path / "fp32", tmp_path / "int4", QuantizeOptions("int4",
                                                                               head_bits=4))
    fp32 = onnx.load(tmp_path / "fp32" / MODEL_FILE)
    untie_output_head(fp32)  # the initializers the quantizer saw
    merge_sibling_matmuls(fp32)
    originals = {init.name: numpy_helper.to_array(init) for init in fp32.graph.initializer}
    quantized = onnx_weights(onnx.load(tmp_path / "int4" / MODEL_FILE))
    # every Linear, the output head and the embedding: 4 x 7 + 2
    assert len(quantized) == 4 * 4 + 2, sorted(quantized)
    for name, theirs in quantized.items():
        original = originals[name]
        # MatMul initializers are [in, out]: the grid, as Linear weights, [out, in]
        weight = original if name.endswith("embed.weight") else original.T
        ours = GRIDS["onnx-int4"](torch.from_numpy(np.ascontiguousarray(weight))).numpy()
        mismatches = int((ours != theirs).sum())
        if name.endswith("embed.weight"):
            # GatherBlockQuantized is ONNX Runtime's numpy quantizer (x / scale, round half to
            # even): it differs from MatMulNBits' (x * (1 / scale), half away from zero) at
            # exact ties only, by one step (the lattice rows have many ties)
            scale = np.repeat(np.abs(weight).reshape(weight.shape[0], -1, 32).max(-1) / 8, 32, 1)
            differ = ours != theirs
            ratio = np.abs(weight[differ]) / scale[differ]
            assert np.all(ratio - np.floor(ratio) == 0.5), ratio
            assert np.allclose(np.abs(ours - theirs)[differ], scale[differ])
            assert not differ[sample_model.config.vocab_size // 2:].any()
        else:
            assert mismatches == 0, f"{name}: {mismatches} of {ours.size} values differ"


def test_gguf_plan_mirrors_llama_cpp_types(trained_tokenizer):
    vocab = trained_tokenizer.vocab_size
    linears = {f"{name}.weight" for name, module in model_with("normal", vocab).named_modules()
               if isinstance(module, torch.nn.Linear)}
    # tied: token_embd is also the output, which llama.cpp keeps at Q8_0 (Q6_K does not fit
    # 64-wide rows); every Linear is 4-bit
    for target in GGUF_TARGETS:
        plan = gguf_plan(model_with("normal", vocab), trained_tokenizer, target)
        assert set(plan) == linears and set(plan.values()) == {target}
    # untied: the embedding is 4-bit (a lookup), the output head Q8_0
    untied = gguf_plan(model_with("normal", vocab, tie_embeddings=False), trained_tokenizer,
                       "q4_0")
    assert set(untied) == linears - {"lm_head.weight"} | {"embed.weight"}
    # hindi-270m's shapes (4 query heads per KV head): llama.cpp gives attn_v more bits in an
    # iq4_nl file (Q5_K, which falls back to Q5_1 on 640-wide rows)
    config = ModelConfig.preset("hindi-270m", vocab_size=vocab, n_layers=1,
                                layer_types=["full_attention"])
    plan = gguf_plan(Gemma3(config), trained_tokenizer, "iq4_nl")
    assert "layers.0.attn.v_proj.weight" not in plan and "layers.0.attn.q_proj.weight" in plan
    assert len(plan) == 6
    # ONNX int4 keeps the output head at 8 bits like llama.cpp, a tied embedding with it
    assert set(onnx_int4_plan(model_with("normal", vocab))) == linears
    untied = onnx_int4_plan(model_with("normal", vocab, tie_embeddings=False))
    assert set(untied) == linears - {"lm_head.weight"} | {"embed.weight"}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_straight_through_gradient(grid):
    generator = torch.Generator().manual_seed(0)
    weight = weights("heavy-tailed", (48, 96), generator).requires_grad_()
    inputs = torch.randn(5, 96, generator=generator)
    loss = (torch.nn.functional.linear(inputs, fake_quantize(weight, grid)) ** 2).sum()
    loss.backward()
    on_grid = GRIDS[grid](weight.detach()).requires_grad_()
    ((torch.nn.functional.linear(inputs, on_grid) ** 2).sum()).backward()
    assert not torch.equal(on_grid.detach(), weight.detach())
    assert torch.equal(weight.grad, on_grid.grad)  # d loss / d w = d loss / d grid(w)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_fake_quantized_model_computes_its_grid_model(grid, trained_tokenizer):
    """A model in QAT computes what its weights put on the grid compute (logits and gradients,
    the tied output head included), and snapped weights re-quantize to themselves."""
    vocab = trained_tokenizer.vocab_size
    model, on_grid = model_with("heavy-tailed", vocab), model_with("heavy-tailed", vocab)
    plan = onnx_int4_plan(model) if grid == "onnx-int4" else \
        dict.fromkeys(onnx_int4_plan(model).keys() - {"embed.weight"}, grid)
    start_fake_quantization(model, plan)
    with torch.no_grad():
        for name, parameter in on_grid.named_parameters():
            if name in plan:
                parameter.copy_(GRIDS[grid](parameter))
    ids = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    logits, expected = model(ids), on_grid(ids)
    assert torch.equal(logits, expected)
    logits.logsumexp(-1).sum().backward()
    expected.logsumexp(-1).sum().backward()
    for (name, ours), theirs in zip(model.named_parameters(), on_grid.parameters()):
        assert torch.allclose(ours.grad, theirs.grad, rtol=1e-5, atol=1e-7), name
    snap_to_grids(model, plan)
    assert type(model) is Gemma3 and type(model.layers[0].attn.q_proj) is torch.nn.Linear
    moved = 0
    for name, parameter in model.named_parameters():
        if name in plan:
            assert torch.equal(GRIDS[grid](parameter), parameter), name
            moved += int((parameter != dict(on_grid.named_parameters())[name]).sum())
    # one pass is the fixed point except for IQ4_NL, whose scale search re-scales a few blocks
    total = sum(on_grid.get_parameter(name).numel() for name in plan)
    assert moved == 0 if grid != "iq4_nl" else 0 < moved < 0.02 * total


def test_qat_settings_are_checked():
    from hslm.config import ConfigError

    with pytest.raises(ConfigError, match="qat must be one of"):
        TrainConfig(qat="q3")
    with pytest.raises(ConfigError, match="init_from"):
        TrainConfig(qat="q4_0")


def parity(model_dir, artifacts, hindi_data_dir, output, capsys) -> dict[str, dict]:
    from hslm.apps.parity import main

    code = run_cli(main, [str(model_dir), *map(str, artifacts), "--text",
                          str(hindi_data_dir / PARITY_TEXT), "--windows", "2",
                          "--max-lines", "300", "--output", str(output)])
    capsys.readouterr()
    assert code in (0, 1)
    return {Path(a["path"]).name: a for a in json.loads((output / "parity.json").read_text())
            ["artifacts"]} | {"passed": code == 0}


def export(model_dir, target, output, capsys):
    from hslm.apps.export import main

    flag = ["--onnx", "int4"] if target == "onnx-int4" else ["--gguf", target]
    output.parent.mkdir(parents=True, exist_ok=True)
    code = run_cli(main, [str(model_dir), *flag, "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return output


@pytest.mark.slow
def test_qat_fine_tune_exports_pass_parity(base_model_dir, shard_dir, trained_tokenizer_dir,
                                           hindi_data_dir, tmp_path, capsys):
    from hslm.apps.train import main

    for target in ("q4_0", "iq4_nl", "onnx-int4"):
        out = tmp_path / f"qat-{target}"
        values = small_run(shard_dir, trained_tokenizer_dir, out, steps=6, warmup=1, lr=1e-3,
                           eval_every=6, checkpoint_every=6, init_from=str(base_model_dir),
                           qat=target)
        main([f"{key}={value}" for key, value in values.items()] + ["--samples", "0"])
        capsys.readouterr()
        name = "int4" if target == "onnx-int4" else f"model-{target}.gguf"
        qat_export = export(out / "model", target, tmp_path / target / name, capsys)
        ptq_export = export(base_model_dir, target, tmp_path / f"ptq-{target}" / name, capsys)
        qat = parity(out / "model", [qat_export], hindi_data_dir, tmp_path / "parity", capsys)
        assert qat["passed"], qat
        ptq = parity(base_model_dir, [ptq_export], hindi_data_dir, tmp_path / "ptq", capsys)
        qat_kl = qat[name]["logits"]["kl_mean"]
        ptq_kl = ptq[name]["logits"]["kl_mean"]
        # the QAT model's weights are on its export's grid: the export computes the same
        # function up to the runtimes' arithmetic; post-training quantization does not
        assert qat_kl < 0.1 * ptq_kl, (target, qat_kl, ptq_kl)
