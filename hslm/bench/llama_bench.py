"""llama.cpp's own `llama-bench` on a GGUF file, beside hslm-bench's figures for the same
file: what hslm's Python decode loop costs (or gains) against llama.cpp itself.

Runs only when `hslm-native build` has built the programs for this machine; the prompt and
generation lengths are the ones hslm-bench measured (pp512/tg128, or less for a model whose
context is shorter), llama-bench's other settings are its defaults (F16 KV cache).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hslm import native


def available() -> bool:
    return native.programs(needed=["llama-bench"]) is not None


def run_llama_bench(path: Path, threads: int, repeat: int, n_prompt: int, n_gen: int,
                    timeout: float = 3600) -> dict:
    """{"pp": {"n_prompt", "tokens_per_s"}, "tg": {"n_gen", "tokens_per_s"}} with llama-bench's
    per-run samples. Raises native.NativeBuildError when the program is missing or fails."""
    args = native.command("llama-bench", "-m", str(path), "-t", str(threads), "-r", str(repeat),
                          "-p", str(n_prompt), "-n", str(n_gen), "-o", "json")
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise native.NativeBuildError(f"llama-bench failed on {path}: {last}")
    rows = json.loads(done.stdout)
    pp = next(r for r in rows if r["n_prompt"] == n_prompt and r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_gen"] == n_gen and r["n_prompt"] == 0)
    return {"pp": {"n_prompt": n_prompt, "tokens_per_s": pp["samples_ts"]},
            "tg": {"n_gen": n_gen, "tokens_per_s": tg["samples_ts"]},
            "build": rows[0].get("build_commit", "")}
