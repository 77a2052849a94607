"""CPU training speed: hslm's training step vs a plain transformers Gemma3ForCausalLM + AdamW
loop, on identical weights, batches and precision.

Both sides do a whole optimizer step: forward, cross-entropy, backward, clip to 1.0, AdamW
(weight decay on matrices only). hslm's side is `hslm.train.loop.TrainStep`, exactly what
hslm-train runs (chunked loss included); transformers' side is the loop users write with
`model(input_ids).logits`. Steps are interleaved so machine noise hits both alike.

    python benchmarks/train_speed.py [--models tiny hindi-270m] [--precisions fp32 bf16]

Writes benchmarks/results/train_speed.{json,md}. With --attention-paths it instead times
hslm's own step with each attention kernel for unpadded sequences (see hslm.model) against the
dense-mask step, on hindi-270m at context 1,024, same weights and batches, interleaved, and
checks that the losses agree: benchmarks/results/train_attention.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from hslm.config import ModelConfig
from hslm.export.hf import save_hf
from hslm.model import Gemma3
from hslm.train.config import TrainConfig
from hslm.train.distributed import World
from hslm.train.loop import TrainStep
from hslm.train.metrics import flops_per_token, measure_peak_tflops

RESULTS = Path(__file__).parent / "results"
SHAPES = {"tiny": {"seq_len": 128, "micro_batch": 16}, "hindi-270m": {"seq_len": 512, "micro_batch": 2}}
AUTOCAST = {"bf16": torch.bfloat16, "fp32": None}


def transformers_step(model, optimizer, inputs, targets, precision):
    dtype = AUTOCAST[precision]
    with torch.autocast("cpu", dtype=dtype) if dtype else nullcontext():
        logits = model(input_ids=inputs).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def bench(name: str, precision: str, steps: int, compile_model: bool) -> dict:
    from transformers import AutoModelForCausalLM

    shape = SHAPES[name]
    config = ModelConfig.preset(name)
    train_config = TrainConfig(model=name, precision=precision, device="cpu", compile=compile_model,
                               batch_tokens=shape["seq_len"] * shape["micro_batch"], **shape)
    torch.manual_seed(0)
    ours = Gemma3(config)
    with tempfile.TemporaryDirectory() as folder:
        save_hf(ours, folder)
        theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                      attn_implementation="sdpa")
    theirs.train()
    decay = [p for p in theirs.parameters() if p.dim() >= 2]
    rest = [p for p in theirs.parameters() if p.dim() < 2]
    their_optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                         {"params": rest, "weight_decay": 0.0}],
                                        lr=1e-4, betas=(0.9, 0.95))
    step = TrainStep(ours.train(), train_config, World(0, 1, 0, torch.device("cpu")))
    tokens = train_config.batch_tokens
    ours_s, theirs_s, losses = [], [], []
    for i in range(steps + 2):  # the first two steps of each are warm-ups (compilation)
        rows = torch.randint(6, config.vocab_size, (shape["micro_batch"], shape["seq_len"] + 1),
                             generator=torch.Generator().manual_seed(i))
        inputs, targets = rows[:, :-1], rows[:, 1:]
        started = time.perf_counter()
        outcome = step([(inputs, targets)], lr=1e-4)
        ours_time = time.perf_counter() - started
        started = time.perf_counter()
        their_loss = transformers_step(theirs, their_optimizer, inputs, targets, precision)
        theirs_time = time.perf_counter() - started
        losses.append((outcome.loss, their_loss))
        if i >= 2:
            ours_s.append(ours_time)
            theirs_s.append(theirs_time)
        print(f"{name} {precision} step {i}: hslm {ours_time:.2f}s transformers {theirs_time:.2f}s "
              f"(loss {outcome.loss:.4f} / {their_loss:.4f})", flush=True)
    peak = measure_peak_tflops(torch.device("cpu"), AUTOCAST[precision] or torch.float32)
    flops = flops_per_token(config, shape["seq_len"])
    ours_tps = [tokens / s for s in ours_s]
    theirs_tps = [tokens / s for s in theirs_s]
    return {
        "model": name, "precision": precision, "hslm_compiled": compile_model, **shape,
        "tokens_per_step": tokens,
        "hslm_tokens_per_s": statistics.mean(ours_tps),
        "hslm_stdev": statistics.stdev(ours_tps) if len(ours_tps) > 1 else 0.0,
        "transformers_tokens_per_s": statistics.mean(theirs_tps),
        "transformers_stdev": statistics.stdev(theirs_tps) if len(theirs_tps) > 1 else 0.0,
        "speedup": statistics.mean(theirs_s) / statistics.mean(ours_s),
        "hslm_mfu": flops * statistics.mean(ours_tps) / (peak * 1e12),
        "measured_peak_tflops": peak,
        "first_step_losses": losses[0], "hslm_seconds": ours_s, "transformers_seconds": theirs_s,
    }


ATTENTION_SHAPE = {"seq_len": 1024, "micro_batch": 1}


def bench_attention_paths(steps: int, kernels: list[str]) -> dict:
    """hslm's TrainStep with attention=sdpa-mask (the reference) and each of `kernels`, on
    identical weights and batches, steps interleaved; loss per step for each."""
    config = ModelConfig.preset("hindi-270m")
    train_config = {kernel: TrainConfig(model="hindi-270m", precision="fp32", device="cpu",
                                        attention=kernel, batch_tokens=1024, **ATTENTION_SHAPE)
                    for kernel in ["sdpa-mask", *kernels]}
    torch.manual_seed(0)
    reference = Gemma3(config)
    world = World(0, 1, 0, torch.device("cpu"))
    train_steps = {}
    for kernel, settings in train_config.items():
        model = Gemma3(config)
        model.load_state_dict(reference.state_dict())
        train_steps[kernel] = TrainStep(model.train(), settings, world)
    seconds = {kernel: [] for kernel in train_steps}
    losses = {kernel: [] for kernel in train_steps}
    for i in range(steps + 1):  # step 0 is a warm-up
        rows = torch.randint(6, config.vocab_size, (1, ATTENTION_SHAPE["seq_len"] + 1),
                             generator=torch.Generator().manual_seed(i))
        for kernel, step in train_steps.items():
            started = time.perf_counter()
            outcome = step([(rows[:, :-1], rows[:, 1:])], lr=3e-4)
            if i:
                seconds[kernel].append(time.perf_counter() - started)
            losses[kernel].append(outcome.loss)
        print(f"step {i}: " + ", ".join(f"{k} {losses[k][-1]:.6f} ({seconds[k][-1] if i else 0:.2f}s)"
                                        for k in train_steps), flush=True)
    peak = measure_peak_tflops(torch.device("cpu"), torch.float32)
    flops = flops_per_token(config, ATTENTION_SHAPE["seq_len"])
    tokens = ATTENTION_SHAPE["seq_len"] * ATTENTION_SHAPE["micro_batch"]
    rows = []
    for kernel in train_steps:
        tokens_per_s = tokens / statistics.mean(seconds[kernel])
        rows.append({
            "attention": kernel, "tokens_per_s": tokens_per_s,
            "stdev": statistics.stdev([tokens / s for s in seconds[kernel]]),
            "mfu": flops * tokens_per_s / (peak * 1e12),
            "speedup_vs_dense_mask": statistics.mean(seconds["sdpa-mask"]) / statistics.mean(seconds[kernel]),
            "max_loss_difference": max(abs(a - b) for a, b in zip(losses[kernel], losses["sdpa-mask"])),
            "losses": losses[kernel], "seconds": seconds[kernel]})
    return {"model": "hindi-270m", "precision": "fp32", **ATTENTION_SHAPE, "steps": steps,
            "measured_peak_tflops": peak, "results": rows}


def write_attention_report(report: dict, threads: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_attention.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# CPU training step by attention kernel: hindi-270m, context 1,024",
        "",
        f"hslm's TrainStep (fp32, batch {report['micro_batch']}×{report['seq_len']}, AdamW) on "
        f"identical weights and batches, {report['steps']} interleaved steps after one warm-up; "
        f"{threads} threads; torch {torch.__version__}. sdpa-mask is the dense boolean-mask step "
        "(the reference); the loss difference is the largest over all steps. MFU against this "
        "CPU's measured fp32 matmul peak.",
        "",
        "| attention | tokens/s | speed-up vs dense mask | MFU | max loss difference |",
        "|---|---|---|---|---|",
    ]
    for row in report["results"]:
        lines.append(f"| {row['attention']} | {row['tokens_per_s']:.1f} ± {row['stdev']:.1f} "
                     f"| {row['speedup_vs_dense_mask']:.2f}× | {100 * row['mfu']:.0f}% "
                     f"| {row['max_loss_difference']:.1e} |")
    (RESULTS / "train_attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(AUTOCAST))
    parser.add_argument("--steps", type=int, default=5, help="timed steps after two warm-ups")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"],
                        help="run hslm's step without and/or with torch.compile")
    parser.add_argument("--attention-paths", action="store_true",
                        help="compare attention kernels on hindi-270m at context 1,024 instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.attention_paths:
        # flex trains on GPUs only (no CPU backward); auto is sdpa-blocks on CPUs
        report = bench_attention_paths(args.steps, ["sdpa-blocks"])
        write_attention_report({**report, "threads": args.threads}, args.threads)
        return

    import transformers

    rows = [bench(name, precision, args.steps, mode == "on") for name in args.models
            for precision in args.precisions for mode in args.compile]
    report = {"benchmark": "train_speed", "steps": args.steps, "threads": args.threads,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "machine": platform.machine(), "processor": platform.processor(), "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# CPU training speed: hslm TrainStep vs a plain transformers + AdamW loop",
        "",
        f"Same weights (random, seed 0), batches, precision; a full optimizer step each; "
        f"{args.steps} interleaved steps after two warm-ups; {args.threads} threads; "
        f"torch {torch.__version__}, transformers {transformers.__version__}. MFU against this "
        "CPU's measured matmul peak in the same precision.",
        "",
        "| model | precision | batch | hslm compiled | hslm tokens/s | transformers tokens/s "
        "| speed-up | hslm MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['micro_batch']}×{row['seq_len']} "
            f"| {'yes' if row['hslm_compiled'] else 'no'} "
            f"| {row['hslm_tokens_per_s']:.0f} ± {row['hslm_stdev']:.0f} "
            f"| {row['transformers_tokens_per_s']:.0f} ± {row['transformers_stdev']:.0f} "
            f"| {row['speedup']:.2f}× | {100 * row['hslm_mfu']:.0f}% |")
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
