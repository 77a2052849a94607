"""The training loop: DDP or FSDP2 across ranks, AMP, AdamW, warmup + cosine, resumable to the bit.

Everything that decides what happens at step N is a function of (config, N) or is restored
from the checkpoint (weights, optimizer, grad scaler, RNG), so a run stopped and resumed ends
with the same weights as one that never stopped. The data of step N is micro-batch
`micro * ranks + rank` of step N, so one rank with two micro-steps and two ranks with one
compute the same update.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from hslm.config import ConfigError, ModelConfig
from hslm.data.shards import ShardError, TokenShards
from hslm.model import Gemma3, sliding_block_mask
from hslm.tokenizer import Tokenizer
from hslm.train import distributed
from hslm.train.checkpoint import (CheckpointError, load_latest, load_sharded, model_from_state,
                                   remove_partial_writes, save_checkpoint,
                                   save_sharded_checkpoint)
from hslm.train.config import SAFE_TO_CHANGE, TrainConfig
from hslm.train.distributed import World, all_gather, all_reduce_sum, root_gathered
from hslm.train.evaluate import evaluate, sample_generations, token_byte_lengths
from hslm.train.lock import LockError, RunLock
from hslm.train.loss import IGNORE, LanguageModelLoss
from hslm.train.metrics import MetricsLog, flops_per_token, peak_tflops
from hslm.train.qat import QATError, qat_plan, snap_to_grids, start_fake_quantization
from hslm.train.sft import ConversationSet, SFTDataError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Passes over the training data above which a run warns: up to ~4 epochs, repeated tokens are
# worth almost as much as new ones (Muennighoff et al. 2023, "Scaling Data-Constrained
# Language Models"); far beyond, the model memorises its data.
EPOCH_WARNING = 4


class TrainingError(RuntimeError):
    """Training cannot go on (message says why)."""


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio; a function of the step only."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: Gemma3, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]  # norms: no weight decay
    groups = [{"params": matrices, "weight_decay": config.weight_decay},
              {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             # fused: one kernel for all parameters (8x faster on CPU)
                             eps=config.eps, fused=device.type in ("cuda", "cpu"))


def autocast(config: TrainConfig, device: torch.device):
    if config.precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[config.precision])


def open_data(config: TrainConfig, tokenizer: Tokenizer):
    """(train, validation) data, both serving batch(step, index, batch_size, seq_len, seed)."""
    try:
        if config.task == "sft":
            return (ConversationSet(config.data, tokenizer, "train"),
                    ConversationSet(config.data, tokenizer, "val"))
        train_data = TokenShards(config.data, "train")
        if train_data.manifest["tokenizer_sha256"] != tokenizer.sha256:
            raise TrainingError(f"the shards in {config.data} were made with another tokenizer "
                                f"than {config.tokenizer}")
        return train_data, TokenShards(config.data, "val")
    except (ShardError, SFTDataError) as err:
        raise TrainingError(str(err)) from None


def epochs(config: TrainConfig, batch_tokens: int, train_data) -> float:
    """How many times a run of config.steps steps sees its training data (sequences drawn over
    sequences held: conversations for SFT, seq_len windows of the token stream otherwise)."""
    sequences_held = (len(train_data.examples) if config.task == "sft"
                      else train_data.num_tokens / config.seq_len)
    return config.steps * batch_tokens / config.seq_len / max(sequences_held, 1)


def initial_model(config: TrainConfig, tokenizer: Tokenizer, resumed: dict | None) -> Gemma3:
    """The model to train: as checkpointed, from `init_from`'s weights, or freshly initialised."""
    if resumed is not None and "sharded" in resumed:  # weights: load_sharded, once split
        return Gemma3(ModelConfig.from_dict(resumed["model_config"]))
    if resumed is not None:
        return model_from_state(resumed)
    if config.init_from:
        from hslm.loader import ModelLoadError, load_torch_model
        try:
            model, init_tokenizer = load_torch_model(config.init_from)
        except ModelLoadError as err:
            raise TrainingError(f"init_from: {err}") from None
        if init_tokenizer.sha256 != tokenizer.sha256:
            raise TrainingError(f"init_from {config.init_from} uses another tokenizer than "
                                f"{config.tokenizer}")
        return model.train()
    try:
        return Gemma3(ModelConfig.preset(config.model, vocab_size=tokenizer.vocab_size,
                                         **config.model_overrides))
    except (ConfigError, TypeError) as err:
        raise TrainingError(f"model: {err}") from None


class StopRequest:
    """SIGTERM (cluster pre-emption) or Ctrl-C asks the loop to checkpoint after the current step
    and return; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals only work there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class StepOutcome:
    loss: float  # mean over the global batch's trained tokens
    grad_norm: float
    applied: bool  # False when skipped for a non-finite loss or gradient
    trained_tokens: int  # over all ranks
    local_loss: float  # this rank's mean
    stop_votes: int  # ranks that received a stop signal


class TrainStep:
    """One optimizer step over a step's micro-batches: forward + backward under autocast with
    gradient sync on the last micro-step only, unscale, clip, and AdamW unless the loss or
    gradient norm is non-finite. With parallel=fsdp the model's parameters become shards
    (DTensors) here, before the optimizer is made over them."""

    def __init__(self, model: Gemma3, config: TrainConfig, world: World):
        self.model, self.config, self.world = model, config, world
        if config.attention == "flex" and world.device.type != "cuda":
            raise TrainingError("attention=flex needs a GPU to train (PyTorch's FlexAttention "
                                "has no backward on CPU); use auto or sdpa-blocks")
        model.use_attention(config.attention)
        if config.compile and world.device.type == "cuda" and config.attention in ("auto", "flex"):
            # the sliding layers' BlockMask, built (and cached) before tracing, not in the graph
            sliding_block_mask(config.seq_len, model.config.sliding_window, world.device)
        module = LanguageModelLoss(model, config.loss_chunk_tokens)
        if config.parallel == "fsdp":
            # the loss module is the root: the tied embedding is gathered for the output layer
            distributed.shard(module, model.layers, world,
                              torch.bfloat16 if config.precision == "bf16" else None)
        elif world.distributed:
            module = DistributedDataParallel(
                module, device_ids=[world.device.index] if world.device.type == "cuda" else None)
        self.wrapped = module
        self.optimizer = make_optimizer(model, config, world.device)
        self.scaler = torch.amp.GradScaler(world.device.type, enabled=config.precision == "fp16")
        self.module = torch.compile(module) if config.compile else module
        self.autocast = autocast(config, world.device)

    def __call__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float,
                 stop_requested: bool = False) -> StepOutcome:
        world = self.world
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Every rank's loss is divided by the global count of trained tokens (SFT masks
        # differ between batches) and DDP averages over ranks: undo that average.
        local_count = sum(int((targets != IGNORE).sum()) for _, targets in batches)
        (global_count,) = all_reduce_sum(world, [local_count])
        local_loss = 0.0
        for micro, (inputs, targets) in enumerate(batches):
            last = micro == len(batches) - 1
            if self.config.parallel == "fsdp":  # gradients reduce-scattered once, at the last
                self.wrapped.set_requires_gradient_sync(last)
            no_sync = self.wrapped.no_sync if isinstance(self.wrapped, DistributedDataParallel) \
                and not last else nullcontext
            with no_sync():
                with self.autocast:
                    loss_sum = self.module(inputs.to(world.device), targets.to(world.device))
                self.scaler.scale(loss_sum * world.world_size / max(global_count, 1)).backward()
            local_loss += loss_sum.item()
        loss_total, stop_votes = all_reduce_sum(world, [local_loss, stop_requested])
        loss = loss_total / max(global_count, 1)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if isinstance(grad_norm, DTensor):  # under FSDP: the norm over all shards
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        # All ranks agree: loss and gradients are reduced over ranks.
        applied = math.isfinite(loss) and math.isfinite(grad_norm)
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss, grad_norm, applied, int(global_count),
                           local_loss / max(local_count, 1), int(stop_votes))


@dataclass
class TrainResult:
    model: Gemma3 | None  # None on ranks other than 0 under FSDP
    step: int
    tokens: int
    skipped_steps: int
    evaluation: dict = field(default_factory=dict)  # the last validation metrics
    stopped_by: str | None = None  # the signal's name when stopped early by one


def resumable(config: TrainConfig, tokenizer: Tokenizer) -> dict | None:
    """The newest valid checkpoint in config.out if this config may continue it, else None
    (nothing to resume). Raises TrainingError when it was trained otherwise (unless
    resume=force) or is refused."""
    out = Path(config.out)
    try:
        resumed = load_latest(out / "checkpoints")
    except CheckpointError as err:
        raise TrainingError(str(err)) from None
    if resumed is None:
        return None
    if resumed["tokenizer_sha256"] != tokenizer.sha256:
        raise TrainingError(f"the checkpoints in {out} were trained with another tokenizer")
    if config.parallel == "fsdp" and "sharded" not in resumed:
        raise TrainingError(f"the checkpoint in {out} (step {resumed['step']}) is a DDP one "
                            "(.pt): parallel=fsdp continues sharded checkpoints (.dcp) only")
    differences = config.resume_differences(resumed["config"])
    if differences and config.resume != "force":
        raise TrainingError(
            f"the checkpoint in {out} (step {resumed['step']}) was trained with other settings:\n"
            + "".join(f"  {line}\n" for line in differences)
            + "use the same settings to resume, another out=... to start a new run, or "
            f"resume=force to continue it anyway (safe to change: {', '.join(SAFE_TO_CHANGE)})")
    if differences:
        print("warning: resume=force: continuing the checkpoint with changed settings: "
              + "; ".join(differences), file=sys.stderr)
    return resumed


def train(config: TrainConfig, tokenizer: Tokenizer, world: World | None = None, progress=None,
          stop_at_step: int | None = None) -> TrainResult:
    """Train, resuming from the newest valid checkpoint in config.out. `stop_at_step` ends the
    run early with a checkpoint, as a pre-emption would; running again continues it.
    `progress(record)` is called on rank 0 with every logged record. The output folder is
    locked for the run (see hslm.train.lock)."""
    world = world or distributed.setup(config.device, config.collective_timeout,
                                       config.parallel)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    lock, refused = None, None
    if world.is_main:
        try:
            lock = RunLock(out).acquire()
        except LockError as err:
            refused = str(err)
        except OSError as err:
            refused = f"cannot lock {out} for this run: {err}"
    refused = all_gather(world, refused)[0]  # every rank stops when rank 0 has no lock
    if refused:
        raise TrainingError(refused)
    try:
        if world.is_main:
            remove_partial_writes(out / "checkpoints")  # left by a killed run
        return _train(config, tokenizer, world, progress, stop_at_step)
    finally:
        if lock is not None:
            lock.release()


def _train(config: TrainConfig, tokenizer: Tokenizer, world: World, progress,
           stop_at_step: int | None) -> TrainResult:
    out = Path(config.out)
    train_data, val_data = open_data(config, tokenizer)
    grad_accum, batch_tokens = config.fit_batch(world.world_size)
    if world.is_main and batch_tokens != config.batch_tokens:
        print(f"warning: batch_tokens {config.batch_tokens} is not a multiple of micro_batch x "
              f"seq_len x ranks = {config.micro_batch} x {config.seq_len} x {world.world_size}: "
              f"training with the nearest, {batch_tokens} ({grad_accum} micro-steps)",
              file=sys.stderr)
    passes = epochs(config, batch_tokens, train_data)
    if world.is_main and passes > EPOCH_WARNING:
        print(f"warning: {config.steps} steps of {batch_tokens} tokens see the training data "
              f"{passes:.1f} times (more than {EPOCH_WARNING} epochs): the model will memorise "
              "it; more data or fewer steps", file=sys.stderr)

    resumed = resumable(config, tokenizer)
    torch.manual_seed(config.seed)
    model = initial_model(config, tokenizer, resumed).to(world.device)
    if config.seq_len > model.config.context_length:
        raise TrainingError(f"seq_len {config.seq_len} exceeds the model's context "
                            f"{model.config.context_length}")
    qat_grids = {}  # parameter name -> the 4-bit grid it is fake-quantized on
    if config.qat != "none":
        try:
            qat_grids = qat_plan(model, config.qat, tokenizer)
        except QATError as err:
            raise TrainingError(str(err)) from None
        start_fake_quantization(model, qat_grids)
    step_once = TrainStep(model, config, world)
    optimizer, scaler = step_once.optimizer, step_once.scaler
    step = tokens = skipped = 0
    if resumed is not None:
        if "sharded" in resumed:  # resharded onto this run's ranks
            load_sharded(resumed["sharded"], model, optimizer)
        else:
            optimizer.load_state_dict(resumed["optimizer"])
        for group, weight_decay in zip(optimizer.param_groups, (config.weight_decay, 0.0)):
            # load_state_dict restores the checkpoint's settings: with resume=force the new
            # ones apply (with resume=auto they are the same)
            group.update(betas=(config.beta1, config.beta2), eps=config.eps,
                         weight_decay=weight_decay)
        scaler.load_state_dict(resumed["scaler"])
        step, tokens, skipped = resumed["step"], resumed["tokens"], resumed["skipped_steps"]
        if len(resumed["rng"]) == world.world_size:  # else: a different number of ranks
            torch.set_rng_state(resumed["rng"][world.rank]["cpu"])
            if world.device.type == "cuda":
                torch.cuda.set_rng_state(resumed["rng"][world.rank]["cuda"], world.device)

    byte_lengths = token_byte_lengths(tokenizer)
    flops = flops_per_token(model.config, config.seq_len)
    peak = peak_tflops(world.device, AUTOCAST_DTYPES.get(config.precision, torch.float32),
                       config.peak_tflops)
    last_step = min(config.steps, stop_at_step or config.steps)
    evaluation: dict = {}
    nonfinite_in_a_row = 0
    outcome = None
    model.train()
    with MetricsLog(out, world.rank, config.tensorboard, resume_step=step) as log, \
            StopRequest() as stop:
        while step < last_step:
            started = time.perf_counter()
            lr = learning_rate(config, step)
            batches = [train_data.batch(step, micro * world.world_size + world.rank,
                                        config.micro_batch, config.seq_len, config.seed)
                       for micro in range(grad_accum)]
            outcome = step_once(batches, lr, stop.signum is not None)
            if outcome.applied:
                nonfinite_in_a_row = 0
            else:
                skipped += 1
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= config.max_nonfinite:
                    raise TrainingError(
                        f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                        f"(step {step}); lower lr, use bf16 or fp32, or check the data")
            step += 1
            tokens += outcome.trained_tokens
            step_seconds = time.perf_counter() - started

            evaluated = step % config.eval_every == 0 or step == config.steps
            if evaluated:
                with root_gathered(step_once.wrapped):
                    evaluation = evaluate(model, val_data, world, config.eval_batches,
                                          config.micro_batch, config.seq_len, config.seed + 1,
                                          config.loss_chunk_tokens, byte_lengths,
                                          step_once.autocast)
                # Rank 0 samples alone: under FSDP from the whole model, gathered on its CPU
                sampler = model if config.parallel == "ddp" or not config.eval_samples \
                    else whole_model(model)
                if world.is_main and config.eval_samples:
                    evaluation["samples"] = sample_generations(sampler, tokenizer, config.task,
                                                               config.eval_samples)
            stopping = outcome.stop_votes > 0 or step == last_step
            if step % config.log_every == 0 or evaluated or stopping:
                tokens_per_s = batch_tokens / step_seconds
                record = {"step": step, "loss": outcome.loss, "lr": lr,
                          "grad_norm": outcome.grad_norm,
                          "tokens": tokens, "tokens_per_s": tokens_per_s,
                          "mfu": flops * tokens_per_s / (peak * 1e12 * world.world_size)
                          if peak else None,
                          "skipped": skipped, **(evaluation if evaluated else {})}
                if scaler.is_enabled():
                    record["loss_scale"] = scaler.get_scale()
                log.write(record, {"rank": world.rank, "local_loss": outcome.local_loss,
                                   "step_seconds": step_seconds})
                if progress is not None and world.is_main:
                    progress(record)
            if step % config.checkpoint_every == 0 or stopping:
                rng = all_gather(world, {"cpu": torch.get_rng_state(),
                                         "cuda": torch.cuda.get_rng_state(world.device)
                                         if world.device.type == "cuda" else None})
                failed = None
                state = {
                    "scaler": scaler.state_dict(), "step": step, "tokens": tokens,
                    "skipped_steps": skipped, "rng": rng,
                    # The batches of step N are a function of (seed, N): the step is the
                    # data position.
                    "data": {"seed": config.seed, "next_step": step, "source": config.data},
                    "config": config.to_dict(), "model_config": model.config.to_dict(),
                    "tokenizer_sha256": tokenizer.sha256,
                    "tokenizer_model": tokenizer.model_bytes,
                }
                val_loss = evaluation.get("val_loss") if evaluated else None
                try:
                    if config.parallel == "fsdp":  # every rank writes its shards
                        save_sharded_checkpoint(out / "checkpoints", step, state, model,
                                                optimizer, world.is_main, config.keep_last,
                                                val_loss)
                    elif world.is_main:
                        save_checkpoint(out / "checkpoints", step,
                                        {"model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), **state},
                                        config.keep_last, val_loss)
                except OSError as err:
                    failed = (f"cannot write the checkpoint of step {step} in "
                              f"{out / 'checkpoints'}: {err.strerror or err}; the ones "
                              "written before are intact: make room and run the same "
                              "command to resume from the newest")
                # The other ranks wait here for rank 0's write, and stop with it if it failed.
                failed = next(filter(None, all_gather(world, failed)), None)
                if failed:
                    raise TrainingError(failed)
            if outcome.stop_votes > 0:
                break
    stopped_by = signal.Signals(stop.signum).name if stop.signum is not None else None
    if stopped_by is None and outcome is not None and outcome.stop_votes > 0:
        stopped_by = "SIGTERM"  # another rank was signalled
    if config.parallel == "fsdp":
        model = whole_model(model)
    if qat_grids and model is not None:
        snap_to_grids(model, qat_grids)
    return TrainResult(model.eval() if model is not None else None, step, tokens, skipped,
                       evaluation, stopped_by)


def whole_model(model: Gemma3) -> Gemma3 | None:
    """An FSDP-sharded model's parameters gathered into a plain Gemma3 on rank 0's CPU (None on
    the other ranks, which take part in the gathering)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    if not state:
        return None
    whole = Gemma3(model.config)
    whole.load_state_dict(state)
    return whole.train(model.training)
