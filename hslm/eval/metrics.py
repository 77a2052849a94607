"""Scores of generated answers: SQuAD-style exact match and token F1 with Hindi-aware
normalisation, and the agent task's schema validity and field accuracy."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter

from hslm.normalize import normalize


def normalize_answer(text: str) -> list[str]:
    """The words of an answer as compared: hslm's normalisation (NFC, nukta forms, zero-width
    characters, dandas), lower case, punctuation and symbols (danda included) as spaces.
    Devanagari vowel signs and viramas are marks and stay."""
    text = normalize(text).lower()
    return "".join(" " if unicodedata.category(c)[0] in "PSZ" else c for c in text).split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction), normalize_answer(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, reference: str) -> float:
    """Share of the reference's words found in the prediction (long reference answers)."""
    predicted, expected = Counter(normalize_answer(prediction)), normalize_answer(reference)
    if not expected:
        return 1.0
    return sum((predicted & Counter(expected)).values()) / len(expected)


def agent_scores(output: str, label: dict, schema: dict) -> dict[str, float]:
    """`valid`: the output is one JSON object under `schema`; `exact`: every field right; and
    one accuracy per field of `label` (0 when the output is not valid)."""
    import jsonschema

    try:
        value = json.loads(output)
        jsonschema.validate(value, schema)
        valid = True
    except (json.JSONDecodeError, jsonschema.ValidationError):
        value, valid = {}, False
    fields = {f"{name}_accuracy": float(valid and value.get(name) == expected)
              for name, expected in label.items()}
    return {"valid": float(valid), "exact": float(valid and value == label), **fields}
