"""hslm-serve: an OpenAI-compatible HTTP server for any hslm model."""

from __future__ import annotations

import argparse
import os

from hslm.apps.common import DTYPES, command, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-serve",
        description="Serve a model over OpenAI's API: POST /v1/chat/completions and "
                    "/v1/completions (stream=true for server-sent events; response_format "
                    "json_schema / json_object for guided JSON that is complete within "
                    "max_tokens; logprobs, echo), GET /v1/models[/ID] and /health. MODEL is a "
                    "model folder, training run or checkpoint (PyTorch), a .gguf file "
                    "(llama.cpp) or an ONNX folder. Requests are answered one at a time, in "
                    "arrival order; --max-queue more wait, beyond that clients get 429 with "
                    "Retry-After. Bound to 127.0.0.1 (the default) the server answers only "
                    "requests addressed to localhost; before binding another address, set "
                    "--api-key.",
        epilog="example: hslm-serve runs/demo/model-q4.gguf --port 8000, then "
               "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')")
    parser.add_argument("model", help="model folder, run folder, checkpoint or .gguf file")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument("--api-key", default=os.environ.get("HSLM_API_KEY"), metavar="KEY",
                        help="clients must send 'Authorization: Bearer KEY' (default: "
                             "$HSLM_API_KEY; none: no key needed)")
    parser.add_argument("--cors-origin", nargs="+", default=[], metavar="ORIGIN",
                        help="web pages (e.g. http://localhost:3000) whose scripts may call the "
                             "server (default: none)")
    parser.add_argument("--max-queue", type=int, default=64, metavar="N",
                        help="requests that may wait for their turn (default 64)")
    parser.add_argument("--timeout", type=float, default=300, metavar="S",
                        help="seconds a request may take from arrival to its last token, "
                             "waiting included (default 300)")
    parser.add_argument("--name", help="model id clients use (default: the file/folder name)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model")
    parser.add_argument("--ctx", type=int, metavar="TOKENS",
                        help="GGUF/ONNX KV cache length (default: the model's; GGUF at most 4096)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="PyTorch only")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_queue < 0 or args.timeout <= 0:
        fail("--max-queue must be >= 0 and --timeout > 0")
    if args.api_key == "":
        fail("--api-key (or HSLM_API_KEY) is empty")
    from hslm.runtime import RuntimeLoadError, load
    from hslm.runtime.server import serve

    try:
        runtime = load(args.model, threads=args.threads, dtype=args.dtype, context_length=args.ctx)
        server = serve(runtime, args.host, args.port, args.name, args.verbose,
                       api_key=args.api_key, cors_origins=args.cors_origin,
                       max_queue=args.max_queue, timeout=args.timeout)
    except RuntimeLoadError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot listen on {args.host}:{args.port}: {err.strerror}")
    host, port = server.server_address[:2]
    key = "an API key" if args.api_key else "no API key"
    print(f"serving {server.model_name} ({runtime.backend}) on http://{host}:{port}/v1 with "
          f"{key} — Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
