"""hslm-eval: task accuracy of artifacts on offline Hindi tasks, via lm-evaluation-harness."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hslm.apps.common import UsageError, command


def build_parser() -> argparse.ArgumentParser:
    from hslm.eval.data import DATA_ENV
    from hslm.eval.run import TASK_NAMES

    parser = argparse.ArgumentParser(
        prog="hslm-eval",
        description="Score PyTorch model folders, GGUF files and ONNX folders on Hindi tasks "
                    "with lm-evaluation-harness, offline: " + ", ".join(TASK_NAMES) + ".",
        epilog="example: hslm-eval runs/demo/train/model runs/demo/model-q4.gguf "
               "--tasks hindi_cloze xquad_hi --limit 50 --output runs/demo/eval")
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                        help="model folders, GGUF files, ONNX folders")
    parser.add_argument("--tasks", nargs="+", metavar="NAME", help="tasks to run (or 'all')")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N documents per task")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help=f"the shared Hindi data folder (default ${DATA_ENV} or "
                             "../shared/data/hindi beside the repository)")
    parser.add_argument("--threads", type=int, metavar="N", help="threads for the artifacts")
    parser.add_argument("--output", "-o", type=Path, metavar="DIR",
                        help="folder for results.json and results.md")
    parser.add_argument("--recipe-data", type=Path, metavar="DIR",
                        help="instead of evaluating: write the text and SFT data no task scores "
                             "(DIR/text/*.txt, DIR/sft/*.jsonl) for the configs/ recipe")
    return parser


def run(args) -> None:
    from hslm.eval.data import DATA_ENV, EvalDataError, write_pretraining_text, write_sft_data
    from hslm.eval.run import TASK_NAMES, EvalError, check_tasks, evaluate, write_results

    if args.data is not None:
        if not args.data.is_dir():
            raise UsageError(f"--data: no such folder: {args.data}")
        os.environ[DATA_ENV] = str(args.data)
    try:
        if args.recipe_data is not None:
            for name, count in {**write_pretraining_text(args.recipe_data / "text"),
                                **write_sft_data(args.recipe_data / "sft")}.items():
                print(f"{name}: {count}")
            return
        if not args.artifacts or not args.tasks or args.output is None:
            raise UsageError("give ARTIFACT..., --tasks and --output (or --recipe-data DIR)")
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit must be >= 1")
        tasks = list(TASK_NAMES) if args.tasks == ["all"] else check_tasks(args.tasks)
        missing = [path for path in args.artifacts if not Path(path).exists()]
        if missing:
            raise UsageError(f"artifact not found: {missing[0]}")
        results = []
        for artifact in args.artifacts:
            print(f"evaluating {artifact}", file=sys.stderr)
            results.append(evaluate(artifact, tasks, args.limit, args.threads))
    except (EvalError, EvalDataError) as err:
        raise UsageError(str(err)) from None
    write_results(results, args.output)
    print((args.output / "results.md").read_text())
    print(f"wrote {args.output / 'results.json'} and {args.output / 'results.md'}")


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
