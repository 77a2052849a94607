"""hslm-train: pre-train an hslm model on token shards (CPU or one GPU)."""

from __future__ import annotations

import argparse
import json

from tqdm import tqdm

from hslm.apps.common import UsageError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-train",
        description="Pre-train a model on token shards (see hslm-data tokenize). Checkpoints are "
                    "written atomically under OUT/checkpoints with checksums; running the same "
                    "command again resumes from the newest valid one. At the end the model is "
                    "written to OUT/model, a folder hslm-generate and hslm-export read.",
        epilog="example: hslm-train --config configs/tiny-cpu.yaml data=runs/demo/shards steps=500")
    parser.add_argument("--config", help="YAML/JSON training config (see hslm/train/config.py)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. lr=1e-3 model_overrides.n_layers=6")
    parser.add_argument("--samples", type=int, default=2, help="sample generations at the end")
    return parser


def run(args) -> None:
    from hslm.config import ConfigError, ModelConfig
    from hslm.data.shards import ShardError, TokenShards
    from hslm.export.hf import save_hf
    from hslm.generate import SamplingParams, generate
    from hslm.tokenizer import Tokenizer, TokenizerError
    from hslm.train.config import TrainConfig
    from hslm.train.loop import TrainingError, train

    try:
        config = TrainConfig.load(args.config, args.overrides)
        if not config.data or not config.tokenizer:
            raise UsageError("set data=SHARD_FOLDER and tokenizer=TOKENIZER_FOLDER")
        tokenizer = Tokenizer.load(config.tokenizer)
        shards = TokenShards(config.data, "train")
        if shards.manifest["tokenizer_sha256"] != tokenizer.sha256:
            raise UsageError(f"the shards in {config.data} were made with another tokenizer "
                             f"than {config.tokenizer}")
        model_config = ModelConfig.preset(config.model, vocab_size=tokenizer.vocab_size,
                                          **config.model_overrides)
        if config.seq_len > model_config.context_length:
            raise UsageError(f"seq_len {config.seq_len} exceeds the model's context "
                             f"{model_config.context_length}")
    except (ConfigError, ShardError, TokenizerError) as err:
        raise UsageError(str(err)) from None

    counts = model_config.param_counts()
    print(f"model {config.model}: {counts['total']:,} parameters; {shards.num_tokens:,} training "
          f"tokens; {config.steps} steps of {config.grad_accum * config.micro_batch * config.seq_len:,} tokens")
    bar = tqdm(total=config.steps, desc="training", unit="step")

    def show(record: dict) -> None:
        bar.n = record["step"]
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        bar.refresh()

    try:
        result = train(config, model_config, progress=show)
    except TrainingError as err:
        raise UsageError(str(err)) from None
    finally:
        bar.close()
    folder = save_hf(result.model.cpu(), f"{config.out}/model", tokenizer=tokenizer)
    print(json.dumps({"step": result.step, "val_loss": result.val_loss,
                      "skipped_steps": result.skipped_steps, "model": str(folder)}))
    for prompt in ["भारत की राजधानी", "Kal subah"][:args.samples]:
        sample = generate(result.model, tokenizer, prompt,
                          SamplingParams(max_new_tokens=40, temperature=0.8, top_k=50, seed=0))
        print(f"\n{prompt} → {sample.text}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as err:
        fail(str(err))


if __name__ == "__main__":
    main()
