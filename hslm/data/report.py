"""The `prepare` report: what came in (and which files could not be read, and why), what each
step dropped and why (with examples), PII counts, deduplication rates and what came out per
source; JSON for machines, Markdown for people. Built from datatrove's per-stage stats and
the documents each step excluded.

Examples are shown only after PII scrubbing, and for CSAM-flagged documents only ids and
counts, never text (`steps.report_example`).

Every input document is accounted for: documents read = documents kept + documents dropped,
by reason; `accounted` says whether that holds.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from hslm.data import steps
from hslm.data.prepare import Layout
from hslm.data.shards import MANIFEST
from hslm.files import write_atomically

# The filters, in pipeline order: (folder of examples, title, datatrove step name).
FILTERS = (("input", "input problems", steps.InputProblemsFilter.name),
           ("language", "script and language", steps.LanguageFilter.name),
           ("quality", "quality", steps.QualityFilter.name),
           ("safety", "safety", steps.SafetyFilter.name))
# The dedup stages keep every document they drop: (folder, title, reason).
DEDUP = (("exact_duplicates", "exact duplicates", "exact_duplicate"),
         ("near_duplicates", "near duplicates", "near_duplicate"))
TOTALS = ("documents", "input_files", "unreadable_files", "utf8_repaired",
          "changed_by_normalisation", "boilerplate_lines_removed", "flagged_abusive")


def _jsonl_documents(folder: Path) -> Iterator[dict]:
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for line in file:
                yield json.loads(line)


def _step_stats(at: Layout) -> dict[str, Counter]:
    """Each step's counters, summed over tasks, by step name."""
    by_step: dict[str, Counter] = defaultdict(Counter)
    for stats_file in sorted(at.logs.glob("*/stats.json")):
        for step in json.loads(stats_file.read_text()):
            name = step["name"].split(": ", 1)[-1]
            for key, value in step.get("stats", {}).items():
                # A counter updated once by N is stored as a summary: its total is the count.
                value = value.get("total", 0) if isinstance(value, dict) else value
                by_step[name][key] += value
    return by_step


def _filter_step(at: Layout, folder: str, title: str, counters: Counter,
                 examples_per_reason: int) -> dict:
    examples: dict[str, list] = defaultdict(list)
    for path in sorted((at.examples / folder).glob("*.json")):
        for reason, found in json.loads(path.read_text("utf-8")).items():
            examples[reason] += found
    reasons = {key.removeprefix("dropped_"): {
        "documents": int(count), "characters": int(counters[f"dropped_chars_{key[8:]}"]),
        "examples": examples[key[8:]][:examples_per_reason]}
        for key, count in counters.items()
        if key.startswith("dropped_") and not key.startswith("dropped_chars_")}
    return {"step": folder, "title": title,
            "kept_documents": int(counters["forwarded"]),
            "kept_characters": int(counters["forwarded_chars"]),
            "dropped_documents": sum(r["documents"] for r in reasons.values()),
            "dropped_characters": sum(r["characters"] for r in reasons.values()),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["documents"]))}


def _dedup_step(at: Layout, folder: str, title: str, reason: str,
                examples_per_reason: int) -> dict:
    entry = {"documents": 0, "characters": 0, "examples": []}
    for doc in _jsonl_documents(at.excluded / folder):
        text = doc.get("text", "")  # the writer leaves out empty text
        entry["documents"] += 1
        entry["characters"] += len(text)
        if len(entry["examples"]) < examples_per_reason:
            # Only documents that passed the safety filter reach deduplication.
            entry["examples"].append(steps.report_example(doc["id"], text, withhold_text=False))
    return {"step": folder, "title": title, "dropped_documents": entry["documents"],
            "dropped_characters": entry["characters"],
            "reasons": {reason: entry} if entry["documents"] else {}}


def build_report(output: str | Path, examples_per_reason: int = 3) -> dict:
    at = Layout(output)
    stats = _step_stats(at)
    totals = Counter()
    for counters in stats.values():
        totals.update({key: value for key, value in counters.items()
                       if key in TOTALS or key.startswith("pii_")})
    report_steps = [_filter_step(at, folder, title, stats[name], examples_per_reason)
                    for folder, title, name in FILTERS]
    report_steps += [_dedup_step(at, folder, title, reason, examples_per_reason)
                     for folder, title, reason in DEDUP]
    per_source: dict[str, dict] = defaultdict(lambda: {"documents": 0, "characters": 0})
    for doc in _jsonl_documents(at.documents):
        entry = per_source[doc.get("metadata", {}).get("source", "?")]
        entry["documents"] += 1
        entry["characters"] += len(doc.get("text", ""))
    kept = sum(s["documents"] for s in per_source.values())
    read = int(totals["documents"])
    unreadable = [json.loads(line) for path in sorted(at.unreadable.glob("*.jsonl"))
                  for line in path.read_text("utf-8").splitlines() if line]
    before_dedup = read - sum(s["dropped_documents"] for s in report_steps[:len(FILTERS)])
    return {
        "input": {"files": int(totals["input_files"]), "documents": read,
                  "unreadable_files": unreadable, "utf8_repaired": int(totals["utf8_repaired"]),
                  "changed_by_normalisation": int(totals["changed_by_normalisation"]),
                  "boilerplate_lines_removed": int(totals["boilerplate_lines_removed"])},
        "steps": report_steps,
        "pii": {key.removeprefix("pii_"): int(value) for key, value in sorted(totals.items())
                if key.startswith("pii_")},
        "flagged_abusive": int(totals["flagged_abusive"]),
        "dedup": {step["step"]: {"dropped": step["dropped_documents"],
                                 "rate": step["dropped_documents"] / before_dedup
                                 if before_dedup else 0.0}
                  for step in report_steps[len(FILTERS):]},
        "output": {"documents": kept,
                   "characters": sum(s["characters"] for s in per_source.values()),
                   "per_source": dict(sorted(per_source.items()))},
        "accounted": read == kept + sum(s["dropped_documents"] for s in report_steps),
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
    for skipped in source["unreadable_files"]:
        lines.append(f"  - skipped: {skipped['file']}: {skipped['reason']}")
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
                text = example.get("text", "(text withheld)")
                text = text.replace("\n", " ⏎ ").replace("|", "\\|")
                lines.append(f"- **{reason}** (`{example['id']}`): {text}")
    lines += ["", "## PII replaced", "", "| type | count |", "|---|---:|"]
    lines += ([f"| {kind} | {count:,} |" for kind, count in report["pii"].items()]
              or ["| none | 0 |"])
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


def report_markdown(path: str | Path) -> str:
    """The Markdown of a prepare report: `path` is prepare's output folder or its report.json.
    ValueError says what is wrong with it."""
    path = Path(path)
    report_file = path if path.suffix == ".json" else path / "report.json"
    if not report_file.is_file():
        raise ValueError(f"no report at {report_file}: run hslm-data prepare first")
    try:
        return render_markdown(json.loads(report_file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{report_file} is not a prepare report ({err})") from None


def shard_tables(folder: str | Path) -> str:
    """A token shard folder's tokens per split and per source, as Markdown tables."""
    manifest_file = Path(folder) / MANIFEST
    if not manifest_file.is_file():
        raise ValueError(f"no {MANIFEST} in {folder}")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        lines = ["## Token shards", "", "| split | shards | documents | tokens |",
                 "|---|---:|---:|---:|"]
        lines += [f"| {split} | {len(shards)} | {sum(s['documents'] for s in shards):,} | "
                  f"{sum(s['tokens'] for s in shards):,} |"
                  for split, shards in manifest["splits"].items()]
        lines += ["", "| source | documents | tokens |", "|---|---:|---:|"]
        lines += [f"| {source} | {entry['documents']:,} | {entry['tokens']:,} |"
                  for source, entry in manifest.get("tokens_per_source", {}).items()]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{manifest_file} is not a shard manifest ({err})") from None
    return "\n".join(lines)
