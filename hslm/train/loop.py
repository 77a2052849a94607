"""The pre-training loop: AdamW, warmup + cosine, bf16 autocast, resumable to the bit.

Everything that decides what happens at step N is a function of (config, N) or is restored
from the checkpoint (weights, optimizer, RNG), so a run stopped and resumed ends with the same
weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hslm.config import ModelConfig
from hslm.data.shards import TokenShards
from hslm.model import Gemma3
from hslm.train.checkpoint import load_latest, save_checkpoint
from hslm.train.config import TrainConfig


class TrainingError(RuntimeError):
    """Training cannot go on (message says why)."""


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio; a function of the step only."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: Gemma3, config: TrainConfig) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]  # norms: no weight decay
    groups = [{"params": matrices, "weight_decay": config.weight_decay},
              {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             eps=config.eps)


def autocast(config: TrainConfig):
    if config.precision == "bf16":
        return torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16)
    return nullcontext()


def loss_of(model: Gemma3, inputs: torch.Tensor, targets: torch.Tensor, config: TrainConfig):
    with autocast(config):
        logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: Gemma3, shards: TokenShards, config: TrainConfig) -> float:
    model.eval()
    losses = [loss_of(model, *[t.to(config.device) for t in
                               shards.batch(0, i, 0, config.micro_batch, config.seq_len,
                                            config.seed + 1)], config).item()
              for i in range(config.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


@dataclass
class TrainResult:
    model: Gemma3
    step: int
    val_loss: float | None
    skipped_steps: int


def train(config: TrainConfig, model_config: ModelConfig, progress=None,
          stop_at_step: int | None = None) -> TrainResult:
    """Train (resuming from the newest valid checkpoint in config.out). `stop_at_step` ends the
    run early with a checkpoint, as a pre-emption would; running again continues it."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_shards = TokenShards(config.data, "train")
    val_shards = TokenShards(config.data, "val")
    torch.manual_seed(config.seed)
    model = Gemma3(model_config).to(config.device)
    optimizer = make_optimizer(model, config)
    step, skipped = 0, 0
    state = load_latest(out / "checkpoints")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, skipped = state["step"], state["skipped_steps"]
        torch.set_rng_state(state["rng"])
    log = open(out / "metrics.jsonl", "a", encoding="utf-8")
    val_loss, nonfinite_in_a_row = None, 0
    model.train()
    last_step = min(config.steps, stop_at_step or config.steps)
    while step < last_step:
        started = time.perf_counter()
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(config.grad_accum):
            inputs, targets = (t.to(config.device) for t in train_shards.batch(
                step, micro, 0, config.micro_batch, config.seq_len, config.seed))
            loss = loss_of(model, inputs, targets, config) / config.grad_accum
            loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if math.isfinite(total) and torch.isfinite(grad_norm):
            optimizer.step()
            nonfinite_in_a_row = 0
        else:  # skip the update, never poison the weights
            skipped += 1
            nonfinite_in_a_row += 1
            if nonfinite_in_a_row >= config.max_nonfinite:
                raise TrainingError(f"{nonfinite_in_a_row} steps in a row had a non-finite loss "
                                    f"or gradient (step {step}); lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % config.eval_every == 0 or step == config.steps:
            val_loss = evaluate(model, val_shards, config)
        if step % config.log_every == 0 or step == config.steps:
            tokens_per_s = config.grad_accum * config.micro_batch * config.seq_len / (
                time.perf_counter() - started)
            record = {"step": step, "loss": total, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens_per_s": tokens_per_s, "val_loss": val_loss, "skipped": skipped}
            log.write(json.dumps(record) + "\n")
            log.flush()
            os.fsync(log.fileno())  # a killed run loses at most the current step
            if progress is not None:
                progress(record)
        if step % config.checkpoint_every == 0 or step == last_step:
            save_checkpoint(out / "checkpoints", step, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "skipped_steps": skipped, "rng": torch.get_rng_state(),
                "config": config.to_dict(), "model_config": model_config.to_dict(),
            }, config.keep_last)
    log.close()
    return TrainResult(model.eval(), step, val_loss, skipped)
