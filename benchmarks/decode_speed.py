"""CPU decode speed: hslm.generate vs transformers' generate on identical hindi-270m weights.

Batch 1, a 128-token prompt, 64 new tokens (greedy, no early stop), both libraries timed in
the same run and interleaved so machine noise hits both alike. Tokens/s counts new tokens over
the whole call (prefill included), as a user waiting for the answer sees it.

    python benchmarks/decode_speed.py [--dtypes float32 bfloat16] [--repeats 5]

Writes benchmarks/results/decode_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hslm.config import ModelConfig
from hslm.export.hf import load_hf, save_hf
from hslm.generate import SamplingParams, generate_ids
from hslm.model import Gemma3

RESULTS = Path(__file__).parent / "results"


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_dtype(dtype_name: str, folder: Path, prompt: list[int], new_tokens: int,
                repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    ours = load_hf(folder, dtype=dtype).eval()
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    prompt_tensor = torch.tensor([prompt])

    def run_ours():
        assert len(list(generate_ids(ours, prompt, params))) == new_tokens

    def run_theirs():
        with torch.inference_mode():
            theirs.generate(prompt_tensor, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False)

    run_ours(), run_theirs()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(time_call(run_ours))
        theirs_s.append(time_call(run_theirs))
    ours_tps = [new_tokens / s for s in ours_s]
    theirs_tps = [new_tokens / s for s in theirs_s]
    return {
        "dtype": dtype_name,
        "hslm_tokens_per_s": statistics.mean(ours_tps),
        "hslm_stdev": statistics.stdev(ours_tps) if repeats > 1 else 0.0,
        "transformers_tokens_per_s": statistics.mean(theirs_tps),
        "transformers_stdev": statistics.stdev(theirs_tps) if repeats > 1 else 0.0,
        "speedup": statistics.mean(theirs_s) / statistics.mean(ours_s),
        "hslm_seconds": ours_s,
        "transformers_seconds": theirs_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    torch.manual_seed(0)
    config = ModelConfig.preset("hindi-270m")
    prompt = torch.randint(6, config.vocab_size, (args.prompt_tokens,)).tolist()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        save_hf(Gemma3(config), folder)
        for dtype_name in args.dtypes:
            rows.append(bench_dtype(dtype_name, Path(folder), prompt, args.new_tokens, args.repeats))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("seconds")}))

    report = {
        "benchmark": "decode_speed", "model": "hindi-270m (random weights, seed 0)",
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
        "transformers": transformers.__version__, "machine": platform.machine(),
        "processor": platform.processor(), "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# CPU decode speed: hslm vs transformers (hindi-270m, batch 1)",
        "",
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, {args.threads} "
        f"threads, {args.repeats} runs after a warm-up; tokens/s = new tokens / whole call. "
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        "| dtype | hslm tok/s | transformers tok/s | speed-up |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['dtype']} | {row['hslm_tokens_per_s']:.1f} ± {row['hslm_stdev']:.1f} "
                     f"| {row['transformers_tokens_per_s']:.1f} ± {row['transformers_stdev']:.1f} "
                     f"| {row['speedup']:.2f}× |")
    (RESULTS / "decode_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
