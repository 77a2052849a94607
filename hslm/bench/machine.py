"""What a benchmark needs to know about the machine: CPU and versions, memory bandwidth
(measured, with the benchmark's threads), peak memory of this process, and energy counters
where the machine exposes them (Linux powercap / RAPL), never estimated."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RAPL_ROOT = Path("/sys/class/powercap")
UNAVAILABLE = "unavailable"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Cores, not hardware threads (the default thread count: extra SMT threads slow GEMV)."""
    try:
        pairs = set()
        core = package = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                package = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                pairs.add((package, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def machine_info() -> dict:
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__}
    for module in ("llama_cpp", "onnxruntime"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "system": f"{platform.system()} {platform.release()}", "versions": versions}


def memory_bandwidth_gbs(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Streaming-read bandwidth in GB/s: the best of `repeats` sums over `gib` GiB of float32
    with `threads` threads (how decode reads weights)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
        data.sum()  # touch every page first
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            data.sum()
            best = min(best, time.perf_counter() - start)
        return data.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EnergyMeter:
    """Package energy from RAPL counters (Linux powercap), in joules; `available` is False
    where none is readable (VMs, most containers), and then nothing is reported.

    `start()` returns a reading, `joules_since(reading)` the energy used since; a counter that
    wrapped around (at its max_energy_range_uj) in between is unwrapped."""

    def __init__(self):
        self.counters = sorted(RAPL_ROOT.glob("intel-rapl:[0-9]*/energy_uj")) \
            if RAPL_ROOT.is_dir() else []
        self.available = bool(self.counters) and all(os.access(c, os.R_OK) for c in self.counters)
        self.ranges = [int((c.parent / "max_energy_range_uj").read_text())
                       for c in self.counters] if self.available else []

    def start(self) -> list[int]:
        return [int(counter.read_text()) for counter in self.counters]

    def joules_since(self, reading: list[int]) -> float:
        total = 0
        for before, after, wrap in zip(reading, self.start(), self.ranges):
            total += after - before if after >= before else after + wrap - before
        return total / 1e6

    def idle_watts(self, seconds: float = 1.0) -> float:
        reading = self.start()
        time.sleep(seconds)
        return self.joules_since(reading) / seconds
