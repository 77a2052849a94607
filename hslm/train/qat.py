"""Quantization-aware training: the weights an exporter stores in 4 bits are fake-quantized in the
forward pass, on that exporter's own grid, with a straight-through gradient.

A grid maps a weight [rows, cols] to dequantize(quantize(weight)), block by block of 32 along
the rows (the input dimension of a Linear, the hidden dimension of the embedding), as:

- q4_0: llama.cpp's `quantize_row_q4_0_ref` (what `llama_model_quantize` runs without an
  importance matrix): d = the block's first largest-magnitude value / -8, stored in fp16;
  q = min(15, trunc(x / d + 8.5)) computed with the fp32 reciprocal of d.
- iq4_nl: llama.cpp's `quantize_row_iq4_nl_impl` with weights x^2 (no importance matrix):
  16 non-linear levels (the table in gguf-py), the scale refined by least squares over 15
  trial scales, stored in fp16, each value then rounded to its nearest level.
- onnx-int4: ONNX Runtime's MatMulNBits symmetric block quantizer (MLAS, as
  `hslm.quant.onnx` calls it): scale = -(the larger-magnitude of the block's min and max) / 8 in
  fp32, q = clamp(roundf(x / scale + 8), 0, 15) with the reciprocal of the scale. The
  embedding's GatherBlockQuantized uses ONNX Runtime's numpy variant (division and
  round-half-even): it differs from this grid only at exact ties.

Sums run in the same order and precision as llama.cpp's C (sequentially over a block, in fp32)
so that the scale search picks what llama.cpp picks. torchao's QAT fake quantizers do not fit
these grids (their symmetric int4 scale is max|x| / 7.5 or max(min/-8, max/7) with
round-half-even, fp32 scales and no non-linear levels), so hslm has its own.

Which weights are 4-bit is read from what the exporter really does: for GGUF, the model is
written and quantized by llama.cpp once and the tensor types read back (the token embedding,
tied to the output, stays Q8_0; attn_v becomes Q5_1 in iq4_nl files of models with 4 query
heads per KV head); for ONNX int4, every Linear and the embedding, and the output head when
hslm.quant.onnx keeps it at 4 bits (with an 8-bit head, a tied embedding is 8-bit too).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import gguf
import torch
import torch.nn.functional as F
from torch import nn

from hslm.model import Gemma3

QAT_TARGETS = ("none", "q4_0", "iq4_nl", "onnx-int4")
BLOCK = 32  # every grid here: gguf's Q4_0 and IQ4_NL blocks, hslm.quant.onnx.BLOCK_SIZE
IQ4_NL_LEVELS = gguf.quants.IQ4_NL.kvalues
IQ4_NL_TRIALS = 7  # llama.cpp's ntry: trial scales (itry - 127) / max for itry in -7..7
GROUP_MAX_EPS = 1e-15  # llama.cpp: a block with max |x| below this quantizes to zeros


class QATError(ValueError):
    """Quantization-aware training cannot be set up as asked (message says why)."""


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2 or weight.shape[1] % BLOCK:
        raise QATError(f"a 4-bit grid needs rows of a multiple of {BLOCK} values, got a weight "
                       f"of shape {tuple(weight.shape)}")
    return weight.detach().float().reshape(-1, BLOCK)


def _first_largest_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Each block's first value of largest |x| (C's `if (amax < fabsf(v))` scan), [blocks, 1]."""
    return x.gather(1, x.abs().argmax(dim=1, keepdim=True))


def q4_0_grid(weight: torch.Tensor) -> torch.Tensor:
    x = _blocks(weight)
    d = _first_largest_magnitude(x) / -8
    inverse = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    # (int8_t)(v + 8.5f) truncates; v + 8.5 >= 0 here, so truncation is floor
    q = torch.floor(x * inverse + 8.5).clamp(max=15)
    return (d.half().float() * (q - 8)).reshape(weight.shape).to(weight.dtype)


def onnx_int4_grid(weight: torch.Tensor) -> torch.Tensor:
    x = _blocks(weight)
    low, high = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    scale = -torch.where(high.abs() > low.abs(), high, low) / 8
    inverse = torch.where(scale != 0, 1 / scale, torch.zeros_like(scale))
    shifted = x * inverse + 8
    # roundf: halves away from zero (shifted >= 0); the fraction is exact in fp32
    below = torch.floor(shifted)
    q = torch.where(shifted - below >= 0.5, below + 1, below).clamp(0, 15)
    return ((q - 8) * scale).reshape(weight.shape).to(weight.dtype)


def _nearest_level(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """llama.cpp's best_index_int8: the index of the nearest level, the upper one on a tie,
    compared as C does ((x - lower) < (upper - x) in fp32)."""
    upper = torch.searchsorted(levels, values, right=True).clamp(1, len(levels) - 1)
    lower = upper - 1
    closer_below = (values - levels[lower]) < (levels[upper] - values)
    return torch.where(closer_below, lower, upper)


def _ordered_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over each block left to right in fp32, as C's `for (j...) s += t[j]`."""
    total = torch.zeros(terms.shape[0], dtype=terms.dtype, device=terms.device)
    for j in range(terms.shape[1]):
        total = total + terms[:, j]
    return total


def iq4_nl_grid(weight: torch.Tensor) -> torch.Tensor:
    x = _blocks(weight)
    levels = torch.tensor(IQ4_NL_LEVELS, dtype=torch.float32, device=x.device)
    importance = x * x
    signed_max = _first_largest_magnitude(x)
    empty = signed_max.abs().squeeze(1) < GROUP_MAX_EPS
    signed_max = torch.where(empty.unsqueeze(1), torch.ones_like(signed_max), signed_max)

    def fit(inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = levels[_nearest_level(inverse * x, levels)]
        return _ordered_sum(importance * q * x), _ordered_sum(importance * q * q)

    sum_qx, sum_q2 = fit(1 / (-signed_max / levels[0]))
    d = torch.where(sum_q2 > 0, sum_qx / sum_q2, torch.zeros_like(sum_qx))
    best = d * sum_qx
    for trial in range(-IQ4_NL_TRIALS, IQ4_NL_TRIALS + 1):
        sum_qx, sum_q2 = fit((trial + IQ4_NL_LEVELS[0]) / signed_max)
        better = (sum_q2 > 0) & (sum_qx * sum_qx > best * sum_q2)
        d = torch.where(better, sum_qx / torch.where(better, sum_q2, 1), d)
        best = torch.where(better, d * sum_qx, best)
    d = torch.where(empty, torch.zeros_like(d), d).unsqueeze(1)
    inverse = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = levels[_nearest_level(inverse * x, levels)]
    return (d.half().float() * q).reshape(weight.shape).to(weight.dtype)


GRIDS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "q4_0": q4_0_grid, "iq4_nl": iq4_nl_grid, "onnx-int4": onnx_int4_grid}
# GGUF tensor types with a grid here; a tensor llama.cpp gives another type keeps float weights
# in training when that type has more than 4 bits, and stops QAT otherwise.
GGUF_GRIDS = {gguf.GGMLQuantizationType.Q4_0: "q4_0", gguf.GGMLQuantizationType.IQ4_NL: "iq4_nl"}
GGUF_FOUR_BIT = {t for t in gguf.GGMLQuantizationType if t.name.startswith(("Q4", "IQ4"))}


class StraightThrough(torch.autograd.Function):
    """grid(w) forward; the gradient passes to w unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight, grid):
        return grid(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(weight: torch.Tensor, grid: str) -> torch.Tensor:
    return StraightThrough.apply(weight, GRIDS[grid])


class FakeQuantLinear(nn.Linear):
    """An nn.Linear whose weight is fake-quantized on `self.grid` (same parameters and state
    dict; made by changing an existing Linear's class)."""

    grid: str

    def forward(self, x):
        return F.linear(x, fake_quantize(self.weight, self.grid), self.bias)


class FakeQuantEmbedding(nn.Embedding):
    grid: str

    def forward(self, ids):
        return F.embedding(ids, fake_quantize(self.weight, self.grid), self.padding_idx,
                           self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


class FakeQuantHeadGemma3(Gemma3):
    """Gemma3 whose output head (the tied embedding or lm_head) is fake-quantized: the head is
    `F.linear(hidden, model.output_weight)`, not a module's forward."""

    head_grid: str

    @property
    def output_weight(self) -> torch.Tensor:
        return fake_quantize(Gemma3.output_weight.fget(self), self.head_grid)


FAKE_QUANT_CLASSES = {nn.Linear: FakeQuantLinear, nn.Embedding: FakeQuantEmbedding}


def onnx_int4_plan(model: Gemma3) -> dict[str, str]:
    """hslm.quant.onnx's default int4: every Linear and the embedding's GatherBlockQuantized,
    and the output head unless it is kept at 8 bits (then a tied embedding is the head)."""
    from hslm.quant.onnx import HEAD_BITS

    names = [f"{name}.weight" for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, nn.Embedding))]
    if HEAD_BITS == 8:
        head = "embed.weight" if model.config.tie_embeddings else "lm_head.weight"
        names.remove(head)
    return dict.fromkeys(names, "onnx-int4")


def gguf_plan(model: Gemma3, tokenizer, target: str) -> dict[str, str]:
    """The weights llama.cpp's quantizer stores as Q4_0 or IQ4_NL in a `target` GGUF file of this
    model, read from a real one, with their grids."""
    from hslm.export.gguf import GGUFExportError, gguf_name, write_gguf
    from hslm.quant.llama_cpp import QuantizeError, quantize_gguf

    by_gguf_name = {gguf_name(name): name for name in model.state_dict()}
    with tempfile.TemporaryDirectory(prefix="hslm-qat-") as folder:
        try:
            source = write_gguf(model, tokenizer, Path(folder) / "model.gguf", "f32")
            quantize_gguf(source, Path(folder) / f"model-{target}.gguf", target)
        except (GGUFExportError, QuantizeError) as err:
            raise QATError(f"qat={target} needs the model as a GGUF file: {err}") from None
        except ImportError as err:
            raise QATError(f"qat={target} reads the tensor types llama.cpp's quantizer gives "
                           f"(llama-cpp-python): {err}") from None
        tensors = gguf.GGUFReader(Path(folder) / f"model-{target}.gguf").tensors
        types = {by_gguf_name[tensor.name]: tensor.tensor_type for tensor in tensors}
    unsupported = {name: kind.name for name, kind in types.items()
                   if kind in GGUF_FOUR_BIT and kind not in GGUF_GRIDS}
    if unsupported:
        raise QATError(f"llama.cpp gives these weights 4-bit types hslm has no grid for: "
                       f"{unsupported}")
    return {name: GGUF_GRIDS[kind] for name, kind in types.items() if kind in GGUF_GRIDS}


def qat_plan(model: Gemma3, target: str, tokenizer) -> dict[str, str]:
    """{parameter name: grid} for the weights the `target` export stores in 4 bits."""
    if target not in QAT_TARGETS or target == "none":
        raise QATError(f"qat must be one of {QAT_TARGETS[1:]}, got {target!r}")
    return onnx_int4_plan(model) if target == "onnx-int4" else gguf_plan(model, tokenizer, target)


def start_fake_quantization(model: Gemma3, plan: dict[str, str]) -> None:
    """Fake-quantize the planned weights in `model`'s forward from now on (in place: the
    parameters, their names and the state dict stay the same)."""
    modules = dict(model.named_modules())
    for name, grid in plan.items():
        module = modules[name.removesuffix(".weight")]
        module.__class__ = FAKE_QUANT_CLASSES[type(module)]
        module.grid = grid
    head = "embed.weight" if model.config.tie_embeddings else "lm_head.weight"
    if head in plan:
        model.__class__ = FakeQuantHeadGemma3
        model.head_grid = plan[head]


def stop_fake_quantization(model: Gemma3) -> None:
    for module in model.modules():
        for plain, fake in (*FAKE_QUANT_CLASSES.items(), (Gemma3, FakeQuantHeadGemma3)):
            if type(module) is fake:
                module.__class__ = plain


SNAP_PASSES = 3


@torch.no_grad()
def snap_to_grids(model: Gemma3, plan: dict[str, str]) -> None:
    """Replace each planned weight by its point on the grid, so that the float model is the model
    QAT trained and the exporter's re-quantization gives back the same values. Q4_0 and ONNX
    int4 points are fixed at once; IQ4_NL's scale search picks another scale for ~0.5% of
    blocks of its own output (measured), and its output's output is fixed, hence the passes."""
    stop_fake_quantization(model)
    parameters = dict(model.named_parameters())
    for name, grid in plan.items():
        for _ in range(SNAP_PASSES):
            on_grid = GRIDS[grid](parameters[name])
            if torch.equal(on_grid, parameters[name]):
                break
            parameters[name].copy_(on_grid)
