"""hslm-bench: latency, throughput, memory and energy of models across backends and sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from hslm.apps.common import UsageError, command

SIZE_PRESETS = ("hindi-270m", "hindi-1b", "hindi-4b")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-bench",
        description="Benchmark models with llama-bench's conventions: prompt processing (pp) "
                    "and generation (tg) tokens/s, TPOT and TTFT percentiles, an agent-style "
                    "request with guided JSON, load time, file size, peak RSS, bytes read per "
                    "token, roofline efficiency against the measured memory bandwidth, and "
                    "energy where the machine has counters. Each case runs in its own process. "
                    "Writes bench.json (+ its JSON schema), bench.md and plots.",
        epilog="example: hslm-bench runs/demo/train/model runs/demo/model-q4.gguf "
               "--sizes hindi-270m hindi-1b --tokenizer runs/demo/tokenizer")
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                        help="model folders (PyTorch), GGUF files (llama.cpp), ONNX folders")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for every backend (default: the physical cores)")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs (default 1)")
    parser.add_argument("--n-prompt", type=int, default=512, help="pp prompt tokens (512)")
    parser.add_argument("--n-gen", type=int, default=128, help="tg generated tokens (128)")
    parser.add_argument("--no-agent", action="store_true", help="skip the agent request")
    parser.add_argument("--no-llama-bench", action="store_true",
                        help="do not run llama.cpp's own llama-bench on GGUF files (it runs "
                             "when hslm-native build has built it)")
    parser.add_argument("--compile", action="store_true",
                        help="also run model folders with torch.compile (slow to start: "
                             "decoding recompiles for each sliding-window ring position until "
                             "torch's recompile limit, then runs those steps eagerly)")
    parser.add_argument("--sizes", nargs="*", default=[], choices=SIZE_PRESETS,
                        help="also random-weight q4 GGUF models of these Gemma 3 shapes "
                             "(needs --tokenizer; hindi-4b needs ~14 GB of memory to build)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for --sizes")
    parser.add_argument("--assume-watts", type=float, metavar="W",
                        help="without energy counters, estimate J/token as W × time per token "
                             "(labelled an estimate everywhere; default: report 'unavailable')")
    parser.add_argument("--output", "-o", type=Path, default=Path("bench"), metavar="DIR",
                        help="report folder (default ./bench); size models are cached in "
                             "DIR/models")
    return parser


def run(args) -> list[Path]:
    from hslm.bench import llama_bench
    from hslm.bench.machine import machine_info, memory_bandwidth_gbs, physical_cores
    from hslm.bench.report import derive, write_report
    from hslm.bench.run import BenchError, plan_case, run_case, size_model_case
    from hslm.native import NativeBuildError

    if not args.artifacts and not args.sizes:
        raise UsageError("nothing to benchmark: give artifacts and/or --sizes")
    if args.sizes and not args.tokenizer:
        raise UsageError("--sizes needs --tokenizer (the vocabulary of the random models)")
    if min(args.repeat, args.n_prompt, args.n_gen) < 1 or args.warmup < 0:
        raise UsageError("--repeat, --n-prompt and --n-gen must be >= 1, --warmup >= 0")
    if args.assume_watts is not None and args.assume_watts <= 0:
        raise UsageError("--assume-watts must be > 0")
    threads = args.threads or physical_cores()
    with_llama_bench = not args.no_llama_bench and llama_bench.available()
    if not args.no_llama_bench and not with_llama_bench:
        print("llama-bench is not built (hslm-native build): no llama.cpp figures beside "
              "hslm's", file=sys.stderr)
    try:
        cases = [case for path in args.artifacts for case in plan_case(path, args.compile)]
        cases += [size_model_case(preset, args.tokenizer, args.output / "models")
                  for preset in tqdm(args.sizes, desc="building size models", unit="model",
                                     file=sys.stderr)]
        print(f"measuring memory bandwidth with {threads} threads ...", file=sys.stderr)
        bandwidth = memory_bandwidth_gbs(threads)
        results = []
        for case in tqdm(cases, desc="benchmarking", unit="case", file=sys.stderr):
            result = run_case(case, threads, args.repeat, args.warmup, args.n_prompt,
                              args.n_gen, not args.no_agent)
            result["derived"] = derive(result, bandwidth, args.assume_watts)
            if with_llama_bench and case.backend == "llama.cpp":
                result["llama_bench"] = llama_bench.run_llama_bench(
                    case.path, threads, args.repeat, result["pp"]["n_prompt"],
                    result["tg"]["n_gen"])
            results.append(result)
    except (BenchError, NativeBuildError) as err:
        raise UsageError(str(err)) from None
    report = {"tool": "hslm-bench", "machine": machine_info(),
              "settings": {"threads": threads, "repeat": args.repeat, "warmup": args.warmup,
                           "n_prompt": args.n_prompt, "n_gen": args.n_gen,
                           "assumed_watts": args.assume_watts},
              "bandwidth_gbs": bandwidth, "cases": results}
    written = write_report(report, args.output)
    print((args.output / "bench.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))
    return written


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
