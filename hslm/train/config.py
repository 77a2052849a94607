"""Training configuration: a typed dataclass loaded from YAML/JSON plus `key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hslm.config import ConfigError


@dataclass
class TrainConfig:
    data: str = ""  # token shard folder (train and val splits)
    tokenizer: str = ""  # tokenizer folder; must match the shards' checksum
    out: str = "runs/train"  # checkpoints, metrics and the final model folder
    model: str = "tiny"  # a preset name
    model_overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 300
    seq_len: int = 128
    micro_batch: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 30
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "bf16"  # bf16 autocast (master weights fp32) or fp32
    device: str = "cpu"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_last: int = 2
    max_nonfinite: int = 5  # consecutive skipped steps before giving up

    def __post_init__(self) -> None:
        for name in ("steps", "seq_len", "micro_batch", "grad_accum", "log_every", "eval_every",
                     "eval_batches", "checkpoint_every", "keep_last", "max_nonfinite"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if not 0 <= self.warmup < self.steps:
            raise ConfigError(f"warmup ({self.warmup}) must be in [0, steps)")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = ()) -> "TrainConfig":
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"cannot parse {path}: {err}") from None
            if not isinstance(values, dict):
                raise ConfigError(f"{path} must contain a mapping of config keys")
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not key=value")
            value = yaml.safe_load(raw)
            if key.startswith("model_overrides."):
                values.setdefault("model_overrides", {})[key.split(".", 1)[1]] = value
            else:
                values[key] = value
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown training key(s) {unknown}; known: {sorted(known)}")
        for key, value in values.items():  # YAML reads 3e-3 as a string: accept numbers
            if known[key].type == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
                try:
                    values[key] = float(value)
                except ValueError:
                    raise ConfigError(f"{key} must be a number, got {value!r}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
