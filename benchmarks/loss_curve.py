"""Loss curve of the `tiny` model trained on the shared Hindi data for a fixed CPU budget.

Trains an 8k tokenizer on every shared Hindi text file, tokenizes them (5% held out), times a
few training steps to choose the step count that fits the budget, then runs hslm-train's loop
(cosine schedule over that many steps) and records validation loss and bits per byte.

    python benchmarks/loss_curve.py [--minutes 20] [--data ../shared/data/hindi] [--keep DIR]

Writes benchmarks/results/loss_curve.{json,md} and loss_curve.png (with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hslm.config import ModelConfig
from hslm.data.shards import TokenShards, write_shards_from_texts
from hslm.export.hf import save_hf
from hslm.model import Gemma3
from hslm.tokenizer import Tokenizer, read_lines
from hslm.tokenizer_train import train_tokenizer
from hslm.train.config import TrainConfig
from hslm.train.distributed import World
from hslm.train.loop import TrainStep, train

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent


def seconds_per_step(config: TrainConfig, vocab_size: int, shards: TokenShards) -> float:
    model = Gemma3(ModelConfig.preset(config.model, vocab_size=vocab_size, **config.model_overrides))
    step = TrainStep(model.train(), config, World(0, 1, 0, torch.device("cpu")))
    batch = [shards.batch(0, 0, config.micro_batch, config.seq_len, 0)]
    step(batch, config.lr)  # warm-up
    started = time.perf_counter()
    for _ in range(5):
        step(batch, config.lr)
    return (time.perf_counter() - started) / 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="CPU budget for training")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hindi")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny-cpu.yaml")
    parser.add_argument("--keep", type=Path, help="also save the trained model folder here")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.txt"))
    if not files:
        raise SystemExit(f"no *.txt files in {args.data}")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        train_tokenizer(files, work / "tokenizer", vocab_size=8000)
        tokenizer = Tokenizer.load(work / "tokenizer")
        texts = [line for path in files for line in read_lines(path) if line.strip()]
        write_shards_from_texts(texts, tokenizer, work / "shards", val_fraction=0.05)
        shards = TokenShards(work / "shards")
        overrides = [f"data={work / 'shards'}", f"tokenizer={work / 'tokenizer'}",
                     f"out={work / 'run'}", "eval_samples=0"]
        probe = TrainConfig.load(args.config, overrides)
        step_seconds = seconds_per_step(probe, tokenizer.vocab_size, shards)
        # About 10% of the time goes to evaluations and checkpoints.
        steps = max(50, int(args.minutes * 60 * 0.9 / step_seconds))
        config = TrainConfig.load(args.config, overrides + [
            f"steps={steps}", f"warmup={max(1, steps // 20)}", f"eval_every={max(1, steps // 20)}",
            "eval_batches=16", f"checkpoint_every={steps}", "log_every=50"])
        print(f"{step_seconds:.2f} s/step → {steps} steps in {args.minutes} min "
              f"({shards.num_tokens:,} training tokens)")
        started = time.perf_counter()
        result = train(config, tokenizer)
        elapsed = time.perf_counter() - started
        records = [json.loads(line) for line in open(work / "run" / "metrics.jsonl")]
        if args.keep:
            save_hf(result.model, args.keep, tokenizer=tokenizer)

    curve = [{k: r[k] for k in ("step", "tokens", "val_loss", "val_bpb")}
             for r in records if "val_bpb" in r]
    report = {"benchmark": "loss_curve", "model": config.model, "minutes_budget": args.minutes,
              "minutes_used": elapsed / 60, "steps": result.step, "batch_tokens": config.batch_tokens,
              "train_tokens_available": shards.num_tokens, "precision": config.precision,
              "threads": torch.get_num_threads(), "data": [p.name for p in files], "curve": curve}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loss_curve.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# tiny on the shared Hindi data: {elapsed / 60:.1f} CPU minutes",
             "", f"{result.step} steps × {config.batch_tokens:,} tokens ({config.precision}, "
             f"{torch.get_num_threads()} threads), 8k tokenizer, validation = 5% of documents.",
             "", "| step | tokens seen | val loss | val bits/byte |", "|---|---|---|---|"]
    lines += [f"| {c['step']} | {c['tokens']:,} | {c['val_loss']:.3f} | {c['val_bpb']:.3f} |"
              for c in curve]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot([c["tokens"] / 1e6 for c in curve], [c["val_bpb"] for c in curve], marker="o")
        axis.set_xlabel("training tokens (millions)")
        axis.set_ylabel("validation bits per byte")
        axis.set_title(f"tiny, {elapsed / 60:.0f} CPU minutes")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(RESULTS / "loss_curve.png", dpi=120)
        lines += ["", "![validation bits per byte](loss_curve.png)"]
    except ImportError:
        lines += ["", "(install matplotlib for the plot)"]
    (RESULTS / "loss_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
