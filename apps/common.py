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
    """(model, tokenizer) from an hslm model folder (a Hugging Face folder with tokenizer files)."""
    import torch

    from hslm.export.hf import HFFormatError, load_hf
    from hslm.tokenizer import Tokenizer, TokenizerError

    path = Path(path)
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    if not path.is_dir():
        raise UsageError(f"{path} is not a model folder (expected config.json, model.safetensors "
                         "and tokenizer files)")
    try:
        model = load_hf(path, dtype=getattr(torch, dtype)).eval()
        tokenizer = Tokenizer.load(path)
    except (HFFormatError, TokenizerError) as err:
        raise UsageError(str(err)) from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size} embedding rows")
    return model, tokenizer
