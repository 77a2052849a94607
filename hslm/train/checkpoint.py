"""Checkpoints that survive being killed at any moment.

`step_000100.pt` is written to a temporary file, fsynced and atomically renamed; then its
sha256 is written beside it (`.sha256`), which marks it complete. Loading takes the newest
checkpoint whose checksum matches; a truncated or corrupted one is reported and skipped.
The newest `keep_last` are kept, plus the one with the best validation loss (`best.json`).
Checkpoints are ordered by the step number in their names, so any step count sorts right.

A checkpoint holds tensors and plain Python values only (dicts, lists, numbers, strings,
bytes) and is read with `torch.load(weights_only=True)`: a file that carries any other Python
object, which unpickling would construct or call, is refused before anything in it runs. The
`.sha256` proves a file is complete, not who made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
import warnings
from pathlib import Path

import torch

from hslm.files import write_atomically

PATTERN = "step_*.pt"
NAME = re.compile(r"step_(\d+)\.pt")
BEST = "best.json"


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for (message says why)."""


def save_checkpoint(folder: Path, step: int, state: dict, keep_last: int,
                    val_loss: float | None = None) -> Path:
    """Write the checkpoint of `step`; `val_loss` (measured at this step) competes for best.
    On a write error (a full disk) nothing of this step is left behind, the previous
    checkpoints stay as they were, and the OSError is raised."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.pt"
    checksum_path = path.with_name(path.name + ".sha256")
    try:
        write_atomically(path, lambda f: torch.save(state, f))
        checksum = _sha256(path).encode()
        write_atomically(checksum_path, lambda f: f.write(checksum))
    except OSError:
        checksum_path.unlink(missing_ok=True)
        path.unlink(missing_ok=True)  # without its checksum it is not a checkpoint
        raise
    best = best_checkpoint(folder)
    if val_loss is not None and (best is None or val_loss < best["val_loss"]):
        best = {"step": step, "val_loss": val_loss, "file": path.name}
        text = json.dumps(best).encode()
        write_atomically(folder / BEST, lambda f: f.write(text))
    _fsync_dir(folder)
    keep = {best["file"]} if best else set()
    for old in checkpoint_files(folder)[:-keep_last]:
        if old.name not in keep:
            old.unlink()
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def checkpoint_files(folder: Path) -> list[Path]:
    """The `step_N.pt` files in `folder`, oldest first by N (not by name: names grow a digit at
    1,000,000 steps)."""
    steps = {}
    for path in folder.glob(PATTERN):
        match = NAME.fullmatch(path.name)
        if match:
            steps[path] = int(match.group(1))
    return sorted(steps, key=steps.get)


def remove_partial_writes(folder: Path) -> None:
    """Delete temporary files a killed run left half-written (call with the run's lock held)."""
    for tmp in folder.glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def best_checkpoint(folder: Path) -> dict | None:
    """{"step", "val_loss", "file"} of the best checkpoint so far, or None."""
    try:
        return json.loads((folder / BEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid(path: Path) -> bool:
    checksum = path.with_name(path.name + ".sha256")
    return checksum.is_file() and checksum.read_text().strip() == _sha256(path)


def _load(path: Path) -> dict:
    try:
        with warnings.catch_warnings():  # a file that is refused anyway gets one line, not two
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # PyTorch's message advises weights_only=False; keep only the line naming the object.
        found = [line.strip() for line in str(err).splitlines()
                 if "GLOBAL" in line or "Unsupported" in line]
        detail = f" ({found[0][:200]})" if found else ""
        raise CheckpointError(f"refusing {path}: it holds Python objects or code besides "
                              f"tensors and plain values, which hslm's checkpoints never do"
                              f"{detail}") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an hslm checkpoint (holds a {type(state).__name__})")
    return state


def load_latest(folder: Path) -> dict | None:
    """The newest valid checkpoint's state, or None when there is none. Raises CheckpointError
    for a complete checkpoint that is refused (see `_load`)."""
    for path in reversed(checkpoint_files(folder)):
        if is_valid(path):
            return _load(path)
        print(f"warning: skipping {path}: incomplete or corrupted (checksum mismatch)",
              file=sys.stderr)
    return None


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file, or the newest valid one in a checkpoints folder or training run."""
    path = Path(path)
    if path.is_file():
        if not is_valid(path):
            raise CheckpointError(f"{path} is incomplete or corrupted (checksum mismatch or no "
                                  f"{path.name}.sha256)")
        return _load(path)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    state = load_latest(folder) if folder.is_dir() else None
    if state is None:
        raise CheckpointError(f"no valid checkpoint in {path}")
    return state


def is_checkpoint_path(path: str | Path) -> bool:
    """Whether `path` names a checkpoint file, a checkpoints folder or a training run."""
    path = Path(path)
    if path.is_dir():
        return (path / "checkpoints").is_dir() or any(path.glob(PATTERN))
    return path.suffix == ".pt"


def model_from_state(state: dict):
    """The Gemma3 of a checkpoint's state (checkpoints carry their model config)."""
    from hslm.config import ModelConfig
    from hslm.model import Gemma3

    model = Gemma3(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model


def model_from_checkpoint(state: dict):
    """(Gemma3 in eval mode, Tokenizer) from a checkpoint's state: checkpoints carry their
    tokenizer too, so they load without the run's other files."""
    from hslm.tokenizer import Tokenizer

    return model_from_state(state).eval(), Tokenizer(state["tokenizer_model"])
