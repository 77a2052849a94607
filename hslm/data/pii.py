"""PII scrubbing: personal identifiers replaced by typed placeholders, and counted.

Numbers are replaced only when they validate, so ordinary numbers survive: Aadhaar numbers
(12 digits, first 2-9) must pass the Verhoeff checksum, card numbers (13-19 digits) Luhn.
The patterns run in a fixed order, longest numbers first, so a card or Aadhaar number is
never half-matched as a phone number.
"""

from __future__ import annotations

import re
from collections import Counter

PLACEHOLDERS = {
    "email": "<EMAIL>", "aadhaar": "<AADHAAR>", "card": "<CARD>", "phone": "<PHONE>",
    "ip": "<IP>", "pan": "<PAN>", "ifsc": "<IFSC>", "address": "<ADDRESS>",
}

# Verhoeff's dihedral-group tables (multiplication d, permutation p).
_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6], [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2], [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# Digits are ASCII only: the ids are written that way, and Devanagari numerals in running
# text are years and counts.
_PATTERNS: list[tuple[str, re.Pattern, object]] = [
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
     None),
    ("aadhaar", re.compile(r"(?<![\d.,])[2-9][0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}(?![\d.,]\d|\d)"),
     lambda m: verhoeff_valid(_digits(m))),
    ("card", re.compile(r"(?<![\d.,])[0-9](?:[ -]?[0-9]){12,18}(?![\d.,]\d|\d)"),
     lambda m: luhn_valid(_digits(m))),
    ("phone", re.compile(r"(?<![\w+])(?:\+91[ -]?|0091[ -]?|91[ -]|0)?[6-9][0-9]{4}[ -]?[0-9]{5}(?!\d)"),
     None),
    ("ip", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
                      r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?![\d.]\d|\d)"), None),
    # PAN: 5 letters (the 4th is the holder type), 4 digits, a letter.
    ("pan", re.compile(r"\b[A-Z]{3}[ABCFGHLJPT][A-Z][0-9]{4}[A-Z]\b"), None),
    ("ifsc", re.compile(r"\b[A-Z]{4}0[A-Z0-9]{6}\b"), None),
    # Street level: a house/flat/plot number phrase, the part of an address that is reliable
    # to find; the locality that follows is left alone.
    ("address", re.compile(r"(?i:\b(?:house|flat|plot|h\.)\s*(?:no\.?|number|#)\s*|"
                           r"(?:मकान|फ्लैट|प्लॉट)\s*(?:नं\.?|नंबर|संख्या)\s*)"
                           r"[0-9]+[A-Za-z]?(?:[/-][0-9A-Za-z]+)*"), None),
]


_ANY_DIGIT_OR_AT = re.compile(r"[0-9@]")


def scrub(text: str) -> tuple[str, Counter]:
    """The text with PII replaced by placeholders, and counts by type."""
    counts: Counter = Counter()
    if not _ANY_DIGIT_OR_AT.search(text):  # every pattern needs one: the fast exit
        return text, counts
    for kind, pattern, valid in _PATTERNS:
        def replace(match: re.Match, kind=kind, valid=valid) -> str:
            if valid is not None and not valid(match.group()):
                return match.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]
        text = pattern.sub(replace, text)
    return text, counts

