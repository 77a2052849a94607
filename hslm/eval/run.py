"""Running the Hindi tasks on artifacts with lm-evaluation-harness, offline, and writing the
scores (`results.json`, `results.md`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TASK_NAMES = tuple(sorted(path.stem for path in TASKS_DIR.glob("*.yaml")))
# Per task, the metric the summary table shows first (the others follow).
HEADLINE = {"hindi_cloze": "acc", "xquad_hi": "f1", "indicquest_hi": "f1",
            "hindi_agent_json": "exact", **{name: "bits_per_byte" for name in TASK_NAMES
                                           if name.startswith("hindi_bpb_")}}


class EvalError(ValueError):
    """A request hslm-eval cannot run (message says why)."""


def go_offline() -> None:
    """Hugging Face libraries must not reach for the Hub: every task reads local files."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


def check_tasks(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in TASK_NAMES]
    if unknown:
        raise EvalError(f"unknown task {unknown[0]!r}; the tasks are: {', '.join(TASK_NAMES)}")
    return names


def evaluate(artifact: str | Path, tasks: list[str], limit: int | None = None,
             threads: int | None = None) -> dict:
    """{"artifact", "backend", "seconds", "tasks": {task: {metric: value}}} for one artifact."""
    go_offline()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from hslm.eval.lm import HslmLM
    from hslm.runtime import RuntimeLoadError

    try:
        model = HslmLM(str(artifact), threads=threads)
    except RuntimeLoadError as err:
        raise EvalError(str(err)) from None
    started = time.perf_counter()
    output = simple_evaluate(model=model, tasks=check_tasks(tasks), limit=limit,
                             task_manager=TaskManager(include_path=str(TASKS_DIR),
                                                      include_defaults=False),
                             bootstrap_iters=0, log_samples=False, verbosity="WARNING")
    scores = {}
    for task, values in output["results"].items():
        scores[task] = {key.split(",")[0]: value for key, value in values.items()
                        if "," in key and "_stderr" not in key and isinstance(value, float)}
    return {"artifact": str(artifact), "backend": model.runtime.backend,
            "seconds": round(time.perf_counter() - started, 1), "limit": limit,
            "tasks": scores}


def render_markdown(results: list[dict]) -> str:
    tasks = sorted({task for result in results for task in result["tasks"]})
    lines = ["# hslm-eval", "",
             "| artifact | backend | " + " | ".join(f"{t} ({HEADLINE[t]})" for t in tasks) + " |",
             "|---|---|" + "---:|" * len(tasks)]
    for result in results:
        cells = [f"{result['tasks'][t][HEADLINE[t]]:.4f}" if t in result["tasks"] else "-"
                 for t in tasks]
        lines.append(f"| {Path(result['artifact']).name} | {result['backend']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "All metrics:", ""]
    for result in results:
        for task, values in sorted(result["tasks"].items()):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
            lines.append(f"- {Path(result['artifact']).name} · {task}: {shown}")
    limit = results[0]["limit"] if results else None
    if limit:
        lines += ["", f"At most {limit} documents per task (`--limit {limit}`)."]
    return "\n".join(lines) + "\n"


def write_results(results: list[dict], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "results.md").write_text(render_markdown(results))
