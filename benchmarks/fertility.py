"""Tokenizer fertility per domain: tokens per word on held-out Hindi text at several vocab sizes.

Each data file is one domain. The first 90% of every file's lines (in file order) train one
tokenizer per vocabulary size; the last 10% of every file is held out and measured, so no
measured sentence, and few of its neighbours, was seen in training. "Hindi prose and news" is
every domain except classical verse (mostly Awadhi/Braj) and romanised Hinglish; the target
for it at 50k is ≤ 1.35 tokens per word (published: Sarvam-2B 1.40, GPT-4o 1.65,
Gemma-2 1.96, Llama-3.1 2.67 on Hindi).

    python benchmarks/fertility.py [--data-dir DIR] [--vocab-sizes 8000 16000 32000 50000]

Writes benchmarks/results/fertility.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hslm.tokenizer import fertility, merge_fertility, read_lines
from hslm.tokenizer_train import train_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
TARGET = 1.35
PUBLISHED = {"Sarvam-2B": 1.40, "GPT-4o": 1.65, "Gemma-2": 1.96, "Llama-3.1": 2.67}
NOT_PROSE_OR_NEWS = {"literature_ltrc_classical_verse", "hinglish_top_code_switched_queries"}


def split_domains(data_dir: Path, held_out: float, train_dir: Path) -> dict[str, list[str]]:
    """Write each file's training part into `train_dir`; return each domain's held-out lines."""
    held_out_lines = {}
    for path in sorted(data_dir.glob("*.txt")):
        lines = list(read_lines(path))
        cut = round(len(lines) * (1 - held_out))
        (train_dir / path.name).write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
        held_out_lines[path.stem] = lines[cut:]
    return held_out_lines


def measure(vocab_size: int, train_files: list[Path], held_out: dict[str, list[str]],
            work_dir: Path, threads: int | None) -> dict:
    start = time.perf_counter()
    tokenizer = train_tokenizer(train_files, work_dir / f"tokenizer-{vocab_size}", vocab_size,
                                num_threads=threads)
    train_seconds = time.perf_counter() - start
    domains = {name: fertility(tokenizer, lines) for name, lines in held_out.items()}
    return {
        "train_seconds": round(train_seconds, 1),
        "sha256": tokenizer.sha256,
        "domains": domains,
        "prose_and_news": merge_fertility(result for name, result in domains.items()
                                          if name not in NOT_PROSE_OR_NEWS),
        "all": merge_fertility(domains.values()),
    }


def markdown(report: dict) -> str:
    sizes = report["vocab_sizes"]
    by_size = report["results"]
    header = "| domain (held-out lines) | " + " | ".join(f"{s // 1000}k" for s in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)

    def row(label: str, key) -> str:
        cells = [f"{key(by_size[str(s)])['tokens_per_word']:.3f}" for s in sizes]
        return f"| {label} | " + " | ".join(cells) + " |"

    first = by_size[str(sizes[0])]
    lines = [
        "# Tokenizer fertility (tokens per word, held-out text)",
        "",
        f"SentencePiece BPE trained by `hslm.tokenizer_train.train_tokenizer` on the first "
        f"{1 - report['held_out_fraction']:.0%} of the lines of every file in "
        f"`{report['data_dir']}` ({report['train_bytes'] / 1e6:.1f} MB); measured on the last "
        f"{report['held_out_fraction']:.0%}. Words are whitespace-separated, after hslm's "
        f"normalisation. Lower is better. Made by `python benchmarks/fertility.py` "
        f"({report['machine']}).",
        "",
        header, rule,
    ]
    for name in first["domains"]:
        lines.append(row(f"{name} ({first['domains'][name]['lines']:,})",
                         lambda result, name=name: result["domains"][name]))
    lines += [row("**Hindi prose and news**", lambda result: result["prose_and_news"]),
              row("all", lambda result: result["all"]), ""]
    chars = [f"{by_size[str(s)]['prose_and_news']['chars_per_token']:.2f}" for s in sizes]
    seconds = [f"{by_size[str(s)]['train_seconds']:.0f}" for s in sizes]
    lines += ["| measure | " + " | ".join(f"{s // 1000}k" for s in sizes) + " |", rule,
              "| chars per token, prose and news | " + " | ".join(chars) + " |",
              "| training time (s) | " + " | ".join(seconds) + " |", ""]
    largest = by_size[str(sizes[-1])]["prose_and_news"]["tokens_per_word"]
    verdict = "meets" if largest <= TARGET else f"misses by {largest - TARGET:.3f}"
    lines += [f"Target for Hindi prose and news at {sizes[-1] // 1000}k: ≤ {TARGET:.2f} tokens per "
              f"word: {largest:.3f} {verdict}. Published for Hindi: " +
              ", ".join(f"{name} {value:.2f}" for name, value in PUBLISHED.items()) + ".",
              "",
              "The held-out lines come from the same sources as the training text (same topics, "
              "authors and boilerplate), so these numbers flatter a tokenizer trained on "
              f"{report['train_bytes'] / 1e6:.0f} MB compared with the published ones, which "
              "were measured on other Hindi text.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared/data/hindi",
                        help="folder of *.txt files, one domain each")
    parser.add_argument("--vocab-sizes", type=int, nargs="+",
                        default=[8_000, 16_000, 32_000, 50_000])
    parser.add_argument("--held-out", type=float, default=0.1,
                        help="fraction of each file measured")
    parser.add_argument("--threads", type=int, help="training threads (default: all cores)")
    args = parser.parse_args()

    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hslm-fertility-") as work:
        work_dir = Path(work)
        train_dir = work_dir / "train"
        train_dir.mkdir()
        held_out = split_domains(args.data_dir, args.held_out, train_dir)
        train_files = sorted(train_dir.glob("*.txt"))
        report = {
            "data_dir": os.path.relpath(args.data_dir.resolve(), REPO_ROOT),
            "held_out_fraction": args.held_out,
            "train_bytes": sum(path.stat().st_size for path in train_files),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "vocab_sizes": args.vocab_sizes,
            "target_tokens_per_word": TARGET,
            "published_tokens_per_word": PUBLISHED,
            "results": {},
        }
        for vocab_size in args.vocab_sizes:
            result = measure(vocab_size, train_files, held_out, work_dir, args.threads)
            report["results"][str(vocab_size)] = result
            print(f"vocab {vocab_size:>6,}: prose and news "
                  f"{result['prose_and_news']['tokens_per_word']:.3f} tokens/word, all "
                  f"{result['all']['tokens_per_word']:.3f} "
                  f"(trained in {result['train_seconds']} s)")
    (RESULTS / "fertility.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "fertility.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {RESULTS / 'fertility.json'} and {RESULTS / 'fertility.md'}")


if __name__ == "__main__":
    main()
