"""The `prepare` report: what came in, what each step dropped and why (with examples), PII
counts, deduplication rates and what came out per source; JSON for machines, Markdown for
people. Built from datatrove's per-stage stats and the documents each step excluded.

Every input document is accounted for: documents read = documents kept + documents dropped,
by reason; `accounted` says whether that holds.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from hslm.data.prepare import Layout
from hslm.files import write_atomically

# Excluded-document folders, in pipeline order, and the reason of documents that carry none.
STEPS = (("input", "input problems"), ("language", "script and language"),
         ("quality", "quality"), ("safety", "safety"),
         ("exact_duplicates", "exact duplicates"), ("near_duplicates", "near duplicates"))
DEFAULT_REASON = {"exact_duplicates": "exact_duplicate", "near_duplicates": "near_duplicate"}
EXAMPLE_CHARS = 200


def _jsonl_documents(folder: Path) -> Iterator[dict]:
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for line in file:
                yield json.loads(line)


def _stage_counters(at: Layout) -> Counter:
    """Every counter of every step of every stage, summed (names are distinct by design)."""
    counters: Counter = Counter()
    for stats_file in sorted(at.logs.glob("*/stats.json")):
        for step in json.loads(stats_file.read_text()):
            for key, value in step.get("stats", {}).items():
                if isinstance(value, (int, float)) and key.startswith(
                        ("documents", "input_files", "unreadable_files", "utf8_repaired",
                         "changed_by_normalisation", "boilerplate_lines_removed", "pii_",
                         "flagged_abusive")):
                    counters[key] += value
    return counters


def build_report(output: str | Path, examples_per_reason: int = 3) -> dict:
    at = Layout(output)
    counters = _stage_counters(at)
    steps = []
    dropped_total = 0
    for folder, title in STEPS:
        reasons: dict[str, dict] = defaultdict(lambda: {"documents": 0, "characters": 0,
                                                         "examples": []})
        for doc in _jsonl_documents(at.excluded / folder):
            reason = doc.get("metadata", {}).get("filter_reason") or DEFAULT_REASON[folder]
            entry = reasons[reason]
            entry["documents"] += 1
            entry["characters"] += len(doc.get("text", ""))
            if len(entry["examples"]) < examples_per_reason:
                entry["examples"].append({"id": doc["id"], "text": doc.get("text", "")[:EXAMPLE_CHARS]})
        dropped = sum(r["documents"] for r in reasons.values())
        dropped_total += dropped
        steps.append({"step": folder, "title": title, "dropped_documents": dropped,
                      "dropped_characters": sum(r["characters"] for r in reasons.values()),
                      "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["documents"]))})
    per_source: dict[str, dict] = defaultdict(lambda: {"documents": 0, "characters": 0})
    for doc in _jsonl_documents(at.documents):
        entry = per_source[doc.get("metadata", {}).get("source", "?")]
        entry["documents"] += 1
        entry["characters"] += len(doc.get("text", ""))
    kept = sum(s["documents"] for s in per_source.values())
    read = int(counters["documents"])
    unreadable = [line for path in sorted(at.unreadable.glob("*.txt"))
                  for line in path.read_text("utf-8").splitlines() if line]
    before_dedup = read - sum(s["dropped_documents"] for s in steps
                              if not s["step"].endswith("duplicates"))
    return {
        "input": {"files": int(counters["input_files"]), "documents": read,
                  "unreadable_files": unreadable, "utf8_repaired": int(counters["utf8_repaired"]),
                  "changed_by_normalisation": int(counters["changed_by_normalisation"]),
                  "boilerplate_lines_removed": int(counters["boilerplate_lines_removed"])},
        "steps": steps,
        "pii": {key.removeprefix("pii_"): int(value) for key, value in sorted(counters.items())
                if key.startswith("pii_")},
        "flagged_abusive": int(counters["flagged_abusive"]),
        "dedup": {kind: {"dropped": step["dropped_documents"],
                         "rate": step["dropped_documents"] / before_dedup if before_dedup else 0.0}
                  for step in steps for kind in [step["step"]] if kind.endswith("duplicates")},
        "output": {"documents": kept, "characters": sum(s["characters"] for s in per_source.values()),
                   "per_source": dict(sorted(per_source.items()))},
        "accounted": read == kept + dropped_total,
    }


def render_markdown(report: dict) -> str:
    source = report["input"]
    lines = ["# hslm-data prepare report", "",
             f"- input: {source['files']:,} files, {source['documents']:,} documents "
             f"({len(source['unreadable_files'])} unreadable files skipped)",
             f"- output: {report['output']['documents']:,} documents, "
             f"{report['output']['characters']:,} characters",
             f"- every document accounted for (read = kept + dropped): "
             f"{'yes' if report['accounted'] else 'NO'}",
             f"- invalid UTF-8 repaired: {source['utf8_repaired']:,} documents; changed by "
             f"normalisation: {source['changed_by_normalisation']:,}; boilerplate lines removed: "
             f"{source['boilerplate_lines_removed']:,}", ""]
    for name in source["unreadable_files"]:
        lines.append(f"  - skipped: {name}")
    lines += ["## Dropped, by step and reason", "",
              "| step | reason | documents | characters |", "|---|---|---:|---:|"]
    for step in report["steps"]:
        for reason, entry in step["reasons"].items():
            lines.append(f"| {step['title']} | {reason} | {entry['documents']:,} | "
                         f"{entry['characters']:,} |")
    lines += ["", "## Examples", ""]
    for step in report["steps"]:
        for reason, entry in step["reasons"].items():
            for example in entry["examples"]:
                text = example["text"].replace("\n", " ⏎ ").replace("|", "\\|")
                lines.append(f"- **{reason}** (`{example['id']}`): {text}")
    lines += ["", "## PII replaced", "", "| type | count |", "|---|---:|"]
    lines += [f"| {kind} | {count:,} |" for kind, count in report["pii"].items()] or ["| none | 0 |"]
    lines += ["", "## Deduplication", "", "| kind | dropped | rate |", "|---|---:|---:|"]
    lines += [f"| {kind} | {entry['dropped']:,} | {entry['rate']:.2%} |"
              for kind, entry in report["dedup"].items()]
    lines += ["", "## Output per source", "", "| source | documents | characters |",
              "|---|---:|---:|"]
    lines += [f"| {name} | {entry['documents']:,} | {entry['characters']:,} |"
              for name, entry in report["output"]["per_source"].items()]
    return "\n".join(lines) + "\n"


def write_report(output: str | Path, examples_per_reason: int = 3) -> dict:
    at = Layout(output)
    report = build_report(output, examples_per_reason)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_atomically(at.report_json, lambda f: f.write(text.encode()))
    markdown = render_markdown(report)
    write_atomically(at.report_md, lambda f: f.write(markdown.encode()))
    return report
