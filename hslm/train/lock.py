"""One run per output folder: `OUT/run.lock` names the process (pid and host) that owns it.

A second run on the same folder would write the same temporary checkpoint files, prune the
first run's checkpoints and interleave its metrics, so it is refused. A lock left by a process
that no longer runs on this host (killed, crashed) is taken over with a warning; one from
another host cannot be checked from here and is refused (delete it once that run is gone).
Under DDP the run's rank 0 holds the lock for all its ranks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "run.lock"


class LockError(RuntimeError):
    """The output folder belongs to another run (message says which)."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """Held from `acquire` until `release`."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}

    def acquire(self) -> RunLock:
        for _ in range(3):  # a lost race with another run taking over the same stale lock
            if self._create():
                return self
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile
            pid, host = holder.get("pid"), holder.get("host")
            if host != self.owner["host"]:
                raise LockError(f"{self.path.parent} is used by process {pid} on host {host} "
                                f"({self.path}); use another out=..., or delete the lock file "
                                "if that run is gone")
            if isinstance(pid, int) and _running(pid) and pid != self.owner["pid"]:
                raise LockError(f"{self.path.parent} is used by another run (process {pid}, "
                                f"{self.path}); wait for it to end or use another out=...")
            print(f"warning: taking over {self.path} of process {pid}, which no longer runs",
                  file=sys.stderr)
            self.path.unlink(missing_ok=True)
        raise LockError(f"could not take {self.path}: other runs keep taking it")

    def _create(self) -> bool:
        """Create the lock file with its content in one step (a crash never leaves it empty)."""
        tmp = self.path.with_name(f"{LOCK_FILE}.{self.owner['pid']}.tmp")
        tmp.write_text(json.dumps(self.owner) + "\n", encoding="utf-8")
        try:
            os.link(tmp, self.path)  # fails if the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"pid": None, "host": self.owner["host"]}  # not hslm's content: stale
        return holder if isinstance(holder, dict) else {"pid": None, "host": self.owner["host"]}

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == self.owner["pid"] and \
                holder.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)
