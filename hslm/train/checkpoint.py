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

FSDP runs write sharded checkpoints, folders `step_000100.dcp`: every rank writes its shards
of the model and optimizer state through torch.distributed.checkpoint (DCP) into
`step_000100.dcp.tmp`; rank 0 adds `state.pt` (everything else, as in a `.pt` checkpoint) and
`manifest.json` (the sha256 of every file), fsyncs and renames the folder. A folder whose files
do not match its manifest exactly is incomplete or corrupted. DCP holds tensors only, and
reshards on load: a checkpoint of N ranks resumes on any number of ranks, or loads in one
process. DCP reads its index, `.metadata`, with plain pickle: before it does, the index is
read here by an unpickler that knows DCP's metadata classes only, and every shard it names
must be a file of the folder, so a crafted index is refused before anything in it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path

import torch

from hslm.files import write_atomically

PATTERN = "step_*"
NAME = re.compile(r"step_(\d+)\.(pt|dcp)")
BEST = "best.json"
MANIFEST = "manifest.json"
DCP_INDEX = ".metadata"
SHARDED_STATE = "state.pt"  # in a .dcp folder: all but the model's and optimizer's tensors


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
    _keep(folder, step, path, keep_last, val_loss)
    return path


def save_sharded_checkpoint(folder: Path, step: int, state: dict, model, optimizer,
                            is_main: bool, keep_last: int, val_loss: float | None = None) -> Path:
    """Every rank calls this: the model's and optimizer's shards go through DCP, `state` (the
    rest) is written by rank 0. Errors as save_checkpoint's (an OSError, nothing left behind)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    path = folder / f"step_{step:06d}.dcp"
    partial = path.with_name(path.name + ".tmp")
    try:
        try:
            dcp.save(_sharded_tensors(model, optimizer)[0], checkpoint_id=partial)
        except CheckpointException as err:  # a BaseException: carries each rank's error
            errors = [e for e in err.failures.values() if isinstance(e, OSError)]
            raise (errors[0] if errors else OSError(str(err).splitlines()[0])) from None
        if not is_main:
            return path
        write_atomically(partial / SHARDED_STATE, lambda f: torch.save(state, f))
        manifest = {file.name: _sha256(file) for file in sorted(partial.iterdir())}
        text = json.dumps(manifest, indent=1).encode()
        write_atomically(partial / MANIFEST, lambda f: f.write(text))
        _fsync_dir(partial)
        os.replace(partial, path)
    except OSError:
        if is_main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    _keep(folder, step, path, keep_last, val_loss)
    return path


def _sharded_tensors(model, optimizer=None) -> tuple[dict, dict | None]:
    """({"model": ..., "optimizer": ...} as DCP saves and loads them, the optimizer's full state
    dict or None): parameters by name (sharded DTensors under FSDP) and the optimizer's tensors
    by parameter name. Its param_groups (plain values) stay out: the loop sets them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}, None
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state["state"]}, optimizer_state


def load_sharded(path: str | Path, model, optimizer=None) -> None:
    """Load a .dcp checkpoint's weights (and optimizer state) into `model` (and `optimizer`),
    resharded to however `model` is split now (over any number of ranks, or none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    tensors, optimizer_state = _sharded_tensors(model, optimizer)
    with warnings.catch_warnings():  # without a process group DCP loads in this process alone
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(tensors, checkpoint_id=path)  # into the tensors of `tensors`, in place
    if optimizer is None:
        set_model_state_dict(model, tensors["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=tensors["model"],
                       optim_state_dict=optimizer_state)


def _keep(folder: Path, step: int, path: Path, keep_last: int, val_loss: float | None) -> None:
    """Record `path` (complete) as best if its `val_loss` is, and delete the checkpoints beyond
    the newest `keep_last` but the best."""
    best = best_checkpoint(folder)
    if val_loss is not None and (best is None or val_loss < best["val_loss"]):
        best = {"step": step, "val_loss": val_loss, "file": path.name}
        text = json.dumps(best).encode()
        write_atomically(folder / BEST, lambda f: f.write(text))
    _fsync_dir(folder)
    keep = {best["file"]} if best else set()
    for old in checkpoint_files(folder)[:-keep_last]:
        if old.name not in keep:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
                old.with_name(old.name + ".sha256").unlink(missing_ok=True)


def checkpoint_files(folder: Path) -> list[Path]:
    """The `step_N.pt` files and `step_N.dcp` folders in `folder`, oldest first by N (not by
    name: names grow a digit at 1,000,000 steps)."""
    steps = {}
    for path in folder.glob(PATTERN):
        match = NAME.fullmatch(path.name)
        if match:
            steps[path] = int(match.group(1))
    return sorted(steps, key=steps.get)


def remove_partial_writes(folder: Path) -> None:
    """Delete temporary files and folders a killed run left half-written (call with the run's
    lock held)."""
    for tmp in folder.glob("*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
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
    return _damage(path) is None


def _damage(path: Path) -> str | None:
    """Why the checkpoint `path` is incomplete or corrupted, or None when it is complete."""
    if path.is_dir():
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            return f"no {MANIFEST} (an unfinished write)"
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            return f"unreadable {MANIFEST}: {err}"
        if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
            return f"{MANIFEST} is not a map of file names to checksums"
        present = {file.name for file in path.iterdir()} - {MANIFEST}
        if present != set(manifest):  # names are compared, never opened from the manifest
            missing, extra = sorted(set(manifest) - present), sorted(present - set(manifest))
            return f"files {missing} missing, {extra} not in {MANIFEST}"
        for name in sorted(present):
            if _sha256(path / name) != manifest[name]:
                return f"{name} does not match its checksum in {MANIFEST}"
        return None
    checksum = path.with_name(path.name + ".sha256")
    if not checksum.is_file():
        return f"no {checksum.name}"
    if checksum.read_text().strip() != _sha256(path):
        return "checksum mismatch"
    return None


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


# Globals a DCP index may name besides the classes of torch.distributed.checkpoint.metadata and
# torch's dtypes (all data, constructed without running anything else).
INDEX_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                 ("torch.serialization", "_get_layout"), ("torch", "Size"),
                 ("pathlib", "PosixPath")}


class _IndexUnpickler(pickle.Unpickler):
    """Constructs DCP's metadata (dataclasses, sizes, dtypes, layouts, paths), nothing else."""

    def find_class(self, module: str, name: str):
        import torch.distributed.checkpoint.metadata as dcp_metadata

        if (module, name) in INDEX_GLOBALS \
                or module == dcp_metadata.__name__ \
                and isinstance(getattr(dcp_metadata, name, None), type) \
                or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def _check_index(path: Path) -> None:
    """Refuse a .dcp folder whose index holds other objects than DCP's metadata or names shard
    files that are not files of the folder."""
    try:
        with open(path / DCP_INDEX, "rb") as file:
            index = _IndexUnpickler(file).load()
        names = {info.relative_path for info in index.storage_data.values()}
    except (pickle.UnpicklingError, AttributeError, EOFError, OSError, TypeError,
            ValueError) as err:
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CheckpointError(f"refusing {path}: its {DCP_INDEX} is not DCP's metadata alone "
                              f"({detail})") from None
    outside = sorted(str(name) for name in names if not isinstance(name, str)
                     or Path(name).name != name or not (path / name).is_file())
    if outside:
        raise CheckpointError(f"refusing {path}: its {DCP_INDEX} names shards outside the "
                              f"folder: {outside[:3]}")


def load_latest(folder: Path) -> dict | None:
    """The newest valid checkpoint's state, or None when there is none. Raises CheckpointError
    for a complete checkpoint that is refused (see `_load`). The state of a .dcp checkpoint
    holds no model or optimizer: its "sharded" names the folder to `load_sharded` them from."""
    for path in reversed(checkpoint_files(folder)):
        damage = _damage(path)
        if damage is None:
            return _load_any(path)
        print(f"warning: skipping {path}: incomplete or corrupted ({damage})", file=sys.stderr)
    return None


def _load_any(path: Path) -> dict:
    if not path.is_dir():
        return _load(path)
    _check_index(path)
    state = _load(path / SHARDED_STATE)
    state["sharded"] = str(path)
    return state


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file, or the newest valid one in a checkpoints folder or training run."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and NAME.fullmatch(path.name)):
        damage = _damage(path)
        if damage is not None:
            raise CheckpointError(f"{path} is incomplete or corrupted: {damage}")
        return _load_any(path)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    state = load_latest(folder) if folder.is_dir() else None
    if state is None:
        raise CheckpointError(f"no valid checkpoint in {path}")
    return state


def is_checkpoint_path(path: str | Path) -> bool:
    """Whether `path` names a checkpoint file, a checkpoints folder or a training run."""
    path = Path(path)
    if path.is_dir():
        return (path / "checkpoints").is_dir() or bool(NAME.fullmatch(path.name)) \
            or bool(checkpoint_files(path))
    return path.suffix == ".pt"


def model_from_state(state: dict):
    """The Gemma3 of a checkpoint's state (checkpoints carry their model config)."""
    from hslm.config import ModelConfig
    from hslm.model import Gemma3

    model = Gemma3(ModelConfig.from_dict(state["model_config"]))
    if "sharded" in state:
        load_sharded(state["sharded"], model)
    else:
        model.load_state_dict(state["model"])
    return model


def model_from_checkpoint(state: dict):
    """(Gemma3 in eval mode, Tokenizer) from a checkpoint's state: checkpoints carry their
    tokenizer too, so they load without the run's other files."""
    from hslm.tokenizer import Tokenizer

    return model_from_state(state).eval(), Tokenizer(state["tokenizer_model"])
