"""What every hslm command shares: one way to report a user's mistake and to load a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes; torch is imported lazily


class UsageError(Exception):
    """A mistake in what the user asked for: reported as one line, never as a traceback."""


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_model_folder(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) from a model folder, a training checkpoint or a training run."""
    import torch

    from hslm.runtime.torch import ModelLoadError, load_torch_model

    try:
        return load_torch_model(path, getattr(torch, dtype))
    except ModelLoadError as err:
        raise UsageError(str(err)) from None
