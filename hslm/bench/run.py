"""hslm-bench's plan: which cases to run, each in its own process, and the numbers that
come from the files rather than from timing (size on disk, bytes read per token).

A case is one model file or folder run by one backend: PyTorch (eager, or compiled with
`torch.compile`), llama.cpp (GGUF) or ONNX Runtime (an ONNX folder). The size sweep builds
random-weight models of larger Gemma 3 shapes (`hindi-1b`, `hindi-4b`) and runs them as
4-bit GGUF, to show how latency and memory grow with size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


class BenchError(ValueError):
    """A case that cannot be planned or run (message says why)."""


@dataclass
class Case:
    path: Path
    backend: str  # "torch", "torch-compiled", "llama.cpp" or "onnx"
    type: str  # fp32, f16, q8_0, q4, int4...
    weight_bytes: int  # what decoding one token reads: every weight once (tied head included)
    file_bytes: int
    parameters: int | None = None
    label: str = ""

    def name(self) -> str:
        return self.label or f"{self.backend} {self.type}"


def plan_case(path: str | Path, compiled: bool = False) -> list[Case]:
    """The cases for one artifact (a model folder gives eager and, if asked, compiled)."""
    from hslm.runtime.engine import is_gguf, is_onnx_path

    path = Path(path)
    if not path.exists():
        raise BenchError(f"not found: {path}")
    if is_gguf(path):
        from hslm.runtime.llama_cpp import GGUFLoadError, gguf_summary

        try:
            file_type, tensor_bytes = gguf_summary(path)
        except GGUFLoadError as err:
            raise BenchError(str(err)) from None
        return [Case(path, "llama.cpp", file_type, tensor_bytes, path.stat().st_size)]
    if is_onnx_path(path):
        from hslm.runtime.onnx import OnnxLoadError, onnx_summary

        try:
            file_type, weight_bytes = onnx_summary(path)
        except OnnxLoadError as err:
            raise BenchError(str(err)) from None
        folder = path if path.is_dir() else path.parent
        size = sum(p.stat().st_size for p in folder.glob("*.onnx*"))
        return [Case(folder, "onnx", file_type, weight_bytes, size)]
    folder = path / "model" if (path / "model").is_dir() else path
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise BenchError(f"{path} is neither a GGUF file, an ONNX folder nor a model folder "
                         "(no *.safetensors)")
    from safetensors import safe_open

    parameters = 0
    for file in weights:
        with safe_open(file, "pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a dict)
                parameters += _numel(tensors.get_slice(name).get_shape())
    size = sum(f.stat().st_size for f in weights)
    backends = ["torch", "torch-compiled"] if compiled else ["torch"]
    return [Case(folder, b, "fp32", parameters * 4, size, parameters) for b in backends]


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def run_case(case: Case, threads: int, repeat: int, warmup: int, n_prompt: int, n_gen: int,
             agent: bool, timeout: float = 3600) -> dict:
    """Measure one case in a fresh process (`hslm.bench.measure`)."""
    spec = {"path": str(case.path.resolve()), "backend": case.backend, "threads": threads,
            "repeat": repeat, "warmup": warmup, "n_prompt": n_prompt, "n_gen": n_gen,
            "agent": agent}
    # Run from a neutral folder: `python -m` puts the working directory first on sys.path,
    # and a source checkout there would shadow the installed package.
    done = subprocess.run([sys.executable, "-m", "hslm.bench.measure", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"{case.name()} ({case.path}) failed: {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "name": case.name(), "type": case.type, "file_bytes": case.file_bytes,
            "weight_bytes": case.weight_bytes, "parameters": case.parameters}


def size_model_case(preset: str, tokenizer_dir: Path, folder: Path) -> Case:
    """A random-weight model of a Gemma 3 preset as a 4-bit GGUF case (the file is cached in
    `folder`). The vocabulary is the given tokenizer's; the body is the preset's."""
    import torch

    from hslm.config import ModelConfig
    from hslm.export.gguf import write_gguf
    from hslm.model import Gemma3
    from hslm.quant.llama_cpp import quantize_gguf
    from hslm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_dir)
    config = ModelConfig.preset(preset, vocab_size=tokenizer.vocab_size)
    target = folder / f"{preset}-v{tokenizer.vocab_size}-q4.gguf"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: a 4B model fits in 8 GB
        try:
            with torch.no_grad():
                model = Gemma3(config).eval()
        finally:
            torch.set_default_dtype(previous)
        f16 = write_gguf(model, tokenizer, folder / f"{preset}-f16.gguf", "f16")
        del model
        quantize_gguf(f16, target, "q4")
        f16.unlink()
    (case,) = plan_case(target)
    case.parameters = config.param_counts()["total"]
    case.label = f"{preset} (random) llama.cpp q4"
    return case
