"""Weight-only quantization of hslm's ONNX graphs for the CPU, then ONNX Runtime's fusions.

- int4: every MatMul (attention, FFN and the output head) as `MatMulNBits`, 4 bits, blocks of
  32, symmetric; the embedding as `GatherBlockQuantized` with the same blocks.
- int8: the MatMuls with 8 bits (GatherBlockQuantized has no 8-bit form: the embedding
  stays fp32).

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

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hslm.export.onnx import MODEL_FILE
from hslm.runtime.onnx import OnnxLoadError, read_config

BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 compute in MatMulNBits on CPU
UNTIED_HEAD = "lm_head.weight.transposed"
# Loggers that report every pass at INFO level, with stack traces.
CHATTY_LOGGERS = ("onnxruntime.quantization", "onnx_ir", "onnxscript")


class OnnxQuantizeError(ValueError):
    """A quantization that cannot be done as asked (message says why)."""


def _check_kind(kind: str) -> None:
    if kind not in BITS:
        raise OnnxQuantizeError(f"unknown ONNX quantization {kind!r}; choose one of {', '.join(BITS)}")


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


def quantize_model(model: onnx.ModelProto, kind: str, context_length: int) -> onnx.ModelProto:
    """The quantized and fused graph of a model with `context_length` positions;
    metadata_props are kept."""
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer)

    _check_kind(kind)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    metadata = {p.key: p.value for p in model.metadata_props}
    untie_output_head(model)
    merge_sibling_matmuls(model)
    op_types = ("MatMul", "Gather") if BITS[kind] == 4 else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=BITS[kind],
        op_types_to_quantize=op_types, quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer = MatMulNBitsQuantizer(model, bits=BITS[kind], block_size=BLOCK_SIZE,
                                     is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                     algo_config=config)
    quantizer.process()
    fused = fuse_for_ort(ir.serde.deserialize_model(quantizer.model.model), context_length)
    result = ir.serde.serialize_model(fused)
    onnx.helper.set_model_props(result, {**metadata, "hslm.quantization": kind})
    return result


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


def quantize_onnx_folder(source: str | Path, output: str | Path, kind: str) -> Path:
    """Quantize the fp32 folder `source` (from `hslm.export.onnx`) into the folder `output`,
    with the same tokenizer and genai_config.json; returns the graph's path."""
    source, output = Path(source), Path(output)
    if not (source / MODEL_FILE).is_file():
        raise OnnxQuantizeError(f"no {MODEL_FILE} in {source}")
    _check_kind(kind)
    graph = onnx.load(source / MODEL_FILE)
    try:
        config = read_config({p.key: p.value for p in graph.metadata_props}, source / MODEL_FILE)
    except OnnxLoadError as err:
        raise OnnxQuantizeError(str(err)) from None
    quantized = quantize_model(graph, kind, config.context_length)
    output.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != MODEL_FILE and item.is_file():
            shutil.copy2(item, output / item.name)
    onnx.save_model(quantized, output / MODEL_FILE)
    return output / MODEL_FILE
