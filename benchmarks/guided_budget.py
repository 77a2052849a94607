"""Guided JSON within a token budget: how often the answer is complete, schema-valid JSON when
`max_tokens` ends generation, with the budget check (`Guide.fit`, what hslm does) and without
it (the guide only masks, as before), and what the check costs: its own time per token
(`fit`, timed inside the loop) and the tokens/s of each mode.

    python benchmarks/guided_budget.py ARTIFACT [--max-tokens 64] [--seeds 3] [--threads 1]

ARTIFACT is anything `hslm.runtime.load` takes (the demo's runs/demo/model-q4.gguf, a model
folder, an ONNX folder). The 30 schemas are Hindi agent requests (addresses, bookings, intents,
keyword lists, nested objects; strings without maxLength) in benchmarks/data/guided_schemas.json;
each is asked with `--seeds` seeds at temperature 1 (a weak model wanders, which is the point).

Writes benchmarks/results/guided_budget.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jsonschema

from hslm.generate import Generation, SamplingParams, stream
from hslm.runtime import load

HERE = Path(__file__).parent
SCHEMAS = HERE / "data" / "guided_schemas.json"
RESULTS = HERE / "results"


class MaskOnly:
    """A guide without the budget check: what guided decoding did before."""

    def __init__(self, guide):
        self.guide = guide

    def mask_logits(self, logits):
        return self.guide.mask_logits(logits)

    def fit(self, token_id: int, remaining: int) -> int:
        return token_id

    def advance(self, token_id: int) -> None:
        self.guide.advance(token_id)

    @property
    def done(self) -> bool:
        return self.guide.done


class TimedFit(MaskOnly):
    """The guide with its budget check, adding up the time the check takes."""

    def __init__(self, guide):
        super().__init__(guide)
        self.seconds = 0.0

    def fit(self, token_id: int, remaining: int) -> int:
        start = time.perf_counter()
        token_id = self.guide.fit(token_id, remaining)
        self.seconds += time.perf_counter() - start
        return token_id


def valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def answer(runtime, prompt: list[int], params: SamplingParams, guide) -> tuple[Generation, float]:
    result = Generation(text="")
    start = time.perf_counter()
    with runtime.lock:
        for _ in stream(runtime.source, runtime.tokenizer, prompt, params, result=result,
                        guide=guide):
            pass
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    runtime = load(args.artifact, threads=args.threads)
    schemas = json.loads(SCHEMAS.read_text(encoding="utf-8"))
    rows, totals = [], {mode: {"valid": 0, "stop": 0, "tokens": 0, "seconds": 0.0}
                        for mode in ("budget", "mask_only", "unguided")}
    fit_seconds = 0.0
    for name, schema in schemas.items():
        prompt = runtime.encode_chat([{"role": "user", "content":
                                        f"{name}: इस अनुरोध का उत्तर JSON में दीजिए।"}])
        shortest = len(runtime.guide(json_schema=schema).closing_path() or [])
        row = {"schema": name, "shortest_answer_tokens": shortest}
        for mode in totals:
            ok = 0
            for seed in range(args.seeds):
                params = SamplingParams(max_new_tokens=args.max_tokens, temperature=1.0, seed=seed)
                guide = runtime.guide(json_schema=schema) if mode != "unguided" else None
                guide = MaskOnly(guide) if mode == "mask_only" else \
                    TimedFit(guide) if mode == "budget" else None
                result, seconds = answer(runtime, prompt, params, guide)
                fit_seconds += guide.seconds if mode == "budget" else 0.0
                is_valid = valid(result.text, schema)
                ok += is_valid
                totals[mode]["valid"] += is_valid
                totals[mode]["stop"] += result.finish_reason == "stop"
                totals[mode]["tokens"] += len(result.token_ids)
                totals[mode]["seconds"] += seconds
            row[f"{mode}_valid"] = f"{ok}/{args.seeds}"
        rows.append(row)
        print(row, flush=True)
    answers = len(schemas) * args.seeds
    summary = {mode: {"valid_json": t["valid"], "answers": answers,
                      "valid_rate": round(t["valid"] / answers, 4),
                      "finish_stop": t["stop"], "tokens": t["tokens"],
                      "tokens_per_s": round(t["tokens"] / t["seconds"], 1)}
               for mode, t in totals.items()}
    fit_ms = 1000 * fit_seconds / max(totals["budget"]["tokens"], 1)
    report = {"budget_check_ms_per_token": round(fit_ms, 3), "artifact": args.artifact,
              "backend": runtime.backend, "max_tokens": args.max_tokens, "seeds": args.seeds,
              "temperature": 1.0, "threads": args.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work",
              "summary": summary, "schemas": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guided_budget.json").write_text(json.dumps(report, ensure_ascii=False, indent=1)
                                                + "\n", encoding="utf-8")
    lines = [f"# Guided JSON within max_tokens={args.max_tokens}", "",
             f"{args.artifact} ({runtime.backend}, {args.threads} threads), {len(schemas)} Hindi "
             f"agent schemas × {args.seeds} seeds at temperature 1.", "",
             "| mode | valid, schema-conforming JSON | finish_reason stop | tokens/s |",
             "|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['valid_json']}/{answers} ({100 * s['valid_rate']:.0f}%) | "
                     f"{s['finish_stop']} | {s['tokens_per_s']} |")
    lines += ["", f"The budget check itself (`Guide.fit`) took {fit_ms:.2f} ms per token (the "
              "tokens/s above also move with the machine's load: the modes differ in content, "
              "and other work shared the 2 cores)."]
    lines += ["", "| schema | shortest answer (tokens) | budget | mask only | unguided |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['schema']} | {r['shortest_answer_tokens']} | {r['budget_valid']} | "
              f"{r['mask_only_valid']} | {r['unguided_valid']} |" for r in rows]
    (RESULTS / "guided_budget.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
