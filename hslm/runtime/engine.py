"""One object for every backend: load a model from whatever path hslm wrote, then generate,
stream or chat with the same sampling and guided decoding everywhere.

    from hslm.runtime import load
    runtime = load("runs/demo/train/model")          # or model-q4.gguf, or an ONNX folder
    runtime.chat([{"role": "user", "content": "भारत की राजधानी?"}],
                 json_schema={"type": "object", ...}).text

Backends are logits sources (see `hslm.generate.TorchLogits`); the decode loop, sampling,
stop handling, streaming and guided decoding are hslm's own, so they behave the same.
A runtime generates one answer at a time (its KV cache is its state); `lock` serialises
callers that share it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hslm.export.onnx import GENAI_CONFIG_FILE
from hslm.export.onnx import MODEL_FILE as ONNX_MODEL_FILE
from hslm.generate import Generation, SamplingParams, TorchLogits, stream
from hslm.runtime.guided import Guide, grammar_for


GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    """A GGUF file, by its magic bytes (whatever its name)."""
    if not path.is_file():
        return False
    with open(path, "rb") as file:
        return file.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def is_onnx_path(path: Path) -> bool:
    """An ONNX folder (model.onnx and genai_config.json, as hslm-export --onnx writes) or an
    .onnx file."""
    return path.suffix == ".onnx" or any((path / name).is_file()
                                         for name in (ONNX_MODEL_FILE, GENAI_CONFIG_FILE))


class RuntimeLoadError(ValueError):
    """Nothing hslm can run at the given path (message says why)."""


@dataclass
class Runtime:
    backend: str  # "torch", "llama.cpp" or "onnx"
    source: object  # a logits source
    tokenizer: object
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def context_length(self) -> int:
        return self.source.context_length

    def guide(self, json_schema=None, regex=None, grammar=None) -> Guide | None:
        """A fresh guide for one generation, or None without a constraint. Raises GuideError
        for an invalid or unsatisfiable constraint, before any token is generated."""
        if json_schema is None and regex is None and grammar is None:
            return None
        return Guide(self.tokenizer, grammar_for(json_schema, regex, grammar))

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """The prompt ids of a conversation: control ids from the template, messages as text."""
        return self.tokenizer.encode_chat(messages)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               add_bos: bool = True, result: Generation | None = None, json_schema=None,
               regex=None, grammar=None) -> Iterator[str]:
        guide = self.guide(json_schema, regex, grammar)
        yield from stream(self.source, self.tokenizer, prompt, params, add_bos, result, guide)

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 **options) -> Generation:
        result = Generation(text="")
        for _ in self.stream(prompt, params, result=result, **options):
            pass
        return result

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None,
             **options) -> Generation:
        """The model's next turn after `messages` (Gemma chat format)."""
        return self.generate(self.encode_chat(messages), params, **options)

    def chat_stream(self, messages: Sequence[dict], params: SamplingParams | None = None,
                    **options) -> Iterator[str]:
        return self.stream(self.encode_chat(messages), params, **options)


def load(path: str | Path, *, threads: int | None = None, dtype: str = "float32",
         device: str = "cpu", context_length: int | None = None,
         all_logits: bool = False) -> Runtime:
    """A runtime for a model folder / checkpoint / training run (PyTorch), a `.gguf` file
    (llama.cpp) or an ONNX folder (ONNX Runtime). `context_length` sizes the KV cache of
    llama.cpp and ONNX Runtime (default: the model's; for GGUF at most 4,096). `all_logits`
    makes llama.cpp keep every position's logits, which `source.all_logits(ids)` (scoring)
    needs there; the other backends always can."""
    import torch

    path = Path(path)
    if not path.exists():
        raise RuntimeLoadError(f"model not found: {path}")
    if path.suffix == ".gguf" or is_gguf(path) or is_onnx_path(path):
        # Beside llama.cpp's or ONNX Runtime's threads, torch only samples and applies guided
        # masks: a second thread pool there costs far more than it saves (on busy cores a
        # 50k-vocab mask took 40-80 ms with 2 torch threads, 0.1 ms with one).
        torch.set_num_threads(1)
    if path.suffix == ".gguf" or is_gguf(path):
        from hslm.runtime.llama_cpp import GGUFLoadError, load_gguf

        try:
            source, tokenizer = load_gguf(path, threads=threads, context_length=context_length,
                                          all_logits=all_logits)
        except GGUFLoadError as err:
            raise RuntimeLoadError(str(err)) from None
        return Runtime("llama.cpp", source, tokenizer, path.stem)
    if is_onnx_path(path):
        from hslm.runtime.onnx import OnnxLoadError, load_onnx

        try:
            source, tokenizer = load_onnx(path, threads=threads, context_length=context_length)
        except OnnxLoadError as err:
            raise RuntimeLoadError(str(err)) from None
        folder = path if path.is_dir() else path.parent
        return Runtime("onnx", source, tokenizer, folder.name)
    from hslm.loader import ModelLoadError, load_torch_model

    if threads:
        torch.set_num_threads(threads)
    try:
        model, tokenizer = load_torch_model(path, getattr(torch, dtype))
    except ModelLoadError as err:
        raise RuntimeLoadError(str(err)) from None
    return Runtime("torch", TorchLogits(model.to(device)), tokenizer, path.name)
