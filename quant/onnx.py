"""Weight-only quantization of hslm's ONNX graphs for the CPU, then ONNX Runtime's fusions.

- int4: every MatMul (attention, FFN and the output head) as `MatMulNBits`, 4 bits, in blocks
  of 16, 32, 64 or 128 along the input dimension; the embedding as `GatherBlockQuantized` with
  the same blocks. How the 4-bit values are chosen is one of ONNX Runtime's own quantizers
  (`ALGORITHMS`): round-to-nearest symmetric or with zero points, HQQ, llama.cpp's k-quant
  search, or GPTQ on calibration text run through the graph itself. All of them are in
  onnxruntime (its copy of Intel Neural Compressor's RTN/k-quant/GPTQ code; HQQ uses torch):
  no other package. The embedding is round-to-nearest (HQQ/GPTQ have no Gather form), with
  zero points when the algorithm has them.
- int8: the MatMuls with 8 bits, round-to-nearest symmetric (GatherBlockQuantized has no
  8-bit form: the embedding stays fp32).
- int4 with `head_bits=8` (the default): the output head as a symmetric 8-bit round-to-nearest
  `MatMulNBits`, as llama.cpp keeps a tied head in Q8_0 in its 4-bit files. A tied embedding
  then reads the head's 8-bit bytes (`GatherBlockQuantized`, bits 8): the matrix is stored once.
  An untied embedding stays 4-bit, and so does a tied one whose rows are not whole blocks.

`accuracy_level=4` lets the CPU kernels compute in int8 (int8 MatMulNBits at the default
level is 30x slower). A tied output head is `MatMul(x, Transpose(embedding))` in the graph,
which the quantizer skips, so it is first given its own (transposed) initializer. MatMuls that
read the same input (q/k/v projections; FFN gate and up) are merged into one wider MatMul and
a Split first: one kernel call instead of two or three, which matters when decoding one token
at a time. onnxscript's ONNX Runtime fusions (RMSNorm, skip-RMSNorm, rotary embedding) run
after quantization; before, they would turn the output head into a `FusedMatMul` that stays
fp32. Attention is already ONNX Runtime's fused operator in the exported graph.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hslm.config import ModelConfig
from hslm.export.onnx import MODEL_FILE, io_names
from hslm.runtime.onnx import OnnxLoadError, read_config

BITS = {"int8": 8, "int4": 4}
BLOCK_SIZES = (16, 32, 64, 128)  # MatMulNBits' and GatherBlockQuantized's CPU kernels
BLOCK_SIZE = 32
# int4 algorithm -> (what it is, has zero points). nvidia_awq is left out: it needs NVIDIA's
# modelopt and downloads its own calibration set.
ALGORITHMS = {
    "rtn": ("round to nearest, symmetric", False),
    "rtn-asym": ("round to nearest with a zero point per block", True),
    "hqq": ("half-quadratic: zero points optimised per block, no data", True),
    "k_quant": ("llama.cpp's search for each block's scale and minimum, no data", True),
    "gptq": ("GPTQ on Hindi calibration text (--calibration), zero points", True),
}
ALGORITHM = "rtn"
HEAD_BIT_CHOICES = (4, 8)  # the output head's bits in an int4 graph
HEAD_BITS = 8  # chosen by benchmarks/quant_quality.py
CALIBRATION_WINDOWS = 16
CALIBRATION_CONTEXT = 512  # tokens per calibration window at most
ACCURACY_LEVEL = 4  # int8 compute in MatMulNBits on CPU
UNTIED_HEAD = "lm_head.weight.transposed"
# Loggers that report every pass at INFO level, with stack traces.
CHATTY_LOGGERS = ("onnxruntime.quantization", "onnx_ir", "onnxscript")


class OnnxQuantizeError(ValueError):
    """A quantization that cannot be done as asked (message says why)."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize: the type, and for int4 the algorithm and its calibration windows
    (token ids; GPTQ only)."""
    kind: str
    algorithm: str = ALGORITHM
    block_size: int = BLOCK_SIZE
    calibration: tuple[tuple[int, ...], ...] = ()
    head_bits: int = HEAD_BITS

    def check(self, config: ModelConfig | None = None) -> None:
        """Raises OnnxQuantizeError for options that cannot work (on `config`'s shapes)."""
        if self.kind not in BITS:
            raise OnnxQuantizeError(f"unknown ONNX quantization {self.kind!r}; choose one of "
                                    f"{', '.join(BITS)}")
        if self.algorithm not in ALGORITHMS:
            raise OnnxQuantizeError(f"unknown int4 algorithm {self.algorithm!r}; choose one of "
                                    f"{', '.join(ALGORITHMS)}")
        if self.kind != "int4" and self.algorithm != "rtn":
            raise OnnxQuantizeError(f"{self.kind} is round-to-nearest only; the algorithms are "
                                    "for int4")
        if self.head_bits not in HEAD_BIT_CHOICES or (self.kind != "int4"
                                                      and self.head_bits != HEAD_BITS):
            raise OnnxQuantizeError(f"the output head's bits are 4 or 8, and only in an int4 "
                                    f"graph (got {self.head_bits} for {self.kind})")
        if self.block_size not in BLOCK_SIZES:
            raise OnnxQuantizeError(f"block size {self.block_size} is not one of "
                                    f"{', '.join(map(str, BLOCK_SIZES))}")
        if self.algorithm == "gptq" and not self.calibration:
            raise OnnxQuantizeError("gptq needs calibration text: give --calibration FILE...")
        # onnxruntime's k-quant/GPTQ code packs two zero points a byte across a column's
        # blocks and fails when a column has an odd number of blocks.
        if config is not None and self.algorithm in ("k_quant", "gptq"):
            rows = {config.hidden_size, config.ffn_size, config.n_heads * config.head_dim}
            odd = sorted(k for k in rows if -(-k // self.block_size) % 2)
            if odd:
                raise OnnxQuantizeError(
                    f"{self.algorithm} needs an even number of blocks along each weight's "
                    f"inputs (onnxruntime's zero-point packing), and {odd[0]} inputs make "
                    f"{-(-odd[0] // self.block_size)} blocks of {self.block_size}: choose "
                    f"another block size")

    @property
    def description(self) -> str:
        name = self.algorithm if self.kind == "int4" else "rtn"
        head = ", 8-bit output head" if self.head_bits == 8 else ""
        return f"{name}, block {self.block_size}{head}"


def calibration_windows(tokenizer, paths: Sequence[str | Path], context_length: int,
                        count: int = CALIBRATION_WINDOWS) -> tuple[tuple[int, ...], ...]:
    """Up to `count` windows of <bos> + text ids, each min(context_length, CALIBRATION_CONTEXT)
    long, from the files' normalised text (the GGUF importance matrix reads it the same way)."""
    from hslm.parity import ParityError, validation_windows
    from hslm.quant.imatrix import calibration_text
    from hslm.quant.llama_cpp import QuantizeError

    try:
        windows = validation_windows(tokenizer, [calibration_text(paths)],
                                     min(context_length, CALIBRATION_CONTEXT), count)
    except QuantizeError as err:
        raise OnnxQuantizeError(str(err)) from None
    except ParityError as err:
        raise OnnxQuantizeError(f"calibration text: {err}") from None
    return tuple(tuple(window) for window in windows)


def _calibration_reader(windows, config):
    """ONNX Runtime's calibration data reader over full feeds of the graph (empty past)."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    past = np.zeros((1, config.n_kv_heads, 0, config.head_dim), np.float32)
    pasts = dict.fromkeys(io_names(config.n_layers)[0][3:], past)

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.feeds = [{"input_ids": np.array([w], np.int64),
                           "attention_mask": np.ones((1, len(w)), np.int64),
                           "position_ids": np.arange(len(w), dtype=np.int64)[None],
                           **pasts} for w in windows]
            self.position = 0

        def get_next(self):
            self.position += 1
            return self.feeds[self.position - 1] if self.position <= len(self.feeds) else None

    return Windows()


def untie_output_head(model: onnx.ModelProto) -> bool:
    """Replace `MatMul(x, Transpose(W))` on an initializer W (the tied embedding) by a MatMul
    on a new initializer holding W transposed. Returns whether there was such a head."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        transpose = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        if transpose is None or transpose.op_type != "Transpose" or \
                transpose.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T),
                                                         UNTIED_HEAD))
        node.input[1] = UNTIED_HEAD
        if not any(transpose.output[0] in other.input for other in graph.node):
            graph.node.remove(transpose)
        return True
    return False


def merge_sibling_matmuls(model: onnx.ModelProto) -> int:
    """Replace the MatMuls of one input by 2-D initializers (x @ W1, x @ W2, ...) by one MatMul
    on the concatenated weights followed by a Split. Returns how many groups were merged."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
    merged = 0
    for source, nodes in groups.items():
        if len(nodes) < 2:
            continue
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in nodes]
        if len({w.shape[0] for w in weights}) != 1 or len({w.dtype for w in weights}) != 1:
            continue
        name = "+".join(node.input[1] for node in nodes)
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), name))
        sizes = numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64),
                                        name + ".split")
        graph.initializer.append(sizes)
        position = list(graph.node).index(nodes[0])
        graph.node.insert(position, onnx.helper.make_node(
            "Split", [name + ".out", sizes.name], [node.output[0] for node in nodes], axis=-1))
        graph.node.insert(position, onnx.helper.make_node("MatMul", [source, name],
                                                          [name + ".out"]))
        for node in nodes:
            graph.node.remove(node)
        merged += 1
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    return merged


def quantize_model(model: onnx.ModelProto, options: QuantizeOptions,
                   config: ModelConfig) -> onnx.ModelProto:
    """The quantized and fused graph of `model` (of `config`); metadata_props are kept."""
    import onnx_ir as ir

    options.check(config)
    for name in CHATTY_LOGGERS + ("neural_compressor",):
        logging.getLogger(name).setLevel(logging.ERROR)
    metadata = {p.key: p.value for p in model.metadata_props}
    # A tied head kept at 8 bits is stored once: the embedding reads the head's bytes (unless
    # its rows are padded to whole blocks, which the embedding cannot read).
    share_embedding = untie_output_head(model) and options.head_bits == 8 \
        and config.hidden_size % options.block_size == 0
    merge_sibling_matmuls(model)
    model = _quantize_weights(model, options, config, quantize_embedding=not share_embedding)
    for node in model.graph.node:  # HQQ's MatMulNBits come without it
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level"
                                                     for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", ACCURACY_LEVEL))
    fused = fuse_for_ort(ir.serde.deserialize_model(model), config.context_length)
    result = ir.serde.serialize_model(fused)
    if share_embedding:  # after the optimizer, which would fold the Reshape into a copy
        gather_from_head(result, config)
    onnx.helper.set_model_props(result, {**metadata, "hslm.quantization": options.kind,
                                         "hslm.quantization_method": options.description})
    return result


def _quantize_weights(model: onnx.ModelProto, options: QuantizeOptions, config: ModelConfig,
                      quantize_embedding: bool = True) -> onnx.ModelProto:
    """The MatMuls (and for int4 the embedding's Gather, unless not `quantize_embedding`)
    replaced by ONNX Runtime's quantizer."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    bits, block = BITS[options.kind], options.block_size
    symmetric = options.kind == "int8" or not ALGORITHMS[options.algorithm][1]
    # The k-quant and GPTQ code orders and configures nodes by name.
    seen = set()
    for number, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_hslm_{number}"
        seen.add(node.name)

    def run(model, algorithm, bits=bits, symmetric=symmetric):
        quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=block,
                                               is_symmetric=symmetric,
                                               accuracy_level=ACCURACY_LEVEL, algo_config=algorithm)
        with contextlib.redirect_stdout(sys.stderr):  # the k-quant/GPTQ code's progress bar
            quantizer.process()
        return quantizer.model.model

    def round_to_nearest(op_types, bits=bits, symmetric=symmetric):
        return nbits.DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=symmetric, accuracy_level=ACCURACY_LEVEL, bits=bits,
            op_types_to_quantize=op_types, quant_axes=(("MatMul", 0), ("Gather", 1)))

    if options.kind == "int8":
        return run(model, round_to_nearest(("MatMul",)))
    head_apart = options.head_bits != bits
    if head_apart:
        head_weight = _hide_output_head(model, config)
    gathers = ("Gather",) if quantize_embedding else ()
    if options.algorithm in ("rtn", "rtn-asym"):
        model = run(model, round_to_nearest(("MatMul", *gathers)))
    else:
        if options.algorithm == "hqq":
            matmuls = nbits.HQQWeightOnlyQuantConfig(block_size=block, bits=4,
                                                     op_types_to_quantize=("MatMul",))
        elif options.algorithm == "k_quant":
            matmuls = nbits.KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
        else:
            matmuls = nbits.GPTQWeightOnlyQuantConfig(
                calibration_data_reader=_calibration_reader(options.calibration, config),
                op_types_to_quantize=("MatMul",))
        model = run(model, matmuls)
        if gathers:
            model = run(model, round_to_nearest(gathers))
    if head_apart:  # symmetric 8-bit, like llama.cpp's Q8_0
        _show_output_head(model, head_weight)
        model = run(model, round_to_nearest(("MatMul",), options.head_bits, True),
                    options.head_bits, True)
    return model


HIDDEN_SUFFIX = ".hidden_from_quantizer"


def _hide_output_head(model: onnx.ModelProto, config: ModelConfig) -> str:
    """Put an Identity between the output head's MatMul and its weight: quantizers only take
    MatMuls on initializers (nodes_to_exclude would do, but GPTQ ignores it). Returns the
    weight's name."""
    graph = model.graph
    vocab_wide = {init.name for init in graph.initializer
                  if len(init.dims) == 2 and init.dims[1] == config.vocab_size}
    head = next(node for node in graph.node
                if node.op_type == "MatMul" and node.input[1] in vocab_wide)
    weight = head.input[1]
    graph.node.insert(list(graph.node).index(head), onnx.helper.make_node(
        "Identity", [weight], [weight + HIDDEN_SUFFIX], name=weight + HIDDEN_SUFFIX))
    head.input[1] = weight + HIDDEN_SUFFIX
    return weight


def _show_output_head(model: onnx.ModelProto, weight: str) -> None:
    graph = model.graph
    for node in graph.node:
        if weight + HIDDEN_SUFFIX in node.input:
            node.input[list(node.input).index(weight + HIDDEN_SUFFIX)] = weight
    graph.node.remove(next(node for node in graph.node if node.name == weight + HIDDEN_SUFFIX))


def gather_from_head(model: onnx.ModelProto, config: ModelConfig) -> None:
    """Replace the fp32 embedding `Gather` by an 8-bit `GatherBlockQuantized` on the 8-bit
    output head's bytes ([vocab, blocks, block] reshaped to [vocab, hidden]: the head's weight
    transposed back is the embedding) and scales, so the tied matrix is stored once. Both
    operators default the zero point of symmetric uint8 blocks to 128."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    head = next(node for node in graph.node if node.op_type == "MatMulNBits"
                and node.input[1].startswith(UNTIED_HEAD))
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    embedding = next(node for node in graph.node if node.op_type == "Gather"
                     and node.input[0] in initializers
                     and list(initializers[node.input[0]].dims) == [config.vocab_size,
                                                                    config.hidden_size])
    shape = numpy_helper.from_array(np.array([config.vocab_size, config.hidden_size], np.int64),
                                    UNTIED_HEAD + ".embedding_shape")
    graph.initializer.append(shape)
    flat = UNTIED_HEAD + ".embedding_q8"
    position = list(graph.node).index(embedding)
    graph.node.insert(position, onnx.helper.make_node(
        "GatherBlockQuantized", [flat, embedding.input[1], head.input[2]], embedding.output,
        domain="com.microsoft", bits=8, block_size=attributes["block_size"], gather_axis=0,
        quantize_axis=1))
    graph.node.insert(position, onnx.helper.make_node("Reshape", [head.input[1], shape.name],
                                                      [flat]))
    graph.node.remove(embedding)
    graph.initializer.remove(initializers[embedding.input[0]])


def fuse_for_ort(model, context_length: int):
    """RMSNorm, skip-RMSNorm and rotary fusions of an `onnx_ir` model (see the module doc).

    Rotary embeddings become ONNX Runtime's `RotaryEmbedding` with constant cos/sin tables of
    `context_length` rows (without a bound, the fusion would recompute the tables up to the
    largest position at every step)."""
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.ort_fusions.cos_sin_cache import CosSinCacheFusion
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    class BoundedCosSinCache(CosSinCacheFusion):
        def __init__(self):
            super().__init__("BoundedCosSinCache")
            self.max_pos_id = context_length - 1

    common_passes.ShapeInferencePass()(model)
    optimize(model)
    for fuse in (fuse_rms_normalization, fuse_skip_rms_normalization, fuse_rotary_embedding):
        fuse(model)
    pattern.RewriteRuleSet([BoundedCosSinCache.rule()]).apply_to_model(model)
    optimize(model)
    return model


def quantize_onnx_folder(source: str | Path, output: str | Path,
                         options: QuantizeOptions | str) -> Path:
    """Quantize the fp32 folder `source` (from `hslm.export.onnx`) into the folder `output`,
    with the same tokenizer and genai_config.json; `options` may be just the type (its
    defaults). Returns the graph's path."""
    source, output = Path(source), Path(output)
    options = QuantizeOptions(options) if isinstance(options, str) else options
    if not (source / MODEL_FILE).is_file():
        raise OnnxQuantizeError(f"no {MODEL_FILE} in {source}")
    options.check()
    graph = onnx.load(source / MODEL_FILE)
    try:
        config = read_config({p.key: p.value for p in graph.metadata_props}, source / MODEL_FILE)
    except OnnxLoadError as err:
        raise OnnxQuantizeError(str(err)) from None
    quantized = quantize_model(graph, options, config)
    output.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != MODEL_FILE and item.is_file():
            shutil.copy2(item, output / item.name)
    onnx.save_model(quantized, output / MODEL_FILE)
    return output / MODEL_FILE
