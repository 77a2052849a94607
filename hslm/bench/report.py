"""hslm-bench's output: `bench.json` (machine, versions, settings, every sample of every case,
validated against `SCHEMA`), `bench.md` (tables: mean ± standard deviation of every figure)
and plots (tokens/s per case, latency and memory against model size, roofline).

Derived figures, per case:
- TPOT p50/p90/p99 from every generation step; TTFT p50/p90/p99 from the agent requests;
- bytes per token = the weights decoding reads once per token (from the file's real tensor
  sizes), roofline efficiency = tg tokens/s × bytes per token ÷ measured bandwidth;
- energy: joules per token and per request where RAPL counters exist, else "unavailable".
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from hslm.bench.machine import UNAVAILABLE

_NUMBERS = {"type": "array", "items": {"type": "number"}}
_ENERGY = {"oneOf": [{"const": UNAVAILABLE}, _NUMBERS]}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "hslm-bench results",
    "type": "object",
    "required": ["tool", "machine", "settings", "bandwidth_gbs", "cases"],
    "properties": {
        "tool": {"const": "hslm-bench"},
        "machine": {"type": "object", "required": ["cpu", "logical_cpus", "physical_cores",
                                                   "versions"]},
        "settings": {"type": "object", "required": ["threads", "repeat", "warmup", "n_prompt",
                                                    "n_gen"]},
        "bandwidth_gbs": {"type": "number", "exclusiveMinimum": 0},
        "cases": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "backend", "type", "path", "threads", "file_bytes",
                         "weight_bytes", "load_seconds", "peak_rss_mb", "pp", "tg", "energy",
                         "derived"],
            "properties": {
                "backend": {"enum": ["torch", "torch-compiled", "llama.cpp", "onnx"]},
                "file_bytes": {"type": "integer", "minimum": 0},
                "weight_bytes": {"type": "integer", "minimum": 0},
                "parameters": {"type": ["integer", "null"]},
                "load_seconds": {"type": "number", "minimum": 0},
                "peak_rss_mb": {"type": "number", "exclusiveMinimum": 0},
                "pp": {"type": "object", "required": ["n_prompt", "tokens_per_s"],
                       "properties": {"tokens_per_s": _NUMBERS}},
                "tg": {"type": "object", "required": ["n_gen", "tokens_per_s", "step_s",
                                                      "joules_per_token"],
                       "properties": {"tokens_per_s": _NUMBERS, "step_s": _NUMBERS,
                                      "joules_per_token": _ENERGY}},
                "agent": {"oneOf": [{"type": "null"}, {
                    "type": "object",
                    "required": ["prompt_tokens", "answer_tokens", "latency_s", "ttft_s",
                                 "joules_per_request"],
                    "properties": {"latency_s": _NUMBERS, "ttft_s": _NUMBERS,
                                   "joules_per_request": _ENERGY}}]},
                "energy": {"type": "object", "required": ["source", "idle_watts"]},
                "llama_bench": {"type": "object", "required": ["pp", "tg"], "properties": {
                    "pp": {"type": "object", "required": ["n_prompt", "tokens_per_s"],
                           "properties": {"tokens_per_s": _NUMBERS}},
                    "tg": {"type": "object", "required": ["n_gen", "tokens_per_s"],
                           "properties": {"tokens_per_s": _NUMBERS}}}},
                "derived": {"type": "object", "required": [
                    "pp_tokens_per_s", "tg_tokens_per_s", "tpot_ms", "bytes_per_token",
                    "roofline_efficiency"]},
            }}},
    },
}


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def percentiles_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    values = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def derive(case: dict, bandwidth_gbs: float, assumed_watts: float | None = None) -> dict:
    """The figures computed from a case's samples (see the module docstring). Without energy
    counters and with `assumed_watts` given, joules per token are estimated as that power ×
    time per token, and labelled an estimate."""
    tg_mean, tg_std = mean_std(case["tg"]["tokens_per_s"])
    pp_mean, pp_std = mean_std(case["pp"]["tokens_per_s"])
    derived = {"pp_tokens_per_s": [pp_mean, pp_std], "tg_tokens_per_s": [tg_mean, tg_std],
               "tpot_ms": percentiles_ms(case["tg"]["step_s"]),
               "bytes_per_token": case["weight_bytes"],
               "roofline_efficiency": tg_mean * case["weight_bytes"] / (bandwidth_gbs * 1e9)}
    agent = case.get("agent")
    if agent:
        derived["ttft_ms"] = percentiles_ms(agent["ttft_s"])
        derived["agent_latency_s"] = list(mean_std(agent["latency_s"]))
    joules = case["tg"]["joules_per_token"]
    derived["joules_per_token"] = list(mean_std(joules)) if joules != UNAVAILABLE else UNAVAILABLE
    if joules == UNAVAILABLE and assumed_watts:
        derived["joules_per_token_estimate"] = {
            "assumed_watts": assumed_watts,
            "value": list(mean_std([assumed_watts / t for t in case["tg"]["tokens_per_s"]]))}
    return derived


def validate(report: dict) -> None:
    import jsonschema

    jsonschema.validate(report, SCHEMA)


def _pm(pair: list[float], digits: int = 1) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def render_markdown(report: dict, plots: list[str]) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = ["# hslm-bench", "",
             f"{machine['cpu']}, {machine['physical_cores']} cores; {settings['threads']} "
             f"threads; memory bandwidth {report['bandwidth_gbs']:.1f} GB/s (measured). "
             f"{settings['warmup']} warm-up + {settings['repeat']} runs per figure, mean ± "
             f"standard deviation. pp = prompt tokens/s (pp{settings['n_prompt']} or the "
             f"model's context), tg = generated tokens/s (tg{settings['n_gen']}), as llama-bench.",
             "", "| case | file MB | load s | peak RSS MB | pp tok/s | tg tok/s | TPOT p50/p90/p99 "
             "ms | TTFT p50/p90 ms | agent request s | bytes/token MB | roofline | J/token |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for case in report["cases"]:
        d = case["derived"]
        tpot = "/".join(f"{d['tpot_ms'][k]:.1f}" for k in ("p50", "p90", "p99"))
        ttft = "/".join(f"{d['ttft_ms'][k]:.0f}" for k in ("p50", "p90")) if "ttft_ms" in d else "—"
        agent = _pm(d["agent_latency_s"], 2) if "agent_latency_s" in d else "—"
        if d["joules_per_token"] != UNAVAILABLE:
            joules = _pm(d["joules_per_token"], 3)
        elif "joules_per_token_estimate" in d:
            estimate = d["joules_per_token_estimate"]
            joules = (f"estimate: {_pm(estimate['value'], 3)} "
                      f"(assumed {estimate['assumed_watts']:g} W)")
        else:
            joules = UNAVAILABLE
        lines.append(f"| {case['name']} | {case['file_bytes'] / 1e6:.1f} | "
                     f"{case['load_seconds']:.2f} | {case['peak_rss_mb']:.0f} | "
                     f"{_pm(d['pp_tokens_per_s'])} | {_pm(d['tg_tokens_per_s'])} | {tpot} | "
                     f"{ttft} | {agent} | {d['bytes_per_token'] / 1e6:.1f} | "
                     f"{d['roofline_efficiency']:.0%} | {joules} |")
    energy = report["cases"][0]["energy"]["source"] if report["cases"] else UNAVAILABLE
    if energy == "rapl":
        energy_line = "Energy: RAPL package counters, idle power subtracted."
    elif settings.get("assumed_watts"):
        energy_line = ("Energy: unavailable — this machine exposes no energy counters. The J/token "
                       f"column is an ESTIMATE at an assumed {settings['assumed_watts']:g} W, "
                       "not a measurement.")
    else:
        energy_line = ("Energy: unavailable — this machine exposes no energy counters (no "
                       "RAPL/powercap); nothing is estimated.")
    lines += ["", energy_line,
              "Agent request: a ~200-token Hindi chat prompt and a JSON answer of up to 48 "
              "tokens under guided decoding (JSON schema). Peak RSS includes the Python "
              "libraries of the process (PyTorch is imported by every case)."]
    lines += llama_bench_table(report["cases"])
    lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def llama_bench_table(cases: list[dict]) -> list[str]:
    """hslm's figures beside llama.cpp's own llama-bench on the same GGUF files."""
    rows = [c for c in cases if c.get("llama_bench")]
    if not rows:
        return []
    lines = ["", "## llama.cpp's own llama-bench on the same files", "",
             "Same threads and lengths; llama-bench's defaults otherwise (F16 KV cache). "
             "hslm decodes through llama-cpp-python with an F32 KV cache and samples in Python.",
             "", "| case | pp hslm tok/s | pp llama-bench tok/s | tg hslm tok/s | "
             "tg llama-bench tok/s | hslm tg / llama-bench tg |", "|---|---:|---:|---:|---:|---:|"]
    for case in rows:
        ours_pp, ours_tg = case["derived"]["pp_tokens_per_s"], case["derived"]["tg_tokens_per_s"]
        theirs_pp = mean_std(case["llama_bench"]["pp"]["tokens_per_s"])
        theirs_tg = mean_std(case["llama_bench"]["tg"]["tokens_per_s"])
        lines.append(f"| {case['name']} (pp{case['llama_bench']['pp']['n_prompt']}/"
                     f"tg{case['llama_bench']['tg']['n_gen']}) | {_pm(ours_pp)} | "
                     f"{_pm(theirs_pp)} | {_pm(ours_tg)} | {_pm(theirs_tg)} | "
                     f"{ours_tg[0] / theirs_tg[0]:.0%} |")
    return lines


def write_plots(report: dict, folder: Path) -> list[str]:
    """PNG plots next to the report (skipped, with the reason, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return []
    cases = report["cases"]
    paths = []
    names = [c["name"] for c in cases]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for axis, key, title in ((axes[0], "pp_tokens_per_s", "prompt processing (tokens/s)"),
                             (axes[1], "tg_tokens_per_s", "generation (tokens/s)")):
        means = [c["derived"][key][0] for c in cases]
        errors = [c["derived"][key][1] for c in cases]
        axis.barh(names, means, xerr=errors, color="tab:blue")
        axis.set_title(title)
    figure.tight_layout()
    paths.append(str(folder / "tokens_per_s.png"))
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    sized = sorted((c for c in cases if c.get("parameters") and c["backend"] == "llama.cpp"
                    and c["type"] == "q4"), key=lambda c: c["parameters"])
    if len(sized) > 1:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        params = [c["parameters"] / 1e6 for c in sized]
        for axis, values, label in (
                (axes[0], [1000 / c["derived"]["tg_tokens_per_s"][0] for c in sized],
                 "ms per generated token"),
                (axes[1], [c["peak_rss_mb"] for c in sized], "peak RSS (MB)")):
            axis.plot(params, values, "o-")
            for x, y, case in zip(params, values, sized):
                axis.annotate(case["name"].split(" ")[0], (x, y), textcoords="offset points",
                              xytext=(4, 4), fontsize=8)
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            axis.set_xlabel("parameters (millions), q4 GGUF")
            axis.set_title(label)
        figure.suptitle("cost vs model size")
        figure.tight_layout()
        paths.append(str(folder / "size_scaling.png"))
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for case in cases:
        achieved = case["derived"]["tg_tokens_per_s"][0] * case["weight_bytes"] / 1e9
        axis.scatter(case["weight_bytes"] / 1e6, achieved, label=case["name"])
    axis.axhline(report["bandwidth_gbs"], color="red", linestyle="--",
                 label=f"measured bandwidth {report['bandwidth_gbs']:.0f} GB/s")
    axis.set_xscale("log")
    axis.set_xlabel("bytes read per token (MB)")
    axis.set_ylabel("achieved GB/s while generating")
    axis.set_title("roofline")
    axis.legend(fontsize=7)
    figure.tight_layout()
    paths.append(str(folder / "roofline.png"))
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    return paths


def write_report(report: dict, folder: Path) -> list[Path]:
    validate(report)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "bench.schema.json").write_text(json.dumps(SCHEMA, indent=2) + "\n")
    plots = write_plots(report, folder)
    (folder / "bench.md").write_text(render_markdown(report, plots))
    return [folder / "bench.json", folder / "bench.md", *map(Path, plots)]
