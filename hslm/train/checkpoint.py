"""Checkpoints that survive being killed at any moment.

`step_000100.pt` is written to a temporary file, fsynced and atomically renamed; then its
sha256 is written beside it (`.sha256`), which marks it complete. Loading takes the newest
checkpoint whose checksum matches; a truncated or corrupted one is reported and skipped.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from hslm.files import write_atomically

PATTERN = "step_*.pt"


def save_checkpoint(folder: Path, step: int, state: dict, keep_last: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.pt"
    write_atomically(path, lambda f: torch.save(state, f))
    checksum = _sha256(path).encode()
    write_atomically(path.with_name(path.name + ".sha256"), lambda f: f.write(checksum))
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in sorted(folder.glob(PATTERN))[:-keep_last]:
        old.unlink()
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid(path: Path) -> bool:
    checksum = path.with_name(path.name + ".sha256")
    return checksum.is_file() and checksum.read_text().strip() == _sha256(path)


def load_latest(folder: Path) -> dict | None:
    """The newest valid checkpoint's state, or None when there is none."""
    for path in sorted(folder.glob(PATTERN), reverse=True):
        if is_valid(path):
            return torch.load(path, map_location="cpu", weights_only=False)
        print(f"warning: skipping {path}: incomplete or corrupted (checksum mismatch)",
              file=sys.stderr)
    return None
