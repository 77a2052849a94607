"""Running models: one `Runtime` over the PyTorch, llama.cpp and ONNX Runtime backends."""

from hslm.runtime.engine import Runtime, RuntimeLoadError, load

__all__ = ["Runtime", "RuntimeLoadError", "load"]
