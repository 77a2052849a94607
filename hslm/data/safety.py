"""Safety block lists: CSAM terms (any match drops the document) and abusive/profane words
(a share of the document's words above a threshold drops or flags it).

The bundled lists are `hslm/data/lists/csam.txt` and `abusive.txt`; a user extends them with
their own files (same format: one term per line, # comments). Terms match whole words,
case-insensitively, on normalised text; a term may be several words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hslm.data.language import word_list
from hslm.normalize import normalize


def read_terms(path: str | Path) -> set[str]:
    """The terms of a user's list file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"safety list not found: {path}")
    return {normalize(line.strip()).lower() for line in path.read_text("utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def _whole_words(terms: set[str]) -> re.Pattern:
    alternatives = "|".join(map(re.escape, sorted(terms, key=len, reverse=True)))
    # Word edges that also hold for Devanagari (whose vowel signs are not \w).
    edge = r"[\w\u0900-\u0963\u0966-\u097f]"
    return re.compile(rf"(?<!{edge})(?:{alternatives})(?!{edge})", re.IGNORECASE)


@dataclass
class SafetyLists:
    csam: re.Pattern
    abusive: frozenset[str]

    @classmethod
    def load(cls, extra_csam: list[str] = (), extra_abusive: list[str] = ()) -> SafetyLists:
        csam = set(word_list("csam"))
        abusive = set(word_list("abusive"))
        for path in extra_csam:
            csam |= read_terms(path)
        for path in extra_abusive:
            abusive |= read_terms(path)
        return cls(_whole_words(csam), frozenset(abusive))

    def has_csam_term(self, text: str) -> bool:
        return self.csam.search(text) is not None

    def abusive_share(self, words: list[str]) -> tuple[int, float]:
        """(count, share) of the words that are on the abusive list, case aside."""
        if not words or self.abusive.isdisjoint(map(str.lower, words)):
            return 0, 0.0
        count = sum(word.lower() in self.abusive for word in words)
        return count, count / len(words)
