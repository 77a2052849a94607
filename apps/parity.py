"""hslm-parity: check that exported artifacts compute what the PyTorch model computes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from hslm.apps.common import UsageError, command, load_model_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-parity",
        description="Compare exported artifacts (GGUF files, ONNX folders) with the PyTorch "
                    "model on real "
                    "validation text: tokenizer agreement, max/mean |Δlogit|, top-1 agreement, "
                    "mean and p99 KL divergence, perplexity, greedy-generation agreement. "
                    "Each artifact is judged by the limits of its type; the exit code is 1 "
                    "when any artifact fails.",
        epilog="example: hslm-parity runs/demo/train/model runs/demo/model-*.gguf "
               "--text runs/demo/prepared/documents --output runs/demo/parity")
    parser.add_argument("model", help="model folder, training run folder or checkpoint")
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                        help="GGUF files and ONNX folders")
    parser.add_argument("--text", nargs="+", required=True, metavar="INPUT",
                        help="validation text: files, folders or globs in any hslm-data input "
                             "format (text held out from training)")
    parser.add_argument("--windows", type=int, default=4, metavar="N",
                        help="full-context windows of text to compare logits on (default 4)")
    parser.add_argument("--max-lines", type=int, default=2000, metavar="N",
                        help="text lines for tokenizer agreement (default 2000)")
    parser.add_argument("--threads", type=int, metavar="N", help="threads for the artifacts")
    parser.add_argument("--output", "-o", type=Path, default=Path("parity"), metavar="DIR",
                        help="folder for parity.json and parity.md (default ./parity)")
    return parser


def read_validation_text(inputs: list[str], max_lines: int) -> list[str]:
    from hslm.data.sources import SourceError, SourceOptions, read_documents, resolve_inputs

    texts: list[str] = []
    try:
        for path in resolve_inputs(inputs):
            for document in read_documents(path, SourceOptions()):
                texts.append(document.text)
                if len(texts) >= max_lines:
                    return texts
    except SourceError as err:
        raise UsageError(str(err)) from None
    if not texts:
        raise UsageError("the validation text is empty")
    return texts


def run(args) -> bool:
    from hslm.parity import (ParityError, Reference, check_artifact, open_artifact,
                             render_markdown)

    if args.windows < 1 or args.max_lines < 1:
        raise UsageError("--windows and --max-lines must be >= 1")
    model, tokenizer = load_model_folder(args.model)
    model.eval()
    texts = read_validation_text(args.text, args.max_lines)
    try:
        reference = Reference.compute(model, tokenizer, texts, args.windows)
        results = []
        for path in tqdm(args.artifacts, desc="parity", unit="artifact", file=sys.stderr):
            results.append(check_artifact(reference, open_artifact(path, threads=args.threads)))
    except ParityError as err:
        raise UsageError(str(err)) from None
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "windows": args.windows, "text_lines": len(texts),
              "artifacts": [r.to_dict() for r in results],
              "passed": all(r.passed for r in results)}
    (args.output / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(args.model, results)
    (args.output / "parity.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.output / 'parity.json'} and {args.output / 'parity.md'}")
    return report["passed"]


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not run(args):
        print("parity FAILED for at least one artifact", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
