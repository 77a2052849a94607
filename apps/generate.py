"""hslm-generate: stream text from an hslm model folder on the CPU (or any torch device)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hslm.apps.common import DTYPES, command, fail
from hslm.generate import Generation, SamplingParams


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-generate",
        description="Generate Hindi text from an hslm model folder (a Hugging Face-style folder "
                    "with config.json, model.safetensors and tokenizer files), a GGUF file "
                    "(llama.cpp) or an ONNX folder (ONNX Runtime), streaming it to the "
                    "terminal. Sampling is the same on all of them.",
        epilog="example: hslm-generate runs/demo/model --prompt 'भारत की राजधानी' --temperature 0.8")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("model", nargs="?", help="model folder (PyTorch)")
    source.add_argument("--gguf", metavar="FILE", help="a GGUF file, run by llama.cpp")
    source.add_argument("--onnx", metavar="DIR",
                        help="an ONNX folder (hslm-export --onnx), run by ONNX Runtime")
    parser.add_argument("--prompt", help="prompt text (default: read from standard input)")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt as a user turn in the Gemma chat template")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0 = off")
    parser.add_argument("--top-p", type=float, default=0.95, help="1 = off")
    parser.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.1, help="1 = off")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop when this text appears (repeatable)")
    parser.add_argument("--seed", type=int, help="same seed, same text")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="PyTorch only")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--ctx", type=int, metavar="TOKENS",
                        help="GGUF/ONNX KV cache length (default: the model's; GGUF at most 4096)")
    parser.add_argument("--no-bos", action="store_true", help="do not prepend <bos>")
    return parser


@command
def main(argv: list[str] | None = None) -> None:
    from hslm.runtime import load
    from hslm.runtime.engine import is_onnx_path

    args = build_parser().parse_args(argv)
    if args.onnx and not is_onnx_path(Path(args.onnx)):  # else it would be taken for PyTorch's
        fail(f"{args.onnx} is not an ONNX folder (no model.onnx); export one with "
             "hslm-export --onnx")
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    try:
        params = SamplingParams(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            stop_strings=args.stop, seed=args.seed)
        runtime = load(args.gguf or args.onnx or args.model, threads=args.threads,
                       dtype=args.dtype, device=args.device, context_length=args.ctx)
        if args.chat:
            prompt_ids = runtime.encode_chat([{"role": "user", "content": prompt}])
        else:
            prompt_ids = runtime.tokenizer.encode(prompt, add_bos=not args.no_bos)
        result = Generation(text="")
        for piece in runtime.stream(prompt_ids, params, result=result):
            print(piece, end="", flush=True)
    except ValueError as err:
        fail(str(err))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130)
    print()
    print(f"[{len(result.token_ids)} tokens, finished by {result.finish_reason}]", file=sys.stderr)


if __name__ == "__main__":
    main()
