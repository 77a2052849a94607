"""A PyTorch model and its tokenizer from whatever hslm wrote (used by training's init_from,
the PyTorch runtime and the commands, so it sits below all of them).

Accepted: a model folder (Hugging Face layout with tokenizer files, as hslm-train and
hslm-export write), a training checkpoint (`step_*.pt`), or a training run / checkpoints
folder (its newest valid checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hslm.model import Gemma3
from hslm.tokenizer import Tokenizer, TokenizerError


class ModelLoadError(ValueError):
    """The path holds no model hslm can load (message says why)."""


def load_torch_model(path: str | Path, dtype: torch.dtype = torch.float32
                     ) -> tuple[Gemma3, Tokenizer]:
    from hslm.export.hf import CONFIG_FILE, HFFormatError, load_hf
    from hslm.train.checkpoint import (CheckpointError, is_checkpoint_path, load_checkpoint,
                                       model_from_checkpoint)

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    try:
        if is_checkpoint_path(path) and not (path / CONFIG_FILE).is_file():
            model, tokenizer = model_from_checkpoint(load_checkpoint(path))
            model = model.to(dtype)
        elif path.is_dir():
            model, tokenizer = load_hf(path, dtype=dtype).eval(), Tokenizer.load(path)
        else:
            raise ModelLoadError(f"{path} is neither a model folder (config.json, "
                                 "model.safetensors, tokenizer files) nor a checkpoint (.pt)")
    except (HFFormatError, TokenizerError, CheckpointError) as err:
        raise ModelLoadError(str(err)) from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ModelLoadError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                             f"only {model.config.vocab_size} embedding rows")
    return model, tokenizer
