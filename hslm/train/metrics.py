"""Training metrics: JSON lines that survive a crash, FLOPs per token and MFU.

Rank 0 writes the global metrics to OUT/metrics.jsonl; every rank writes its own
OUT/logs/rank_N.jsonl. Each record is flushed and fsynced, so a killed run loses at most the
record being written. A resumed run first drops the records after the step it resumes from
(written after that checkpoint, they are written again), so every step appears once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from hslm.config import ConfigError, ModelConfig
from hslm.files import write_atomically

# Dense bf16/fp16 tensor-core peaks in TFLOPS, matched against torch.cuda.get_device_name().
# More specific names first ("H100 PCIe" before "H100").
GPU_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("A30", 165.0), ("A10G", 125.0), ("A10", 125.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("V100", 125.0), ("T4", 65.0), ("B200", 2250.0),
)


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 per weight in a matrix multiply,
    including the output head, plus attention scores and values over the keys each layer sees
    (the window on sliding layers), counted as nanoGPT/nanochat do."""
    head_dims = config.n_heads * config.head_dim
    # The output head multiplies whether tied or not; the input embedding is a lookup.
    matmul_weights = config.param_counts()["non_embedding"] + config.hidden_size * config.vocab_size
    attention = sum(12 * head_dims * (min(seq_len, config.sliding_window)
                                      if kind == "sliding_attention" else seq_len)
                    for kind in config.layer_types)
    return 6 * matmul_weights + attention


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """This device's matmul throughput in the training dtype, measured (for CPUs, which have
    no datasheet peak that applies to PyTorch)."""
    size = 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e12


def peak_tflops(device: torch.device, dtype: torch.dtype, configured: float = 0.0) -> float | None:
    """The per-device peak MFU is measured against: the configured value, the GPU table, or a
    measurement on CPU. None for a GPU that is not in the table (MFU is then not reported)."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in GPU_PEAK_TFLOPS if key in name), None)
    return measure_peak_tflops(device, dtype)


def drop_records_after(path: Path, step: int) -> None:
    """Keep the records of `path` up to `step` (and no line a kill left half-written)."""
    if not path.is_file():
        return

    def kept(file) -> None:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    file.write(line.encode("utf-8"))

    write_atomically(path, kept)


class MetricsLog:
    """Appends records from `resume_step` on (a context manager closing the files)."""

    def __init__(self, out: Path, rank: int, tensorboard: bool = False, resume_step: int = 0):
        (out / "logs").mkdir(parents=True, exist_ok=True)
        paths = [out / "logs" / f"rank_{rank}.jsonl"]
        self.main = rank == 0
        if self.main:
            paths.insert(0, out / "metrics.jsonl")
        for path in paths:
            drop_records_after(path, resume_step)
        self.files = [open(path, "a", encoding="utf-8") for path in paths]
        self.tensorboard = None
        if tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package "
                                  "(pip install tensorboard)") from None
            self.tensorboard = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict, local: dict | None = None) -> None:
        """`record` is global (rank 0's metrics.jsonl); `local` adds this rank's own numbers."""
        lines = [record] if self.main else []
        lines.append({**record, **(local or {})})
        for file, line in zip(self.files, lines):
            file.write(json.dumps(line, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        for file in self.files:
            file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
