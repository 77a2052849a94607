"""Peak memory of `hslm-data tokenize` as the corpus grows: it streams documents into the
shards, so its peak RSS should not grow with the corpus.

The corpus is the bundled sample (data/sample, about 1 MB of text, a document per line) at 1×
and 10× (the files repeated), and the 10× corpus as one single line (one 10 MB document, read
and encoded in pieces); a one-line corpus gives the cost of Python and the libraries alone.
Each case runs the command in its own process; peak RSS is that process's (wait4).

    python benchmarks/tokenize_memory.py [--data data/sample]

Writes benchmarks/results/tokenize_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hslm.tokenizer_train import train_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def write_corpus(files: list[Path], folder: Path, copies: int, one_line: bool = False) -> Path:
    folder.mkdir(parents=True)
    texts = [path.read_text("utf-8") for path in files]
    if one_line:
        line = " ".join(" ".join(text.split("\n")) for text in texts * copies)
        (folder / "all.txt").write_text(line + "\n", "utf-8")
        return folder
    for path, text in zip(files, texts):
        (folder / path.name).write_text(text * copies, "utf-8")
    return folder


def run_tokenize(corpus: Path, tokenizer: Path, output: Path) -> dict:
    """Run `hslm-data tokenize` in a child process: its peak RSS, wall time and manifest."""
    command = [sys.executable, "-c", "from hslm.apps.data import main; main()", "tokenize",
               str(corpus), "--tokenizer", str(tokenizer), "--output", str(output)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = child.stdout.read().decode(), child.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tokenize failed on {corpus}: {stderr}")
    manifest = json.loads((output / "manifest.json").read_text())
    return {"corpus_mb": sum(p.stat().st_size for p in corpus.iterdir()) / 1e6,
            "documents": manifest["documents"],
            "tokens": sum(s["tokens"] for shards in manifest["splits"].values() for s in shards),
            "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds, "output": stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "sample")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.txt"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="hslm-tokenize-memory-") as work:
        work = Path(work)
        tokenizer = work / "tokenizer"
        train_tokenizer(files, tokenizer, vocab_size=8_000)
        tiny = work / "tiny"
        tiny.mkdir()
        (tiny / "one.txt").write_text("भारत की राजधानी नई दिल्ली है\n", "utf-8")
        cases = {"one line (libraries alone)": tiny,
                 "sample 1×": write_corpus(files, work / "x1", 1),
                 "sample 10×": write_corpus(files, work / "x10", 10),
                 "sample 10× as one document": write_corpus(files, work / "one", 10, True)}
        for name, corpus in cases.items():
            results[name] = run_tokenize(corpus, tokenizer, work / "shards" / corpus.name)
            print(f"{name}: {results[name]['peak_rss_mb']:.0f} MB peak RSS", file=sys.stderr)
    growth = results["sample 10×"]["peak_rss_mb"] - results["sample 1×"]["peak_rss_mb"]
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "data": str(args.data), "cases": results,
              "peak_rss_growth_1x_to_10x_mb": growth}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tokenize_memory.json").write_text(json.dumps(report, indent=2,
                                                             ensure_ascii=False) + "\n")
    lines = ["# hslm-data tokenize: peak memory vs corpus size", "",
             f"Corpus: {args.data.name} (a document per line), tokenizer: 8,000 tokens trained "
             "on it; each case is `hslm-data tokenize` in its own process.", "",
             "| corpus | MB | documents | tokens | peak RSS (MB) | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['corpus_mb']:.1f} | {r['documents']:,} | {r['tokens']:,} | "
              f"{r['peak_rss_mb']:.0f} | {r['seconds']:.1f} |" for name, r in results.items()]
    lines += ["", f"Peak RSS grows by {growth:.0f} MB from 1× to 10× the corpus."]
    (RESULTS / "tokenize_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
