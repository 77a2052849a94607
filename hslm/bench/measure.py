"""One benchmark case in its own process (so that its peak memory and thread pools are its
own): load a model with one backend, then measure with llama-bench's conventions.

    python -m hslm.bench.measure '{"path": "m.gguf", "backend": "llama.cpp", "threads": 2}'

prints one JSON object (a case of `hslm.bench.report.SCHEMA`):

- load_seconds, peak_rss_mb (VmHWM of this process) and rss_before_load_mb (the libraries);
- pp: prompt processing, `n_prompt` tokens fed at once after a reset, tokens/s per run;
- tg: generation of `n_gen` tokens one at a time after <bos> (argmax, no sampling), tokens/s
  per run, and every step's time for TPOT percentiles;
- agent: an agent-style request, a ~200-token chat prompt and a JSON answer of up to 48
  tokens under guided decoding (JSON schema), end-to-end and first-token latency per run;
- energy: joules per generated token and per agent request from RAPL, idle power
  subtracted, or "unavailable".
Warm-up runs come first and are not recorded.
"""

from __future__ import annotations

import json
import sys
import time

from hslm.bench.machine import UNAVAILABLE, EnergyMeter, peak_rss_mb

AGENT_SCHEMA = {
    "type": "object",
    "properties": {"intent": {"type": "string", "maxLength": 200},
                   "city": {"type": "string", "maxLength": 200},
                   "when": {"type": "string", "maxLength": 200}},
    "required": ["intent", "city", "when"], "additionalProperties": False,
}
AGENT_INSTRUCTION = ("नीचे दिए गए संदेश से इरादा, शहर और समय निकालकर केवल JSON में उत्तर दें। "
                     "संदेश: ")
AGENT_MESSAGE = ("कल सुबह आठ बजे दिल्ली से जयपुर जाने वाली बस का टिकट बुक करना है, और वहाँ "
                 "मौसम कैसा रहेगा यह भी बताइए। ")
AGENT_PROMPT_TOKENS = 200
AGENT_ANSWER_TOKENS = 48


def load_source(spec: dict):
    """(logits source, tokenizer) of the case's backend."""
    from hslm.runtime.engine import load

    runtime = load(spec["path"], threads=spec["threads"])
    if spec["backend"] == "torch-compiled":
        import torch

        runtime.source.model = torch.compile(runtime.source.model, dynamic=True)
    return runtime


def agent_prompt(runtime) -> list[int]:
    """A chat prompt of about AGENT_PROMPT_TOKENS tokens in the model's own tokenizer."""
    content = AGENT_INSTRUCTION
    while True:
        ids = runtime.encode_chat([{"role": "user", "content": content}])
        if len(ids) >= AGENT_PROMPT_TOKENS:
            return ids
        content += AGENT_MESSAGE


def measure(spec: dict) -> dict:
    from hslm.generate import SamplingParams, generate_ids

    rss_before = peak_rss_mb()
    start = time.perf_counter()
    runtime = load_source(spec)
    load_seconds = time.perf_counter() - start
    source, tokenizer = runtime.source, runtime.tokenizer
    context = source.context_length
    n_gen = min(spec.get("n_gen", 128), context - 2)
    n_prompt = min(spec.get("n_prompt", 512), context - 1)
    prompt = [tokenizer.bos_id] + [(7 * i) % (tokenizer.vocab_size - 10) + 10
                                   for i in range(n_prompt - 1)]
    repeat, warmup = spec.get("repeat", 5), spec.get("warmup", 1)
    meter = EnergyMeter()
    idle_watts = meter.idle_watts() if meter.available else None

    pp, tg, steps, tg_joules = [], [], [], []
    for run in range(warmup + repeat):
        source.reset()
        begin = time.perf_counter()
        source.feed(prompt)
        elapsed = time.perf_counter() - begin
        if run >= warmup:
            pp.append(n_prompt / elapsed)
        source.reset()
        token = int(source.feed([tokenizer.bos_id]).argmax())
        run_steps = []
        energy = meter.start()
        for _ in range(n_gen):
            begin = time.perf_counter()
            token = int(source.feed([token]).argmax())
            run_steps.append(time.perf_counter() - begin)
        if run >= warmup:
            tg.append(n_gen / sum(run_steps))
            steps += run_steps
            if meter.available:
                used = meter.joules_since(energy) - idle_watts * sum(run_steps)
                tg_joules.append(used / n_gen)

    agent = None
    if spec.get("agent", True):
        ids = agent_prompt(runtime)
        params = SamplingParams(max_new_tokens=AGENT_ANSWER_TOKENS, temperature=0.0)
        latency, first_token, answer_tokens, request_joules = [], [], [], []
        for run in range(warmup + repeat):
            guide = runtime.guide(json_schema=AGENT_SCHEMA)
            energy = meter.start()
            begin = time.perf_counter()
            first = None
            count = 0
            for _ in generate_ids(source, ids, params, guide=guide):
                count += 1
                if first is None:
                    first = time.perf_counter() - begin
            total = time.perf_counter() - begin
            if run >= warmup:
                latency.append(total)
                first_token.append(first if first is not None else total)
                answer_tokens.append(count)
                if meter.available:
                    request_joules.append(meter.joules_since(energy) - idle_watts * total)
        agent = {"prompt_tokens": len(ids), "answer_tokens": answer_tokens,
                 "latency_s": latency, "ttft_s": first_token,
                 "joules_per_request": request_joules if meter.available else UNAVAILABLE}
    return {
        "backend": spec["backend"], "path": spec["path"], "threads": spec["threads"],
        "context_length": context, "load_seconds": load_seconds,
        "rss_before_load_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
        "pp": {"n_prompt": n_prompt, "tokens_per_s": pp},
        "tg": {"n_gen": n_gen, "tokens_per_s": tg, "step_s": steps,
               "joules_per_token": tg_joules if meter.available else UNAVAILABLE},
        "agent": agent,
        "energy": {"source": "rapl" if meter.available else UNAVAILABLE,
                   "idle_watts": idle_watts if meter.available else UNAVAILABLE},
    }


def main() -> None:
    print(json.dumps(measure(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
