"""Typed configs from a YAML/JSON file plus `key=value` command-line overrides.

`load_dataclass(Config, "run.yaml", ["steps=10", "model_overrides.window=16"])`: the file's
mapping, then each override (its value parsed as YAML; `a.b=v` sets key b of the dict field a),
checked against the dataclass's fields with messages that name the bad key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hslm.config import ConfigError

T = TypeVar("T")


def load_dataclass(cls: type[T], path: str | Path | None, overrides: list[str] = (),
                   what: str = "config") -> T:
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
            raise ConfigError(f"{path} must contain a mapping of {what} keys")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        value = yaml.safe_load(raw)
        outer, dot, inner = key.partition(".")
        if dot and outer in known and known[outer].type.startswith("dict"):
            values.setdefault(outer, {})[inner] = value
        else:
            values[key] = value
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; known: {sorted(known)}")
    for key, value in values.items():
        expected = known[key].type
        if expected == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:  # YAML reads 3e-3 as a string: accept numbers
                values[key] = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        elif expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        elif expected.startswith("list") and isinstance(value, str):
            values[key] = [value]
        elif expected.startswith("list") and not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
    return cls(**values)
