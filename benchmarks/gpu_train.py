"""GPU training speed: hslm's training step on hindi-270m and hindi-1b at context 1,024, with the
dense-mask attention and with the kernels chosen by case (causal flash SDPA on global layers,
FlexAttention's block-sparse sliding window on sliding ones), bf16 autocast, DDP or FSDP2
(sharded parameters, gradients and optimizer state; bf16 gathered parameters, fp32 reduction)
across ranks.

Runs only where CUDA exists (refuses otherwise: exit 2); one process per GPU under torchrun:

    torchrun --nproc-per-node 8 benchmarks/gpu_train.py [--models hindi-270m hindi-1b hindi-4b]
        [--parallel ddp fsdp]

Per model, parallel mode and attention: tokens/s (all ranks), MFU against hslm.train.metrics'
peak table, peak memory per rank (what FSDP saves), and the attention kernels the profiler saw
on the GPU. Random tokens: speed does not depend on the data. Writes
benchmarks/results/gpu_train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SEQ_LEN = 1024
ATTENTION_NAMES = ("flash", "fmha", "efficient_attention", "flex", "triton_tem")


def attention_kernels(step, batch) -> list[str]:
    """Names of the GPU kernels of one step that compute attention."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step([batch], lr=1e-4)
        torch.cuda.synchronize()
    names = {event.key for event in prof.key_averages()}
    return sorted(n for n in names if any(part in n.lower() for part in ATTENTION_NAMES))


def bench(name: str, parallel: str, attention: str, world, args) -> dict:
    from hslm.config import ModelConfig
    from hslm.model import Gemma3
    from hslm.train.config import TrainConfig
    from hslm.train.loop import TrainStep
    from hslm.train.metrics import flops_per_token, peak_tflops

    config = ModelConfig.preset(name)
    settings = TrainConfig(model=name, precision="bf16", device="cuda", compile=args.compile,
                           attention=attention, parallel=parallel, seq_len=SEQ_LEN,
                           micro_batch=args.micro_batch,
                           batch_tokens=args.micro_batch * SEQ_LEN * world.world_size)
    torch.manual_seed(0)
    step = TrainStep(Gemma3(config).to(world.device).train(), settings, world)
    generator = torch.Generator().manual_seed(world.rank)

    def batch():
        rows = torch.randint(3, config.vocab_size, (args.micro_batch, SEQ_LEN + 1), generator=generator)
        return rows[:, :-1], rows[:, 1:]

    for _ in range(args.warmup):  # compilation, allocator, cuDNN/Triton autotuning
        step([batch()], lr=1e-4)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(world.device)
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step([batch()], lr=1e-4)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak_memory = torch.cuda.max_memory_allocated(world.device)
    kernels = attention_kernels(step, batch())
    tokens_per_s = settings.batch_tokens / statistics.mean(seconds)
    peak = peak_tflops(world.device, torch.bfloat16)
    return {"model": name, "parallel": parallel, "attention": attention,
            "ranks": world.world_size,
            "gpu": torch.cuda.get_device_name(world.device), "micro_batch": args.micro_batch,
            "seq_len": SEQ_LEN, "compiled": args.compile, "tokens_per_s": tokens_per_s,
            "mfu": flops_per_token(config, SEQ_LEN) * tokens_per_s / (peak * 1e12 * world.world_size)
            if peak else None,
            "peak_tflops": peak, "peak_memory_gib": peak_memory / 2**30,
            "attention_kernels": kernels, "seconds": seconds}


def write_report(rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    report = {"benchmark": "gpu_train", "torch": torch.__version__, "results": rows}
    (RESULTS / "gpu_train.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# GPU training speed: hslm's TrainStep, bf16, context 1,024",
        "",
        f"torch {torch.__version__}; {rows[0]['ranks']} × {rows[0]['gpu']}; MFU against "
        f"{rows[0]['peak_tflops']} TFLOPS per GPU (hslm.train.metrics' table); peak memory per rank.",
        "",
        "| model | parallel | attention | batch per GPU | compiled | tokens/s | MFU | peak memory "
        "| attention kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mfu = f"{100 * row['mfu']:.0f}%" if row["mfu"] is not None else "n/a (GPU not in the table)"
        lines.append(f"| {row['model']} | {row['parallel']} | {row['attention']} "
                     f"| {row['micro_batch']}×{row['seq_len']} "
                     f"| {'yes' if row['compiled'] else 'no'} | {row['tokens_per_s']:.0f} | {mfu} "
                     f"| {row['peak_memory_gib']:.1f} GiB | {', '.join(row['attention_kernels']) or '-'} |")
    (RESULTS / "gpu_train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["hindi-270m", "hindi-1b"],
                        choices=["hindi-270m", "hindi-1b", "hindi-4b"])
    parser.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    parser.add_argument("--attention", nargs="+", default=["sdpa-mask", "auto"],
                        choices=["sdpa-mask", "auto", "flex", "sdpa-blocks"])
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train.py needs a CUDA GPU and PyTorch sees none (CPU figures: "
              "benchmarks/train_speed.py --attention-paths)", file=sys.stderr)
        sys.exit(2)

    from hslm.train import distributed

    world = distributed.setup("cuda", parallel="fsdp" if "fsdp" in args.parallel else "ddp")
    rows = [bench(name, parallel, attention, world, args) for name in args.models
            for parallel in args.parallel for attention in args.attention]
    if world.is_main:
        write_report(rows)
    distributed.teardown(world)


if __name__ == "__main__":
    main()
