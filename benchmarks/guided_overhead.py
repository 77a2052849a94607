"""Cost of guided decoding on each backend: the same greedy chat answer of up to 48 tokens
generated free and under a JSON schema, per-token time of each, and the time the guide itself
takes per token (llguidance's mask, applying it, following the chosen token).

    python benchmarks/guided_overhead.py ARTIFACT... [--threads 2] [--repeat 5]

ARTIFACT is anything `hslm.runtime.load` takes: a model folder (PyTorch), a GGUF file
(llama.cpp), an ONNX folder (ONNX Runtime). The guide's share of decode time is its µs/token
÷ the free decode's ms/token (target ≤ 5%); the end-to-end difference between guided and free
generation is reported too, but it also contains that the two answers differ in content.

Writes benchmarks/results/guided_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from hslm.bench.measure import AGENT_SCHEMA, agent_prompt
from hslm.generate import SamplingParams, generate_ids
from hslm.runtime import load

RESULTS = Path(__file__).parent / "results"
ANSWER_TOKENS = 48


class TimedGuide:
    """A guide that adds up the time spent in it."""

    def __init__(self, guide):
        self.guide = guide
        self.seconds = 0.0

    def mask_logits(self, logits):
        start = time.perf_counter()
        masked = self.guide.mask_logits(logits)
        self.seconds += time.perf_counter() - start
        return masked

    def fit(self, token_id: int, remaining: int) -> int:
        start = time.perf_counter()
        token_id = self.guide.fit(token_id, remaining)
        self.seconds += time.perf_counter() - start
        return token_id

    def advance(self, token_id: int) -> None:
        start = time.perf_counter()
        self.guide.advance(token_id)
        self.seconds += time.perf_counter() - start

    @property
    def done(self) -> bool:
        return self.guide.done


def decode(runtime, prompt: list[int], guided: bool) -> tuple[float, int, float]:
    """(seconds, tokens, seconds inside the guide) of one greedy answer after the prompt."""
    params = SamplingParams(max_new_tokens=ANSWER_TOKENS, temperature=0.0)
    guide = TimedGuide(runtime.guide(json_schema=AGENT_SCHEMA)) if guided else None
    start = time.perf_counter()
    count = sum(1 for _ in generate_ids(runtime.source, prompt, params, guide=guide))
    return time.perf_counter() - start, count, guide.seconds if guide else 0.0


def measure(path: str, threads: int, repeat: int) -> dict:
    runtime = load(path, threads=threads)
    prompt = agent_prompt(runtime)
    decode(runtime, prompt, guided=False)  # warm-up
    decode(runtime, prompt, guided=True)
    free, guided, guide_share, guide_us = [], [], [], []
    for _ in range(repeat):
        seconds, count, _ = decode(runtime, prompt, guided=False)
        free_per_token = seconds / count
        free.append(free_per_token * 1000)
        seconds, count, inside = decode(runtime, prompt, guided=True)
        guided.append(seconds / count * 1000)
        guide_us.append(inside / count * 1e6)
        guide_share.append(inside / count / free_per_token)
    return {"artifact": path, "backend": runtime.backend, "prompt_tokens": len(prompt),
            "free_ms_per_token": free, "guided_ms_per_token": guided,
            "guide_us_per_token": guide_us, "guide_share_of_decode": guide_share}


def render(results: list[dict], threads: int) -> str:
    def pm(values, scale=1.0, digits=2):
        mean = statistics.fmean(values) * scale
        spread = (statistics.stdev(values) if len(values) > 1 else 0.0) * scale
        return f"{mean:.{digits}f} ± {spread:.{digits}f}"

    lines = ["# Guided decoding overhead", "",
             f"{platform.processor() or platform.machine()}, {threads} threads. A ~200-token "
             f"Hindi chat prompt, a greedy answer of up to {ANSWER_TOKENS} tokens, free and "
             "under a JSON schema (hslm-bench's agent request); mean ± standard deviation "
             "over the runs.", "",
             "| artifact | backend | free ms/token | guided ms/token | guide µs/token | "
             "guide share of decode (target ≤ 5%) |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {Path(r['artifact']).name} | {r['backend']} | "
                     f"{pm(r['free_ms_per_token'])} | {pm(r['guided_ms_per_token'])} | "
                     f"{pm(r['guide_us_per_token'], digits=0)} | "
                     f"{pm(r['guide_share_of_decode'], 100, 1)}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(path, args.threads, args.repeat) for path in args.artifacts]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "guided_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results, args.threads)
    (args.results / "guided_overhead.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
