"""llama.cpp's own programs: how long `hslm-native build` takes for x86-64 and aarch64, and
llama-bench against hslm-bench's Python loop on the same GGUF files.

    python benchmarks/native_programs.py [GGUF...] [--fresh DIR] [--threads 2] [--repeat 3]

--fresh DIR builds both arches from scratch into DIR (as CI does with HSLM_LLAMA_CPP_DIR) and
times them; without it the times recorded by the finished builds are reported. Each GGUF is
measured by hslm-bench's own case runner (pp512/tg128 or the model's context) and by
llama-bench with the same lengths and threads.

Writes benchmarks/results/native_programs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from hslm import native
from hslm.bench.llama_bench import run_llama_bench
from hslm.bench.run import plan_case, run_case

RESULTS = Path(__file__).parent / "results"


def build_times(fresh: Path | None, jobs: int) -> dict:
    if fresh is not None:
        os.environ["HSLM_LLAMA_CPP_DIR"] = str(fresh)
    times = {}
    for arch in native.ARCHES:
        start = time.perf_counter()
        native.build(arch, jobs, say=lambda line: None)
        info = native.build_info(arch)
        times[arch] = {"wall_s": round(time.perf_counter() - start, 1) if fresh else info.seconds,
                       "jobs": info.jobs, "programs": info.programs}
    return times


def speed(path: Path, threads: int, repeat: int) -> dict:
    (case,) = plan_case(path)
    ours = run_case(case, threads, repeat, 1, 512, 128, agent=False)
    theirs = run_llama_bench(path, threads, repeat, ours["pp"]["n_prompt"], ours["tg"]["n_gen"])
    mean = statistics.fmean
    return {"file": path.name, "type": case.type, "n_prompt": ours["pp"]["n_prompt"],
            "n_gen": ours["tg"]["n_gen"],
            "hslm": {"pp": mean(ours["pp"]["tokens_per_s"]), "tg": mean(ours["tg"]["tokens_per_s"])},
            "llama-bench": {"pp": mean(theirs["pp"]["tokens_per_s"]),
                            "tg": mean(theirs["tg"]["tokens_per_s"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="*", type=Path)
    parser.add_argument("--fresh", type=Path, metavar="DIR")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "llama_cpp_python": native.llama_cpp_python_version(),
              "build": build_times(args.fresh, args.jobs),
              "speed": [speed(path, args.threads, args.repeat) for path in args.gguf]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "native_programs.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# llama.cpp's own programs", "",
             f"llama-cpp-python {report['llama_cpp_python']}, {report['cpus']} CPUs (shared with "
             "other jobs: times are upper bounds).", "",
             "| build | wall s | jobs | programs |", "|---|---:|---:|---|"]
    lines += [f"| {arch} | {b['wall_s']} | {b['jobs']} | {len(b['programs'])} |"
              for arch, b in report["build"].items()]
    if report["speed"]:
        lines += ["", f"Speed, {args.threads} threads, mean of {args.repeat} runs (tokens/s):", "",
                  "| file | pp hslm | pp llama-bench | tg hslm | tg llama-bench |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {s['file']} (pp{s['n_prompt']}/tg{s['n_gen']}) | {s['hslm']['pp']:.0f} | "
                  f"{s['llama-bench']['pp']:.0f} | {s['hslm']['tg']:.1f} | "
                  f"{s['llama-bench']['tg']:.1f} |" for s in report["speed"]]
    (RESULTS / "native_programs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
