"""The motivation table: hslm-eval's task scores beside hslm-bench's costs, per artifact.

    python benchmarks/eval_report.py --eval runs/demo/eval/results.json \
        --bench runs/demo/report/bench/bench.json --output benchmarks/results/eval_demo

Artifacts are matched by their path (resolved), else by file/folder name. Writes report.md
(one row per artifact: headline score of every task, its change from the first artifact —
the reference, normally fp32 — and TTFT, TPOT, tokens/s, peak memory, bytes per token, energy)
and report.png (each task's score against bytes read per token).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hslm.bench.report import UNAVAILABLE
from hslm.eval.run import HEADLINE

LOWER_IS_BETTER = {"bits_per_byte", "byte_perplexity"}


def read_json(path: Path):
    return json.loads(path.read_text())


def bench_case(cases: list[dict], artifact: str) -> dict | None:
    resolved = Path(artifact).resolve()
    for case in cases:
        if Path(case["path"]).resolve() == resolved:
            return case
    return next((case for case in cases if Path(case["path"]).name == resolved.name), None)


def cost_cells(case: dict | None) -> list[str]:
    if case is None:
        return ["not benchmarked"] + [""] * 6
    d = case["derived"]
    ttft = f"{d['ttft_ms']['p50']:.1f}" if "ttft_ms" in d else UNAVAILABLE
    joules = d["joules_per_token"]
    energy = UNAVAILABLE if joules == UNAVAILABLE else f"{joules[0]:.4f}"
    return [case["name"], ttft, f"{d['tpot_ms']['p50']:.2f}", f"{d['tg_tokens_per_s'][0]:.0f}",
            f"{case['peak_rss_mb']:.0f}", f"{d['bytes_per_token'] / 1e6:.2f}", energy]


def render(evals: list[dict], cases: list[dict]) -> str:
    tasks = [t for t in HEADLINE if any(t in e["tasks"] for e in evals)]
    reference = evals[0]["tasks"]
    header = ["artifact", *(f"{t} {HEADLINE[t]}" for t in tasks), "bench case", "TTFT p50 ms",
              "TPOT p50 ms", "tg tok/s", "peak RSS MB", "bytes/token MB", "J/token"]
    lines = ["# Accuracy against cost, per artifact", "",
             "Task scores from hslm-eval (change from the first row in brackets; "
             + ", ".join(sorted(LOWER_IS_BETTER)) + ": lower is better), costs from "
             "hslm-bench on the same files.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for result in evals:
        cells = [Path(result["artifact"]).name]
        for task in tasks:
            metric = HEADLINE[task]
            value = result["tasks"].get(task, {}).get(metric)
            base = reference.get(task, {}).get(metric)
            if value is None:
                cells.append("—")
            elif result is evals[0] or base is None:
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.3f} ({value - base:+.3f})")
        cells += cost_cells(bench_case(cases, result["artifact"]))
        lines.append("| " + " | ".join(cells) + " |")
    limits = {e["limit"] for e in evals}
    lines += ["", f"Documents per task: at most {limits.pop()} (`--limit`)." if limits != {None}
              else "Documents per task: all.", "", "![accuracy against bytes per token](report.png)"]
    return "\n".join(lines) + "\n"


def plot(evals: list[dict], cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in HEADLINE if any(t in e["tasks"] for e in evals)]
    points = [(bench_case(cases, e["artifact"]), e) for e in evals]
    points = [(case["derived"]["bytes_per_token"] / 1e6, e) for case, e in points if case]
    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows),
                                squeeze=False)
    for axis in axes.flat[len(tasks):]:
        axis.set_visible(False)
    for axis, task in zip(axes.flat, tasks):
        for size, result in points:
            if task in result["tasks"]:
                axis.scatter(size, result["tasks"][task][HEADLINE[task]])
                axis.annotate(Path(result["artifact"]).name, (size,
                              result["tasks"][task][HEADLINE[task]]), fontsize=6)
        axis.set_title(f"{task}\n{HEADLINE[task]}", fontsize=8)
        axis.set_xlabel("MB read per token", fontsize=7)
        axis.tick_params(labelsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", nargs="+", type=Path, required=True,
                        help="hslm-eval results.json files")
    parser.add_argument("--bench", nargs="+", type=Path, required=True,
                        help="hslm-bench bench.json files")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    evals = [result for path in args.eval for result in read_json(path)]
    cases = [case for path in args.bench for case in read_json(path)["cases"]]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "report.md").write_text(render(evals, cases))
    plot(evals, cases, args.output / "report.png")
    print((args.output / "report.md").read_text())


if __name__ == "__main__":
    main()
