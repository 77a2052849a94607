"""hslm-data: turn text into training data. For now: `tokenize` (text files → token shards)."""

from __future__ import annotations

import argparse

from hslm.apps.common import UsageError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hslm-data",
                                     description="Prepare training data for hslm-train.")
    commands = parser.add_subparsers(dest="command", required=True)
    tokenize = commands.add_parser(
        "tokenize", help="text files (one document per line) → token shards",
        description="Normalise and tokenize text files, one document per line, into binary "
                    "token shards with a manifest, holding out a validation split.")
    tokenize.add_argument("inputs", nargs="+", help="text files or folders of *.txt files")
    tokenize.add_argument("--tokenizer", required=True, help="tokenizer folder")
    tokenize.add_argument("--output", required=True, help="shard folder to write")
    tokenize.add_argument("--val-fraction", type=float, default=0.05,
                          help="share of documents held out for validation (default 0.05)")
    return parser


def tokenize(args) -> None:
    from pathlib import Path

    from hslm.data.shards import ShardError, TokenShards, write_shards_from_texts
    from hslm.tokenizer import Tokenizer, TokenizerError, read_lines

    if not 0 <= args.val_fraction < 0.5:
        raise UsageError("--val-fraction must be in [0, 0.5)")
    files = []
    for item in map(Path, args.inputs):
        if item.is_dir():
            files += sorted(item.glob("*.txt"))
        elif item.is_file():
            files.append(item)
        else:
            raise UsageError(f"input not found: {item}")
    try:
        tokenizer = Tokenizer.load(args.tokenizer)
        documents = [line for path in files for line in read_lines(path) if line.strip()]
        if not documents:
            raise UsageError("the inputs hold no text")
        write_shards_from_texts(documents, tokenizer, args.output, args.val_fraction)
        summary = {split: TokenShards(args.output, split).num_tokens
                   for split in ("train", "val") if args.val_fraction or split == "train"}
    except (ShardError, TokenizerError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote {args.output}: {len(documents):,} documents, "
          + ", ".join(f"{split} {n:,} tokens" for split, n in summary.items()))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        tokenize(args)
    except UsageError as err:
        fail(str(err))


if __name__ == "__main__":
    main()
