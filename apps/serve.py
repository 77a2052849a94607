"""hslm-serve: an OpenAI-compatible HTTP server for any hslm model."""

from __future__ import annotations

import argparse

from hslm.apps.common import DTYPES, UsageError, command, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-serve",
        description="Serve a model over OpenAI's API: POST /v1/chat/completions and "
                    "/v1/completions (with stream=true for server-sent events, and "
                    "response_format json_schema / json_object for guided JSON), GET /v1/models. "
                    "MODEL is a model folder, training run or checkpoint (PyTorch) or a .gguf "
                    "file (llama.cpp). Requests are answered one at a time, in order.",
        epilog="example: hslm-serve runs/demo/model-q4.gguf --port 8000, then "
               "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')")
    parser.add_argument("model", help="model folder, run folder, checkpoint or .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
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
    from hslm.runtime import RuntimeLoadError, load
    from hslm.runtime.server import serve

    try:
        runtime = load(args.model, threads=args.threads, dtype=args.dtype, context_length=args.ctx)
        server = serve(runtime, args.host, args.port, args.name, args.verbose)
    except RuntimeLoadError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot listen on {args.host}:{args.port}: {err.strerror}")
    host, port = server.server_address[:2]
    print(f"serving {server.model_name} ({runtime.backend}) on http://{host}:{port}/v1 "
          "— Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        fail(str(err))
