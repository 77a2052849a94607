"""hslm-tokenizer: train the SentencePiece BPE tokenizer and measure how finely it cuts text."""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from hslm.apps.common import UsageError, command, fail
from hslm.tokenizer import (HF_CONFIG_FILE, HF_TOKENIZER_FILE, MODEL_FILE, Tokenizer,
                            TokenizerError, fertility, merge_fertility, read_lines)
from hslm.tokenizer_train import train_tokenizer

INPUTS_HELP = "text files (UTF-8, one line per sentence or paragraph), folders (their *.txt " \
              "files, not recursive) or quoted glob patterns"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-tokenizer",
        description="Train hslm's SentencePiece BPE tokenizer (Gemma special tokens, byte "
                    "fallback, hslm's Hindi normalisation) and measure its fertility.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a tokenizer on text files",
        description=f"Normalise the text, train a SentencePiece BPE tokenizer on it and write "
                    f"{MODEL_FILE}, {HF_TOKENIZER_FILE} and {HF_CONFIG_FILE} (the same ids in "
                    f"SentencePiece and Hugging Face form) into the output folder.",
        epilog="example: hslm-tokenizer train data/sample --output runs/demo/tokenizer "
               "--vocab-size 8000")
    train.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    train.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    train.add_argument("--vocab-size", type=int, default=50_000, metavar="N",
                       help="number of tokens, special and byte tokens included (default 50000)")
    train.add_argument("--max-lines", type=int, default=5_000_000, metavar="N",
                       help="train on a random sample of at most this many lines "
                            "(default 5000000)")
    train.add_argument("--threads", type=int, metavar="N",
                       help="training threads (default: all cores)")

    measure = commands.add_parser(
        "fertility", help="tokens per word of a tokenizer on text files",
        description="Encode each file with the tokenizer and print tokens per word "
                    "(whitespace-separated), characters and bytes per token, per file and "
                    "overall. Lower tokens per word means more text fits in the context.",
        epilog="example: hslm-tokenizer fertility runs/demo/tokenizer data/sample --json f.json")
    measure.add_argument("tokenizer", help=f"tokenizer folder or {MODEL_FILE} file")
    measure.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    measure.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers as JSON")
    return parser


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named by paths, folders and glob patterns, in the order given, each once."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(path.glob("*.txt"))
            if not found:
                raise UsageError(f"no .txt files in folder {path}")
        elif path.exists():
            found = [path]
        elif any(char in name for char in "*?["):
            found = sorted(Path(match) for match in glob.glob(name) if Path(match).is_file())
            if not found:
                raise UsageError(f"no files match {name}")
        else:
            raise UsageError(f"input not found: {path}")
        files.extend(found)
    return list(dict.fromkeys(files))


def train(args) -> None:
    files = expand_inputs(args.inputs)
    size = sum(path.stat().st_size for path in files)
    print(f"{len(files)} file(s), {size / 1e6:,.1f} MB", file=sys.stderr)
    start = time.perf_counter()
    tokenizer = train_tokenizer(files, Path(args.output), args.vocab_size,
                                input_sentence_size=args.max_lines, num_threads=args.threads,
                                progress=True)
    print(f"wrote {args.output}: {MODEL_FILE}, {HF_TOKENIZER_FILE}, {HF_CONFIG_FILE}")
    print(f"vocab {tokenizer.vocab_size:,} tokens, trained in {time.perf_counter() - start:.1f} s")
    print(f"sha256 {tokenizer.sha256}")


def measure_fertility(args) -> None:
    tokenizer = Tokenizer.load(args.tokenizer)
    files = expand_inputs(args.inputs)
    results = {}
    for path in tqdm(files, desc="encoding", unit="file", disable=len(files) < 2):
        lines = list(read_lines(path))  # its errors name the file
        try:
            results[str(path)] = fertility(tokenizer, lines)
        except TokenizerError as err:
            raise UsageError(f"{path}: {err}") from None
    overall = merge_fertility(results.values())
    print_table({**results, "overall": overall})
    if args.json:
        report = {"tokenizer": str(args.tokenizer), "vocab_size": tokenizer.vocab_size,
                  "sha256": tokenizer.sha256, "files": results, "overall": overall}
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")


def print_table(rows: dict[str, dict]) -> None:
    width = max(len(name) for name in rows)
    print(f"{'text':<{width}}  {'lines':>8}  {'words':>10}  {'tokens':>10}  "
          f"{'tok/word':>8}  {'chars/tok':>9}  {'bytes/tok':>9}")
    for name, row in rows.items():
        print(f"{name:<{width}}  {row['lines']:>8,}  {row['words']:>10,}  {row['tokens']:>10,}  "
              f"{row['tokens_per_word']:>8.3f}  {row['chars_per_token']:>9.2f}  "
              f"{row['bytes_per_token']:>9.2f}")


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    command = {"train": train, "fertility": measure_fertility}[args.command]
    try:
        command(args)
    except (TokenizerError, OSError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
