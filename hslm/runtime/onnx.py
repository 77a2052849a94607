"""The ONNX Runtime backend: a folder written by `hslm-export --onnx` run by onnxruntime.

ONNX Runtime computes the logits; sampling, stop handling, streaming and guided decoding are
hslm's own (`hslm.generate`), as on every backend. The keys and values live in one buffer per
layer and tensor, of the context length, allocated once: each step binds it as both the past
input and the present output (IO binding), and the graph's attention writes the new columns
in place, so nothing is copied or allocated per step but the logits. The folder is checked
before it runs: hslm's metadata and version, the graph's inputs, and that its tokenizer is
the one the model was exported with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hslm import __version__
from hslm.config import ConfigError, ModelConfig
from hslm.export.onnx import META_PREFIX, MODEL_FILE, io_names
from hslm.tokenizer import Tokenizer, TokenizerError


class OnnxLoadError(ValueError):
    """A folder ONNX Runtime cannot run as an hslm model (message says why)."""


class OnnxLogits:
    """Next-token logits from an ONNX Runtime session (a logits source, see
    `hslm.generate.TorchLogits`)."""

    def __init__(self, session, config: ModelConfig, context_length: int):
        import onnxruntime as ort

        self.session = session
        self.config = config
        self.context_length = context_length
        self.input_names, self.output_names = io_names(config.n_layers)
        # Every step's mask and positions are slices of these (batch 1, no padding).
        self._mask = np.ones((1, context_length), np.int64)
        self._positions = np.arange(context_length, dtype=np.int64)[None]
        # Past and present share one buffer per layer and tensor, bound once (pasts and
        # presents are in the same layer order); each step rebinds only the token inputs.
        shape = (1, config.n_kv_heads, context_length, config.head_dim)
        self._binding = session.io_binding()
        self._binding.bind_output("logits", "cpu")  # first: get_outputs() keeps binding order
        # Memory owned by ONNX Runtime, held here; columns past the sequence are never read,
        # so it needs no initialisation.
        self._buffers = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32)
                         for _ in self.output_names[1:]]
        for past, present, buffer in zip(self.input_names[3:], self.output_names[1:],
                                         self._buffers):
            self._binding.bind_ortvalue_input(past, buffer)
            self._binding.bind_ortvalue_output(present, buffer)
        self.reset()

    def reset(self) -> None:
        self.length = 0  # columns of the buffers in use

    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self._run(ids)[-1].copy())

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of every position of `ids` from an empty cache (parity)."""
        self.reset()
        return self._run(ids)

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of the ids after those fed so far."""
        total = self.length + len(ids)
        if total > self.context_length:
            raise ValueError(f"sequence of {total} tokens is longer than the context length "
                             f"({self.context_length})")
        binding = self._binding
        binding.bind_cpu_input("input_ids", np.array([list(ids)], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", self._mask[:, :total])
        binding.bind_cpu_input("position_ids", self._positions[:, self.length:total])
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        self.length = total
        return binding.get_outputs()[0].numpy()[0]


# Embedding lookups read one row per token, not the table.
_LOOKUP_OPS = {"Gather", "GatherBlockQuantized"}


def onnx_summary(path: str | Path) -> tuple[str, int]:
    """(the folder's type: fp32, int8 or int4; bytes of the weights decoding reads per token:
    every initializer except tables only looked up). Raises OnnxLoadError."""
    path = Path(path)
    graph = path / MODEL_FILE if path.is_dir() else path
    model = _read_graph(graph)
    metadata = _metadata(model)
    read_config(metadata, graph)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    read = sum(initializer_bytes(tensor) for tensor in model.graph.initializer
               if not (consumers.get(tensor.name) and consumers[tensor.name] <= _LOOKUP_OPS))
    return metadata.get(META_PREFIX + "quantization", "fp32"), read


def initializer_bytes(tensor) -> int:
    """Stored bytes of an ONNX initializer (the 4-bit types packed two to a byte)."""
    import onnx

    count = int(np.prod(tensor.dims, dtype=np.int64))
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _read_graph(graph: Path):
    """The graph's protobuf, without its external weights (nothing runs, nothing else is read)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(graph), load_external_data=False)
    except (OSError, DecodeError) as err:
        raise OnnxLoadError(f"{graph} is not a readable ONNX model: {err}") from None


def _metadata(model) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _check_external_data(model, graph: Path) -> None:
    """Every external weights file the graph names is in its folder, by name (as hslm writes
    them): a graph must not make ONNX Runtime read files from elsewhere."""
    import onnx

    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data
                         if entry.key == "location"), "")
        if not location.strip() or Path(location).is_absolute() or ".." in Path(location).parts:
            raise OnnxLoadError(f"{graph} reads weights from outside its folder: {location!r}")


def _session(graph: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's choice (all cores)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for invalid graphs
        raise OnnxLoadError(f"ONNX Runtime cannot load {graph}: {err}") from None


def read_config(metadata: dict[str, str], graph: Path) -> ModelConfig:
    """The model's config from the graph's metadata_props, after checking they are hslm's."""
    version = metadata.get(META_PREFIX + "version")
    if version is None:
        raise OnnxLoadError(f"{graph} was not exported by hslm (no {META_PREFIX}* metadata); "
                            "export it with hslm-export --onnx")
    if version != __version__:
        raise OnnxLoadError(f"{graph} was exported by hslm {version}, this is hslm "
                            f"{__version__}: export it again with this version")
    try:
        return ModelConfig.from_dict(json.loads(metadata[META_PREFIX + "config"]))
    except (KeyError, json.JSONDecodeError, ConfigError, TypeError) as err:
        raise OnnxLoadError(f"{graph} has no valid model config in its metadata: {err}") from None


def _check_folder(graph: Path, tokenizer: Tokenizer) -> ModelConfig:
    """The model's config, after hslm's checks of the folder: done before ONNX Runtime reads
    the graph and its weights."""
    proto = _read_graph(graph)
    metadata = _metadata(proto)
    config = read_config(metadata, graph)
    _check_external_data(proto, graph)
    if tokenizer.sha256 != metadata.get(META_PREFIX + "tokenizer_sha256"):
        raise OnnxLoadError(f"the tokenizer in {graph.parent} is not the one {graph} was "
                            "exported with (files from another model?)")
    return config


def load_onnx(path: str | Path, threads: int | None = None, context_length: int | None = None
              ) -> tuple[OnnxLogits, Tokenizer]:
    """(logits source, tokenizer) for an ONNX folder (or the model.onnx inside one)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    graph = folder / MODEL_FILE
    if not graph.is_file():
        raise OnnxLoadError(f"no {MODEL_FILE} in {folder}; export one with hslm-export --onnx")
    try:
        tokenizer = Tokenizer.load(folder)
    except TokenizerError as err:
        raise OnnxLoadError(f"{folder} has no usable tokenizer ({err}); export the folder again "
                            "with hslm-export --onnx") from None
    config = _check_folder(graph, tokenizer)
    session = _session(graph, threads)
    expected_inputs, expected_outputs = io_names(config.n_layers)
    if [i.name for i in session.get_inputs()] != expected_inputs or \
            [o.name for o in session.get_outputs()] != expected_outputs:
        raise OnnxLoadError(f"{graph} does not have the inputs and outputs of an hslm graph with "
                            f"{config.n_layers} layers")
    context_length = context_length or config.context_length
    if context_length > config.context_length:
        raise OnnxLoadError(f"a context of {context_length} is longer than the model's "
                            f"{config.context_length}")
    return OnnxLogits(session, config, context_length), tokenizer
