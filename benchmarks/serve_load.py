"""hslm-serve under load, as clients see it: a burst of concurrent chat requests (mixed
streaming, non-streaming and guided JSON) that must all be answered, then many sequential
requests with the server's memory (RSS) before and after, and latency percentiles of both.

    python benchmarks/serve_load.py ARTIFACT [--concurrent 50] [--sequential 1000]
                                             [--max-tokens 8] [--threads 1]

ARTIFACT is what `hslm-serve` takes (the demo's runs/demo/model-q4.gguf, a model folder). The
server runs as its own process (`python -m hslm.apps.serve ARTIFACT --port 0`), driven with the
official `openai` client.

Writes benchmarks/results/serve_load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SCHEMAS = json.loads((HERE / "data" / "guided_schemas.json").read_text(encoding="utf-8"))
QUESTIONS = ["आज मौसम कैसा है?", "भारत की राजधानी क्या है?", "एक छोटी कहानी सुनाइए।",
             "ट्रेन का टिकट कैसे बुक करें?", "गंगा नदी कहाँ से निकलती है?"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    at = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"p50_ms": round(1000 * at(0.5), 1), "p99_ms": round(1000 * at(0.99), 1),
            "mean_ms": round(1000 * statistics.mean(ordered), 1),
            "max_ms": round(1000 * ordered[-1], 1)}


def ask(client, model: str, index: int, max_tokens: int) -> tuple[str, float, str | None]:
    """(kind, seconds, error or None) of one request; kind cycles plain, streamed, guided."""
    kind = ("plain", "streamed", "guided")[index % 3]
    messages = [{"role": "user", "content": f"{index}: {QUESTIONS[index % len(QUESTIONS)]}"}]
    start = time.perf_counter()
    try:
        if kind == "plain":
            reply = client.chat.completions.create(model=model, messages=messages,
                                                   max_tokens=max_tokens, seed=index)
            assert reply.choices[0].message.content is not None
        elif kind == "streamed":
            chunks = list(client.chat.completions.create(model=model, messages=messages,
                                                         max_tokens=max_tokens, seed=index,
                                                         stream=True))
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        else:
            name, schema = list(SCHEMAS.items())[index % len(SCHEMAS)]
            reply = client.chat.completions.create(
                model=model, messages=messages, max_tokens=64, seed=index,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "answer", "schema": schema}})
            jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    except (openai.APIError, AssertionError, ValueError, jsonschema.ValidationError) as err:
        return kind, time.perf_counter() - start, f"{type(err).__name__}: {err}"[:200]
    return kind, time.perf_counter() - start, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    load_before = os.getloadavg()
    server = subprocess.Popen(
        [sys.executable, "-m", "hslm.apps.serve", str(Path(args.artifact).resolve()), "--port",
         "0", "--threads", str(args.threads), "--max-queue", str(max(64, args.concurrent))],
        cwd=tempfile.gettempdir(),  # not the checkout, whose hslm/ would shadow the package
        stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        base_url = line.split(" on ")[1].split()[0]
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        for index in range(12):  # warm up every kind of request
            ask(client, model, index, args.max_tokens)
        rss_start = rss_mib(server.pid)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            burst = list(pool.map(lambda i: ask(client, model, i, args.max_tokens),
                                  range(args.concurrent)))
        burst_seconds = time.perf_counter() - start
        failures = [error for _, _, error in burst if error]

        rss_before = rss_mib(server.pid)
        sequential, rss_trace, errors = [], [], []
        for index in range(args.sequential):
            kind, seconds, error = ask(client, model, 3 * index, args.max_tokens)  # plain requests
            sequential.append(seconds)
            if error:
                errors.append(error)
            if (index + 1) % max(1, args.sequential // 10) == 0:
                rss_trace.append(round(rss_mib(server.pid), 1))
        rss_after = rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)

    report = {
        "artifact": args.artifact, "model": model, "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({cpu_name()}); other "
                   "engineers' tests and benchmarks shared the cores",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "concurrent": {"requests": args.concurrent, "answered": args.concurrent - len(failures),
                       "failures": failures[:10], "seconds": round(burst_seconds, 1),
                       "mix": "plain, streamed and guided JSON (max_tokens 64) in turn",
                       "max_tokens": args.max_tokens,
                       "latency": percentiles([s for _, s, _ in burst])},
        "sequential": {"requests": args.sequential, "failures": len(errors),
                       "max_tokens": args.max_tokens,
                       "rss_mib_before": round(rss_before, 1), "rss_mib_after": round(rss_after, 1),
                       "rss_mib_every_tenth": rss_trace, "latency": percentiles(sequential)},
        "rss_mib_after_warm_up": round(rss_start, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(report, ensure_ascii=False, indent=1)
                                             + "\n", encoding="utf-8")
    burst_latency, seq = report["concurrent"]["latency"], report["sequential"]
    lines = [
        "# hslm-serve under load", "",
        f"{args.artifact} ({args.threads} model thread) on {report['machine']}; load average "
        f"{report['load_average_before'][0]} before, {report['load_average_after'][0]} after.", "",
        "| phase | requests | answered | p50 | p99 | max |", "|---|---|---|---|---|---|",
        f"| {args.concurrent} at once (plain / streamed / guided JSON) | {args.concurrent} | "
        f"{report['concurrent']['answered']} | {burst_latency['p50_ms']} ms | "
        f"{burst_latency['p99_ms']} ms | {burst_latency['max_ms']} ms |",
        f"| one after another (max_tokens {args.max_tokens}) | {args.sequential} | "
        f"{args.sequential - seq['failures']} | {seq['latency']['p50_ms']} ms | "
        f"{seq['latency']['p99_ms']} ms | {seq['latency']['max_ms']} ms |", "",
        f"Server RSS: {seq['rss_mib_before']} MiB before the {args.sequential} sequential "
        f"requests, {seq['rss_mib_after']} MiB after (every tenth: "
        f"{', '.join(map(str, seq['rss_mib_every_tenth']))} MiB).", ""]
    (RESULTS / "serve_load.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
