"""Model configuration: a typed dataclass, named presets, JSON/YAML files, validation.

A config can be built from a preset name, a file, or a preset plus overrides:

    cfg = ModelConfig.preset("hindi-270m")
    cfg = ModelConfig.load("model.yaml")          # may contain `preset: tiny` plus overrides
    cfg = ModelConfig.preset("tiny", n_layers=4)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SLIDING = "sliding_attention"
GLOBAL = "full_attention"  # transformers' name for a layer that attends to the whole context
LAYER_TYPES = (SLIDING, GLOBAL)


class ConfigError(ValueError):
    """A configuration that cannot describe a working model (message says what to fix)."""


def gemma3_layer_types(n_layers: int, global_every: int = 6) -> list[str]:
    """Gemma 3's pattern: every `global_every`-th layer is global, the others sliding."""
    return [GLOBAL if (i + 1) % global_every == 0 else SLIDING for i in range(n_layers)]


@dataclass
class ModelConfig:
    vocab_size: int = 50_000
    context_length: int = 1024
    n_layers: int = 18
    hidden_size: int = 640
    n_heads: int = 4
    n_kv_heads: int = 1
    head_dim: int = 256
    ffn_size: int = 2048
    sliding_window: int = 512  # a token sees itself and the sliding_window - 1 tokens before it
    layer_types: list[str] = field(default_factory=lambda: gemma3_layer_types(18))
    rope_base_local: float = 10_000.0
    rope_base_global: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: int = 256  # attention scale is query_pre_attn_scalar ** -0.5
    tie_embeddings: bool = True
    init: str = "normal"  # "normal": N(0, init_std) everywhere (Hugging Face's Gemma init)
    init_std: float = 0.02
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2

    def __post_init__(self) -> None:
        self.layer_types = list(self.layer_types)
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        positive = ("vocab_size", "context_length", "n_layers", "hidden_size", "n_heads",
                    "n_kv_heads", "head_dim", "ffn_size", "query_pre_attn_scalar")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}) "
                "so query heads can share key/value heads")
        if not isinstance(self.sliding_window, int) or self.sliding_window <= 0:
            raise ConfigError(f"sliding_window must be a positive integer, got {self.sliding_window!r}")
        if len(self.layer_types) != self.n_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries but n_layers is {self.n_layers}")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(f"unknown layer type(s) {unknown}; use {SLIDING!r} or {GLOBAL!r}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even (RoPE rotates pairs of dimensions), got {self.head_dim}")
        for name in ("rope_base_local", "rope_base_global", "rms_norm_eps", "init_std"):
            value = getattr(self, name)
            try:  # YAML 1.1 reads `1e-6` (no dot) as the string "1e-6": accept it as the number
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, got {value!r}") from None
            if isinstance(value, bool) or not number > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
            setattr(self, name, number)
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of {sorted(INITS)}")
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}={value!r} is not a token id in the vocabulary (0..{self.vocab_size - 1})")

    # ----------------------------------------------------------------- construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        values = dict(PRESETS[name])
        if isinstance(overrides.get("n_layers"), int) and "layer_types" not in overrides:
            overrides["layer_types"] = gemma3_layer_types(overrides["n_layers"])
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        values = dict(values)
        preset = values.pop("preset", None)
        if preset is not None:
            return cls.preset(preset, **values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        if "layer_types" not in values and isinstance(values.get("n_layers"), int):
            values["layer_types"] = gemma3_layer_types(values["n_layers"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot parse {path}: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must contain a mapping of config keys")
        return cls.from_dict(values)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True),
                            encoding="utf-8")

    # ----------------------------------------------------------------- derived
    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def param_counts(self) -> dict[str, int]:
        """Parameter counts from the shapes alone: total, embedding, non-embedding."""
        h = self.hidden_size
        attention = h * self.q_size + 2 * h * self.kv_size + self.q_size * h + 2 * self.head_dim
        ffn = 3 * h * self.ffn_size
        norms = 4 * h
        per_layer = attention + ffn + norms
        embedding = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        non_embedding = self.n_layers * per_layer + h  # + final norm
        return {"total": embedding + non_embedding, "embedding": embedding,
                "non_embedding": non_embedding}


INITS = ("normal", "torch-default")

PRESETS: dict[str, dict[str, Any]] = {
    # The Hindi model: Gemma 3 270M's body with a 50k Hindi vocabulary and a 1,024 context.
    "hindi-270m": {},
    # Google's original shape, so its released weights can be imported.
    "gemma3-270m": {"vocab_size": 262_144, "context_length": 32_768},
    # Larger Gemma 3 shapes with the Hindi vocabulary, for the size sweep of hslm-bench.
    "hindi-1b": {"hidden_size": 1152, "n_layers": 26, "n_heads": 4, "n_kv_heads": 1,
                 "ffn_size": 6912},
    "hindi-4b": {"hidden_size": 2560, "n_layers": 34, "n_heads": 8, "n_kv_heads": 4,
                 "ffn_size": 10240},
    # A few-MB model for tests and CPU demos; both layer types, window shorter than test sequences.
    "tiny": {
        "vocab_size": 8_000, "context_length": 256, "n_layers": 4, "hidden_size": 64,
        "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "ffn_size": 192, "sliding_window": 16,
        "layer_types": [SLIDING, SLIDING, GLOBAL, SLIDING], "query_pre_attn_scalar": 16,
    },
}
