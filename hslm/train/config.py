"""Training configuration: a typed dataclass loaded from YAML/JSON plus `key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hslm.config import ConfigError
from hslm.configfile import load_dataclass
from hslm.model import ATTENTION_KERNELS
from hslm.train.qat import QAT_TARGETS

PRECISIONS = ("bf16", "fp16", "fp32")
TASKS = ("pretrain", "sft")
RESUME_MODES = ("auto", "force")
PARALLEL_MODES = ("ddp", "fsdp")

# Keys a resumed run may change: they decide how long the run goes, how it is watched, where it
# runs or how fast, not what is learned from which data. Any other difference from the
# checkpoint's config (model, data, seed, batch, learning rate and the optimizer's settings,
# precision, task, init_from) stops a resume unless resume=force. `steps` also stretches the
# cosine schedule from the resumed step on; `tokenizer` may move (its checksum is compared).
SAFE_TO_CHANGE = ("steps", "out", "tokenizer", "log_every", "eval_every", "eval_batches",
                  "eval_samples", "checkpoint_every", "keep_last", "max_nonfinite", "device",
                  "compile", "loss_chunk_tokens", "peak_tflops", "tensorboard", "resume",
                  "collective_timeout", "attention")


@dataclass
class TrainConfig:
    task: str = "pretrain"  # pretrain on token shards, or sft on JSONL conversations
    data: str = ""  # token shard folder (pretrain) or JSONL file/folder of conversations (sft)
    tokenizer: str = ""  # tokenizer folder; must match the shards' checksum
    out: str = "runs/train"  # checkpoints, metrics and the final model folder
    model: str = "tiny"  # a preset name (ignored with init_from)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""  # start from these weights: a model folder, checkpoint or run folder
    steps: int = 300
    seq_len: int = 128
    # global batch in tokens; accumulation = this / (micro x seq x ranks), rounded to the
    # nearest whole number of micro-steps (with a warning) when the ranks do not divide it
    batch_tokens: int = 2048
    micro_batch: int = 8  # sequences per forward pass on each rank
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 30
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "bf16"  # autocast dtype (master weights stay fp32), or fp32
    device: str = "auto"  # auto (cuda when present), cpu, cuda
    compile: bool = False  # torch.compile the model for training
    # ddp: every rank holds the whole model and optimizer; fsdp: FSDP2 shards parameters,
    # gradients and optimizer state over the ranks per block (for hindi-1b/4b), with sharded
    # checkpoints (OUT/checkpoints/step_N.dcp) that resume on any number of ranks
    parallel: str = "ddp"
    # Kernel for unpadded sequences (same numerics): auto = FlexAttention's block-sparse sliding
    # window on CUDA, window-blocked SDPA on CPU; flex (CUDA only: no CPU backward),
    # sdpa-blocks, or sdpa-mask (dense boolean masks, the reference)
    attention: str = "auto"
    loss_chunk_tokens: int = 1024  # cross-entropy over this many positions at a time
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    eval_samples: int = 2  # sampled generations logged with each evaluation
    checkpoint_every: int = 100
    keep_last: int = 2  # plus the best checkpoint by validation loss
    max_nonfinite: int = 5  # consecutive skipped steps before giving up
    peak_tflops: float = 0.0  # the device's peak for MFU; 0 = look up (GPU) or measure (CPU)
    tensorboard: bool = False  # also write TensorBoard events under OUT/tensorboard
    # auto: resume from OUT's newest checkpoint if its config differs only in SAFE_TO_CHANGE
    # keys, else stop and list the differences; force: resume anyway (the checkpoint's model,
    # the new settings from the resumed step on)
    resume: str = "auto"
    # Seconds a rank waits for the others at a collective before the run stops (DDP).
    collective_timeout: int = 300
    # Quantization-aware training, a fine-tuning phase from init_from: the weights the chosen
    # 4-bit export stores in 4 bits (GGUF q4_0 / iq4_nl, or onnx-int4) are fake-quantized on
    # that exporter's grid in the forward (straight-through gradient), and the final model's
    # weights are put on the grid (hslm/train/qat.py)
    qat: str = "none"

    def __post_init__(self) -> None:
        for name in ("steps", "seq_len", "batch_tokens", "micro_batch", "log_every",
                     "eval_every", "eval_batches", "checkpoint_every", "keep_last",
                     "max_nonfinite", "loss_chunk_tokens", "collective_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume must be one of {RESUME_MODES}, got {self.resume!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.parallel not in PARALLEL_MODES:
            raise ConfigError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError("parallel=fsdp trains in bf16 or fp32 (no fp16 grad scaler over "
                              "shards; Gemma 3 overflows fp16 anyway)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.attention not in ATTENTION_KERNELS:
            raise ConfigError(f"attention must be one of {ATTENTION_KERNELS}, got {self.attention!r}")
        if self.attention == "flex" and self.device == "cpu":
            raise ConfigError("attention=flex needs a GPU to train (PyTorch's FlexAttention has "
                              "no backward on CPU); use auto or sdpa-blocks")
        if not 0 <= self.warmup < self.steps:
            raise ConfigError(f"warmup ({self.warmup}) must be in [0, steps)")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.eval_samples < 0 or self.peak_tflops < 0:
            raise ConfigError("eval_samples and peak_tflops must be >= 0")
        if self.qat not in QAT_TARGETS:
            raise ConfigError(f"qat must be one of {QAT_TARGETS}, got {self.qat!r}")
        if self.qat != "none" and not self.init_from:
            raise ConfigError(f"qat={self.qat} fine-tunes a trained model: set init_from=MODEL")

    def fit_batch(self, world_size: int) -> tuple[int, int]:
        """(micro-steps per optimizer step, global batch in tokens): the multiple of micro_batch
        x seq_len x ranks nearest to `batch_tokens`, at least one micro-step (12 or 14 GPUs
        rarely divide a power-of-two batch)."""
        per_micro_step = self.micro_batch * self.seq_len * world_size
        grad_accum = max(1, int(self.batch_tokens / per_micro_step + 0.5))
        return grad_accum, grad_accum * per_micro_step

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
        return load_dataclass(cls, path, overrides, what="training")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_differences(self, saved: dict[str, Any]) -> list[str]:
        """One line per key, other than SAFE_TO_CHANGE, whose value in `saved` (a checkpoint's
        config) differs from this config's. Keys a checkpoint predates count as their default."""
        lines = []
        for item in dataclasses.fields(self):
            if item.name in SAFE_TO_CHANGE:
                continue
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING \
                else item.default
            before, now = saved.get(item.name, default), getattr(self, item.name)
            if before != now:
                lines.append(f"{item.name}: {before!r} in the checkpoint, {now!r} now")
        return lines
