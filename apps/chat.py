"""hslm-chat: chat with a model in the terminal, in Gemma's chat format, on any backend."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hslm.apps.common import DTYPES, command, fail

HELP = """commands:
  /json FILE     answer as JSON following the schema in FILE (guided decoding)
  /regex RE      answer matching the regular expression RE
  /text          free answers again
  /system TEXT   set the system prompt (and start over)
  /reset         forget the conversation
  /exit          quit (or Ctrl-D)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-chat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chat with a model folder, training run, checkpoint (PyTorch) or .gguf file "
                    "(llama.cpp). Answers stream as they are generated; the oldest turns are "
                    "dropped when the conversation outgrows the model's context.\n\n" + HELP)
    parser.add_argument("model", help="model folder, run folder, checkpoint or .gguf file")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="> 1 discourages tokens already in the conversation (1 = off)")
    parser.add_argument("--frequency-penalty", type=float, default=0.0,
                        help="OpenAI's: logit -= F x times the token was generated (-2 to 2)")
    parser.add_argument("--presence-penalty", type=float, default=0.0,
                        help="OpenAI's: logit -= P if the token was generated (-2 to 2)")
    parser.add_argument("--seed", type=int, help="same seed, same answers")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--ctx", type=int, metavar="TOKENS",
                        help="GGUF/ONNX KV cache length (default: the model's; GGUF at most 4096)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="PyTorch only")
    return parser


def fit_history(runtime, system: str | None, turns: list[dict], room_for_answer: int) -> list[dict]:
    """The newest turns (whole user/model pairs) whose prompt leaves room for the answer."""
    while True:
        messages = ([{"role": "system", "content": system}] if system else []) + turns
        if len(runtime.encode_chat(messages)) + room_for_answer <= runtime.context_length \
                or len(turns) <= 1:
            return messages
        turns = turns[2:]


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from hslm.generate import Generation, SamplingParams
    from hslm.runtime import RuntimeLoadError, load
    from hslm.runtime.guided import GuideError

    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                                repetition_penalty=args.repetition_penalty,
                                frequency_penalty=args.frequency_penalty,
                                presence_penalty=args.presence_penalty, seed=args.seed)
        runtime = load(args.model, threads=args.threads, dtype=args.dtype, context_length=args.ctx)
    except (RuntimeLoadError, ValueError) as err:
        fail(str(err))
    interactive = sys.stdin.isatty()
    print(f"{runtime.name} ({runtime.backend}, context {runtime.context_length}); /help for "
          "commands", file=sys.stderr)
    system, turns, constraint = args.system, [], {}
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        command, _, rest = line.strip().partition(" ")
        if not line.strip():
            continue
        if command == "/exit":
            break
        if command == "/help":
            print(HELP, file=sys.stderr)
            continue
        if command in ("/reset", "/system"):
            turns = []
            if command == "/system":
                system = rest or None
            print("(conversation reset)", file=sys.stderr)
            continue
        if command in ("/json", "/regex", "/text"):
            try:
                if command == "/json":
                    constraint = {"json_schema": json.loads(Path(rest).read_text(encoding="utf-8"))}
                else:
                    constraint = {"regex": rest} if command == "/regex" else {}
                runtime.guide(**constraint)  # refuse a bad constraint now
                print(f"(answers: {command[1:]})", file=sys.stderr)
            except (OSError, ValueError) as err:
                print(f"error: {err}", file=sys.stderr)
                constraint = {}
            continue
        turns.append({"role": "user", "content": line})
        messages = fit_history(runtime, system, turns, args.max_new_tokens)
        turns = [m for m in messages if m["role"] != "system"]
        result = Generation(text="")
        try:
            for piece in runtime.chat_stream(messages, params, result=result, **constraint):
                print(piece, end="", flush=True)
        except (GuideError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            turns.pop()
            continue
        except KeyboardInterrupt:
            print(" [interrupted]", file=sys.stderr)
        print()
        turns.append({"role": "assistant", "content": result.text})


if __name__ == "__main__":
    main()
