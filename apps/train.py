"""hslm-train: pre-train or fine-tune an hslm model, in one process or under torchrun."""

from __future__ import annotations

import argparse
import json

from tqdm import tqdm

from hslm.apps.common import UsageError, command

EXIT_STOPPED = 3  # stopped by a signal after checkpointing: run the same command to resume


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Pre-train on token shards (task=pretrain, see hslm-data tokenize) or fine-tune on JSONL
conversations (task=sft, with init_from=a pre-trained model or run). Keys and defaults:
hslm/train/config.py; example configs: configs/.

Checkpoints are written atomically under OUT/checkpoints with checksums (the last keep_last
plus the best by validation loss); running the same command again resumes from the newest
valid one, also after a crash, if the settings are the checkpoint's (see SAFE_TO_CHANGE in
hslm/train/config.py; resume=force continues anyway). OUT/run.lock keeps a second run out of
OUT. SIGTERM or Ctrl-C checkpoints after the current step and exits with code 3; a failed
checkpoint write (full disk) stops the run with exit code 2 and keeps the previous one.
Metrics: OUT/metrics.jsonl (and OUT/logs/rank_N.jsonl per rank), fsynced every record. At
the end the model is written to OUT/model, a folder hslm-generate and hslm-export read (they
also read OUT itself or a checkpoint file).

Several processes (DDP; NCCL on GPUs, gloo on CPUs):
  torchrun --nproc-per-node 8 --no-python hslm-train --config configs/hindi-270m-gpu.yaml ...""",
        epilog="example: hslm-train --config configs/tiny-cpu.yaml data=runs/demo/shards "
               "tokenizer=runs/demo/tokenizer steps=500")
    parser.add_argument("--config", help="YAML/JSON training config")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. lr=1e-3 model_overrides.n_layers=6")
    parser.add_argument("--samples", type=int, default=2, help="sample generations at the end")
    return parser


def run(args) -> int:
    from hslm.config import ConfigError
    from hslm.export.hf import save_hf
    from hslm.tokenizer import Tokenizer, TokenizerError
    from hslm.train import distributed
    from hslm.train.config import TrainConfig
    from hslm.train.evaluate import sample_generations
    from hslm.train.loop import TrainingError, train

    try:
        config = TrainConfig.load(args.config, args.overrides)
        if not config.data or not config.tokenizer:
            raise UsageError("set data=... (shards or conversations) and tokenizer=FOLDER")
        if config.task == "sft" and not config.init_from:
            print("warning: task=sft without init_from fine-tunes a randomly initialised model")
        tokenizer = Tokenizer.load(config.tokenizer)
        world = distributed.setup(config.device, config.collective_timeout, config.parallel)
    except (ConfigError, TokenizerError) as err:
        raise UsageError(str(err)) from None

    bar = None
    if world.is_main:
        print(f"{config.task} on {world.world_size} x {world.device}: {config.steps} steps of "
              f"{config.batch_tokens:,} tokens ({config.precision})")
        bar = tqdm(total=config.steps, desc="training", unit="step")

    def show(record: dict) -> None:
        bar.n = record["step"]
        mfu = f"{100 * record['mfu']:.1f}%" if record["mfu"] is not None else "n/a"
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                        tok_s=f"{record['tokens_per_s']:.0f}", mfu=mfu)
        bar.refresh()
        if "val_loss" in record:
            bar.write(f"step {record['step']}: val loss {record['val_loss']:.3f}, "
                      f"bits/byte {record['val_bpb']:.3f}")
            for sample in record.get("samples", []):
                bar.write(f"  {sample}")

    try:
        result = train(config, tokenizer, world, progress=show)
    except (TrainingError, ConfigError) as err:
        raise UsageError(str(err)) from None
    except distributed.CollectiveError as err:
        raise UsageError(f"rank {world.rank}: another rank died or did not answer within "
                         f"collective_timeout={config.collective_timeout} s ({err})") from None
    finally:
        if bar is not None:
            bar.close()
        distributed.teardown(world)
    if not world.is_main:
        return 0
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}; checkpoint written. "
              "Run the same command to resume.")
        return EXIT_STOPPED
    try:
        folder = save_hf(result.model.cpu(), f"{config.out}/model", tokenizer=tokenizer)
    except OSError as err:
        raise UsageError(f"cannot write the model to {config.out}/model: {err}; the last "
                         "checkpoint in OUT/checkpoints has the same weights") from None
    summary = {"step": result.step, "tokens": result.tokens, "skipped_steps": result.skipped_steps,
               **{k: v for k, v in result.evaluation.items() if k != "samples"},
               "model": str(folder)}
    print(json.dumps(summary))
    for sample in sample_generations(result.model, tokenizer, config.task, args.samples,
                                     max_new_tokens=40):
        print(f"\n{sample}")
    return 0


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    code = run(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
