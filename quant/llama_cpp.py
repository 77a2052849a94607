"""GGUF quantization with llama.cpp's own quantizer: `llama_model_quantize` via llama-cpp-python,
or the `llama-quantize` program (`hslm-native build`) when an importance matrix is given
(`hslm.quant.imatrix`), which llama-cpp-python's API cannot pass.

llama.cpp's K-quants work on rows that are multiples of 256; hslm's hidden size 640 is not, so
"Q4_K_M" silently falls back to Q5_0/Q8_0 for most tensors. Types with blocks of 32 (Q4_0,
IQ4_NL, Q8_0) apply to every tensor. `quantize_gguf` reports what each tensor really got.

The 3- and 2-bit IQ types also have blocks of 256: at hindi-270m's shapes only the matrices
whose inputs are 1,024 (attn_output) or 2,048 (ffn_down) wide get them; those reading the
640-wide hidden state fall back to IQ4_NL, so the files are 3.7-4.2 bits per layer weight
(benchmarks/results/gguf_imatrix.md).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf

# hslm's name -> llama.cpp's file type constant (in llama_cpp) and the tensor type it asks for.
QUANT_TYPES = {
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", gguf.GGMLQuantizationType.Q8_0),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", gguf.GGMLQuantizationType.Q4_0),
    "iq4_nl": ("LLAMA_FTYPE_MOSTLY_IQ4_NL", gguf.GGMLQuantizationType.IQ4_NL),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", gguf.GGMLQuantizationType.Q4_K),
    "iq3_s": ("LLAMA_FTYPE_MOSTLY_IQ3_S", gguf.GGMLQuantizationType.IQ3_S),
    "iq3_xxs": ("LLAMA_FTYPE_MOSTLY_IQ3_XXS", gguf.GGMLQuantizationType.IQ3_XXS),
    "iq2_s": ("LLAMA_FTYPE_MOSTLY_IQ2_S", gguf.GGMLQuantizationType.IQ2_S),
    "iq2_xs": ("LLAMA_FTYPE_MOSTLY_IQ2_XS", gguf.GGMLQuantizationType.IQ2_XS),
    "iq2_xxs": ("LLAMA_FTYPE_MOSTLY_IQ2_XXS", gguf.GGMLQuantizationType.IQ2_XXS),
}
LOW_BIT_TYPES = ("iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs")
# llama.cpp refuses these without an importance matrix (their grids are chosen by it); IQ3_S
# runs without one but is calibrated like the others.
NEEDS_IMATRIX = ("iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs")
# Q8_0's quantizer ignores an importance matrix.
IGNORES_IMATRIX = ("q8_0",)
# "q4" is the best 4-bit type for 640-wide rows: IQ4_NL (non-linear levels, blocks of 32)
# has the same size as Q4_0 with lower error; K-quants would fall back (see module doc).
ALIASES = {"q4": "iq4_nl"}


class QuantizeError(ValueError):
    """A quantization that cannot be done as asked (message says why)."""


@dataclass
class QuantizeReport:
    path: Path
    requested: str
    bits_per_weight: float  # over all tensors, from the real sizes in the file
    fallbacks: dict[str, str]  # tensor -> type it got instead of the requested one

    def summary(self) -> str:
        text = f"{self.path}: {self.requested}, {self.bits_per_weight:.2f} bits per weight"
        if self.fallbacks:
            text += (f"; {len(self.fallbacks)} tensor(s) fell back to other types "
                     f"(e.g. {next(iter(self.fallbacks.items()))})")
        return text


def quantize_gguf(source: str | Path, output: str | Path, out_type: str,
                  embedding_type: str | None = None, threads: int = 0,
                  imatrix: str | Path | None = None,
                  say: Callable[[str], None] = print) -> QuantizeReport:
    """Quantize an f32/f16 GGUF file into `out_type`; the embedding type is selectable. With
    an `imatrix` (llama.cpp's format) llama-quantize weighs the rounding errors by it."""
    import llama_cpp

    name = ALIASES.get(out_type, out_type)
    if name not in QUANT_TYPES:
        raise QuantizeError(f"unknown quantization {out_type!r}; choose one of "
                            f"{', '.join([*ALIASES, *QUANT_TYPES])}")
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise QuantizeError(f"GGUF file not found: {source}")
    if imatrix is not None:
        return _quantize_with_imatrix(source, output, name, Path(imatrix), embedding_type,
                                      threads, say)
    if name in NEEDS_IMATRIX:
        raise QuantizeError(f"{name} needs an importance matrix (calibration text)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[name][0])
    params.nthread = threads
    if embedding_type is not None:
        params.token_embedding_type = int(_embedding_type(embedding_type))
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(),
                                            ctypes.byref(params))
    if status != 0:
        raise QuantizeError(f"llama.cpp could not quantize {source} to {name} (status {status})")
    return inspect_quantized(output, name)


def _quantize_with_imatrix(source: Path, output: Path, name: str, imatrix: Path,
                           embedding_type: str | None, threads: int,
                           say: Callable[[str], None]) -> QuantizeReport:
    from hslm.quant.imatrix import run_program

    if name in IGNORES_IMATRIX:
        raise QuantizeError(f"{name} does not use an importance matrix")
    if not imatrix.is_file():
        raise QuantizeError(f"importance matrix not found: {imatrix}")
    options = ["--imatrix", str(imatrix)]
    if embedding_type is not None:
        options += ["--token-embedding-type", _embedding_type(embedding_type).name.lower()]
    file_type = QUANT_TYPES[name][0].removeprefix("LLAMA_FTYPE_MOSTLY_")
    run_program("llama-quantize", [*options, str(source), str(output), file_type,
                                   *([str(threads)] if threads else [])], say,
                _quantize_progress)
    return inspect_quantized(output, name)


def _quantize_progress(line: str) -> str | None:
    # "[  12/  44]   blk.1.attn_norm.weight - [ 640, 1, ...], type = f32, size = ...": one line
    # per layer (its first tensor)
    counter, _, rest = line.partition("]")
    tensor = rest.split(" - ")[0].strip()
    if line.startswith("[") and "/" in counter and tensor.endswith(".attn_norm.weight"):
        return f"llama-quantize: {counter}] {tensor.removesuffix('.attn_norm.weight')}"
    return None


def _embedding_type(embedding_type: str) -> gguf.GGMLQuantizationType:
    name = ALIASES.get(embedding_type, embedding_type)
    if name not in {*QUANT_TYPES, "f16", "f32"}:
        raise QuantizeError(f"unknown embedding type {embedding_type!r}")
    return _ggml_type(name)


def _ggml_type(name: str) -> gguf.GGMLQuantizationType:
    if name in QUANT_TYPES:
        return QUANT_TYPES[name][1]
    return gguf.GGMLQuantizationType[name.upper()]


def inspect_quantized(path: str | Path, requested: str) -> QuantizeReport:
    """Bits per weight and fallbacks, read from the tensor types and sizes in the file."""
    reader = gguf.GGUFReader(path)
    wanted = QUANT_TYPES[requested][1]
    n_bits = n_weights = 0
    fallbacks = {}
    for tensor in reader.tensors:
        n_bits += int(tensor.n_bytes) * 8
        n_weights += int(tensor.n_elements)
        is_matrix = len(tensor.shape) >= 2
        if is_matrix and tensor.tensor_type != wanted and tensor.name != "token_embd.weight":
            fallbacks[tensor.name] = tensor.tensor_type.name
    return QuantizeReport(Path(path), requested, n_bits / n_weights, fallbacks)
