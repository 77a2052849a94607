"""hslm-data: raw Hindi text → cleaned documents → tokenizer → token shards, and their stats.

    hslm-data prepare RAW... --output OUT [--config FILE] [key=value ...]
    hslm-data tokenizer OUT/documents --output TOK --vocab-size N
    hslm-data tokenize OUT/documents --tokenizer TOK --output SHARDS
    hslm-data stats OUT [SHARDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from hslm.apps.common import UsageError, command

INPUTS_HELP = ("files, folders (searched recursively) or quoted globs: .txt (a document per "
               "line, or per blank-line block with text_layout=paragraph), .jsonl, .csv, .tsv, "
               ".parquet; optionally .gz/.xz/.zst/.bz2 compressed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-data", description="Prepare Hindi training data for hslm-train: clean, "
        "filter and deduplicate raw text (datatrove pipelines), train the tokenizer, tokenize "
        "into shards, and report what happened.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser(
        "prepare", help="raw text → cleaned, filtered, deduplicated JSONL documents",
        description="Normalise, filter (script/language, quality, legacy-font damage, safety), "
                    "scrub PII and deduplicate (exact + MinHash) raw text with datatrove; write "
                    "OUT/documents/*.jsonl.gz and OUT/report.{json,md}. Settings come from "
                    "--config (YAML) and key=value overrides, e.g. keep_hinglish=true tasks=8 "
                    "executor=slurm. A re-run resumes: finished tasks are skipped.",
        epilog="example: hslm-data prepare data/sample --output runs/demo/prepared "
               "keep_hinglish=true")
    prepare.add_argument("inputs", nargs="*", metavar="INPUT|KEY=VALUE",
                         help=INPUTS_HELP + "; words with '=' are settings on top of the "
                              "config file (see hslm/data/prepare.py: PrepareConfig)")
    prepare.add_argument("--output", "-o", metavar="DIR", help="output folder (config: output)")
    prepare.add_argument("--config", metavar="FILE", help="YAML file of prepare settings")
    prepare.add_argument("--fresh", action="store_true",
                         help="delete an earlier run's output first instead of resuming it")
    prepare.add_argument("--verbose", action="store_true",
                         help="show datatrove's own logs (default: OUT/work/logs/console.log)")

    tokenizer = commands.add_parser(
        "tokenizer", help="train the SentencePiece tokenizer on prepared documents",
        description="Train hslm's SentencePiece BPE tokenizer (see hslm-tokenizer train) on "
                    "documents in any input format, typically OUT/documents from prepare.")
    tokenizer.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    tokenizer.add_argument("--output", "-o", required=True, metavar="DIR")
    tokenizer.add_argument("--vocab-size", type=int, default=50_000, metavar="N")
    tokenizer.add_argument("--max-lines", type=int, default=5_000_000, metavar="N",
                           help="train on a random sample of at most this many lines")

    tokenize = commands.add_parser(
        "tokenize", help="documents → binary token shards with a manifest",
        description="Tokenize documents (<bos> ids <eos> each) into uint16/uint32 shards with "
                    "a manifest (token counts, documents, tokenizer checksum, source files, "
                    "tokens per source), holding out a validation split by document.")
    tokenize.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    tokenize.add_argument("--tokenizer", required=True, help="tokenizer folder")
    tokenize.add_argument("--output", "-o", required=True, help="shard folder to write")
    tokenize.add_argument("--val-fraction", type=float, default=0.05,
                          help="share of documents held out for validation (default 0.05)")
    tokenize.add_argument("--text-field", default="text", help="JSONL field of the text")
    tokenize.add_argument("--text-column", default="text", help="CSV/TSV/Parquet text column")
    tokenize.add_argument("--piece-chars", type=int, default=1_000_000, metavar="N",
                          help="read and encode documents in pieces of at most N characters "
                               "(a longer document is still one <bos> ... <eos>)")

    stats = commands.add_parser(
        "stats", help="print a prepare report (and a shard folder's tokens) as tables",
        description="Print OUT/report.json of a prepare run as tables; with a shard folder, "
                    "also its tokens per split and per source.")
    stats.add_argument("prepared", help="prepare output folder (or its report.json)")
    stats.add_argument("shards", nargs="?", help="token shard folder")
    return parser


@contextlib.contextmanager
def stderr_to(path: Path | None):
    """Send file descriptor 2 (datatrove's logs, also in its worker processes) to `path`."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def prepare(args) -> None:
    from hslm.config import ConfigError
    from hslm.data.prepare import Layout, PrepareConfig, run_prepare
    from hslm.data.report import render_markdown, write_report
    from hslm.data.sources import SourceError

    overrides = [item for item in args.inputs if "=" in item]
    inputs = [item for item in args.inputs if "=" not in item]
    if inputs:
        overrides.append(f"inputs={json.dumps(inputs)}")
    if args.output:
        overrides.append(f"output={json.dumps(args.output)}")
    try:
        config = PrepareConfig.load(args.config, overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if not config.inputs:
        raise UsageError("no inputs: give files/folders or set inputs in the config")
    at = Layout(config.output)
    console_log = None if args.verbose else at.logs / "console.log"
    start = time.perf_counter()
    bar = tqdm(total=None, unit="stage", desc="prepare", file=sys.stdout)

    def on_stage(index: int, count: int, name: str) -> None:
        bar.total = count
        bar.n = index
        bar.set_description(f"prepare: {name}")
        bar.refresh()

    try:
        with stderr_to(console_log):
            run_prepare(config, fresh=args.fresh, on_stage=on_stage)
    except SourceError as err:
        bar.close()
        raise UsageError(f"{err} (on_error=skip would skip it)") from None
    except ModuleNotFoundError:
        bar.close()
        raise  # an optional package not installed: the command names its extra
    except Exception as err:  # a failed task: datatrove re-raises it here
        bar.close()
        where = f"; see {console_log} and {at.logs}/*/logs" if console_log else ""
        raise UsageError(f"prepare failed: {type(err).__name__}: {err}{where}") from None
    bar.n = bar.total or 0
    bar.set_description("prepare: done")
    bar.close()
    report = write_report(config.output, config.examples_per_reason)
    print(render_markdown(report).split("## Examples")[0].rstrip())
    print(f"\nwrote {at.documents} and {at.report_md} in {time.perf_counter() - start:.1f} s")
    if not report["accounted"]:
        raise UsageError("documents read ≠ kept + dropped: see the report")


def train_tokenizer_on_documents(args) -> None:
    from hslm.data.sources import SourceError, SourceOptions, read_texts, resolve_inputs
    from hslm.tokenizer import TokenizerError
    from hslm.tokenizer_train import train_tokenizer_on_texts

    try:
        files = resolve_inputs(args.inputs)
        tokenizer = train_tokenizer_on_texts(read_texts(files, SourceOptions()), Path(args.output),
                                             args.vocab_size, input_sentence_size=args.max_lines,
                                             progress=True)
    except (SourceError, TokenizerError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote {args.output}: vocab {tokenizer.vocab_size:,}, sha256 {tokenizer.sha256}")


def tokenize(args) -> None:
    from hslm.data.shards import ShardError, tokenize_files
    from hslm.data.sources import SourceError, SourceOptions, resolve_inputs
    from hslm.tokenizer import Tokenizer, TokenizerError

    if not 0 <= args.val_fraction < 0.5:
        raise UsageError("--val-fraction must be in [0, 0.5)")
    try:
        options = SourceOptions(text_field=args.text_field, text_column=args.text_column,
                                max_chars=args.piece_chars)
        files = resolve_inputs(args.inputs)
        tokenizer = Tokenizer.load(args.tokenizer)
        manifest = tokenize_files(files, tokenizer, args.output, args.val_fraction, options,
                                  progress=len(files) > 1)
    except (ShardError, TokenizerError, SourceError) as err:
        raise UsageError(str(err)) from None
    if not manifest["documents"]:
        raise UsageError("the inputs hold no text")
    tokens = {split: sum(shard["tokens"] for shard in shards)
              for split, shards in manifest["splits"].items()}
    print(f"wrote {args.output}: {manifest['documents']:,} documents ("
          f"{manifest['split_documents']:,} read in pieces), "
          + ", ".join(f"{split} {n:,} tokens" for split, n in tokens.items()))
    if manifest["too_long_records"]:
        print(f"skipped {manifest['too_long_records']:,} JSONL/CSV records too long to read "
              f"(raise --piece-chars)", file=sys.stderr)


def show_stats(args) -> None:
    from hslm.data.report import report_markdown, shard_tables

    try:
        print(report_markdown(args.prepared))
        if args.shards:
            print(shard_tables(args.shards))
    except ValueError as err:
        raise UsageError(str(err)) from None


COMMANDS = {"prepare": prepare, "tokenizer": train_tokenizer_on_documents, "tokenize": tokenize,
            "stats": show_stats}


@command
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # Settings may come after options (prepare x --output y key=v): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or (extra and args.command != "prepare"):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.inputs += extra
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
