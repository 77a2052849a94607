"""What every hslm command shares: one way to report a user's mistake and to load a model."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes; torch is imported lazily


# Optional packages (top-level module name) -> the pyproject extra that installs them.
EXTRA_OF_MODULE = {
    "datatrove": "data", "orjson": "data", "xxhash": "data", "zstandard": "data",
    "pyarrow": "data", "llama_cpp": "gguf", "gguf": "gguf", "onnx": "onnx",
    "onnxruntime": "onnx", "onnxscript": "onnx", "onnx_ir": "onnx", "onnxruntime_genai": "onnx",
    "transformers": "hf", "jinja2": "hf", "matplotlib": "bench", "jsonschema": "bench",
    "llguidance": "guided", "starlette": "serve", "uvicorn": "serve",
    "lm_eval": "eval", "datasets": "eval",
}


class UsageError(Exception):
    """A mistake in what the user asked for: reported as one line, never as a traceback."""


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def command(main: Callable[..., None]) -> Callable[..., None]:
    """A command's entry point that reports a user's mistake (UsageError) and a missing optional
    package (naming the extra to install) as one line, instead of a traceback."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            fail(str(err))
        except ModuleNotFoundError as err:
            extra = EXTRA_OF_MODULE.get((err.name or "").partition(".")[0])
            if extra is None:
                raise
            fail(f"this needs the optional package {err.name!r}: pip install 'hslm[{extra}]' "
                 "(or 'hslm[all]')")
    return run


def load_model_folder(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) from a model folder, a training checkpoint or a training run."""
    import torch

    from hslm.loader import ModelLoadError, load_torch_model

    try:
        return load_torch_model(path, getattr(torch, dtype))
    except ModelLoadError as err:
        raise UsageError(str(err)) from None
