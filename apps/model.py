"""hslm-model: create a model folder from a preset (random weights) and describe model folders."""

from __future__ import annotations

import argparse
import json

import torch

from hslm.apps.common import UsageError, command, load_model_folder
from hslm.config import ConfigError, ModelConfig, PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hslm-model",
                                     description="Create and inspect hslm model folders.")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser(
        "init", help="write a randomly initialised model + tokenizer as a model folder",
        description="Write a freshly initialised model (a preset or a config file) together with "
                    "a trained tokenizer as a Hugging Face-style model folder. The model's "
                    "vocabulary size is taken from the tokenizer.")
    source = init.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    source.add_argument("--config", help="model config file (JSON or YAML)")
    init.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.model")
    init.add_argument("--output", required=True, help="model folder to write")
    init.add_argument("--seed", type=int, default=0)

    info = commands.add_parser("info", help="print a model folder's config and parameter counts")
    info.add_argument("model", help="model folder")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def init_model(args) -> None:
    from hslm.export.hf import save_hf
    from hslm.model import Gemma3
    from hslm.tokenizer import Tokenizer, TokenizerError

    try:
        tokenizer = Tokenizer.load(args.tokenizer)
    except TokenizerError as err:
        raise UsageError(str(err)) from None
    try:
        if args.config:
            config = ModelConfig.load(args.config)
            config.vocab_size = tokenizer.vocab_size
            config.validate()
        else:
            config = ModelConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    torch.manual_seed(args.seed)
    model = Gemma3(config)
    save_hf(model, args.output, tokenizer=tokenizer)
    counts = config.param_counts()
    print(f"wrote {args.output}: {counts['total']:,} parameters "
          f"({counts['non_embedding']:,} non-embedding), vocab {config.vocab_size:,}")


def describe_model(args) -> None:
    model, tokenizer = load_model_folder(args.model)
    config = model.config
    report = {"config": config.to_dict(), "parameters": config.param_counts(),
              "tokenizer": {"vocab_size": tokenizer.vocab_size, "sha256": tokenizer.sha256}}
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    counts = report["parameters"]
    n_global = config.layer_types.count("full_attention")
    print(f"layers        {config.n_layers} ({config.n_layers - n_global} sliding, {n_global} global)")
    print(f"hidden / ffn  {config.hidden_size} / {config.ffn_size}")
    print(f"heads         {config.n_heads} query, {config.n_kv_heads} key/value, dim {config.head_dim}")
    print(f"window        {config.sliding_window}  context {config.context_length}")
    print(f"rope bases    {config.rope_base_local:g} local, {config.rope_base_global:g} global")
    print(f"vocab         {config.vocab_size:,} (tokenizer {tokenizer.vocab_size:,})")
    print(f"parameters    {counts['total']:,} total, {counts['embedding']:,} embedding, "
          f"{counts['non_embedding']:,} non-embedding")


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    init_model(args) if args.command == "init" else describe_model(args)


if __name__ == "__main__":
    main()
