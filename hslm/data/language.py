"""Script and language identification for Hindi corpora, without a downloaded model.

A document's letters are counted by script, and its words are matched against small lists
of function words (data files in `hslm/data/lists/`):

    hi        Devanagari Hindi (and the Awadhi/Braj of classical verse, which share it)
    hi-latn   romanised Hindi, Hinglish written in Latin letters
    hi-mixed  Hindi in Devanagari with many Latin-script (English) words
    mr, ne    Marathi and Nepali: Devanagari, told apart by their own function words
    en        English (Latin letters without romanised Hindi)
    ur        Perso-Arabic script (Urdu)
    other     another script dominates
    none      no letters at all
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

# A word: letters, digits and Devanagari signs (Python's \w alone misses the vowel signs,
# which would cut every Hindi word apart); danda and double danda are punctuation.
WORD = re.compile(r"[\w\u0900-\u0963\u0966-\u097f\ua8e0-\ua8ff]+")
_DEVANAGARI_LETTERS = re.compile(r"[\u0900-\u0963\u0971-\u097f\ua8e0-\ua8ff]+")
_LATIN_LETTERS = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_ARABIC_LETTERS = re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufefc]+")
_ANY_LETTERS = re.compile(r"[^\W\d_]+")

LATIN_LISTS = ("stopwords_hi_latn", "stopwords_en")  # matched case-insensitively
LABELS = ("hi", "hi-latn", "hi-mixed", "mr", "ne", "en", "ur", "other", "none")


@cache
def word_list(name: str) -> frozenset[str]:
    """A bundled list from hslm/data/lists/NAME.txt: one entry per line, # comments."""
    text = resources.files("hslm.data").joinpath("lists", f"{name}.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


def words(text: str) -> list[str]:
    return WORD.findall(text)


def _letters(pattern: re.Pattern, text: str) -> int:
    return sum(map(len, pattern.findall(text)))


@dataclass(frozen=True)
class Identification:
    label: str
    devanagari: float  # share of the document's letters


def identify(text: str, tokens: list[str] | None = None) -> Identification:
    """The document's label (see the module docstring) and its Devanagari share."""
    letters = _letters(_ANY_LETTERS, text)
    if letters == 0:
        return Identification("none", 0.0)
    devanagari = _letters(_DEVANAGARI_LETTERS, text) / letters
    tokens = tokens if tokens is not None else words(text)

    distinct = set(tokens)

    def hits(name: str) -> int:
        """How many different words of the list the document uses."""
        listed = word_list(name)
        if name in LATIN_LISTS:
            return len(listed.intersection(map(str.lower, distinct)))
        return len(listed.intersection(distinct))

    # Counted only when needed: most documents are mostly Devanagari, which rules out the rest.
    arabic = _letters(_ARABIC_LETTERS, text) / letters if devanagari < 0.7 else 0.0
    latin = _letters(_LATIN_LETTERS, text) / letters if devanagari < 0.5 else 0.0
    if arabic >= 0.3:
        label = "ur"
    elif devanagari >= 0.5:
        # Marathi and Nepali share many Hindi words; their own markers must outnumber
        # half of the Hindi function words to count.
        marathi, nepali = hits("markers_mr"), hits("markers_ne")
        hindi = hits("stopwords_hi") if marathi >= 2 or nepali >= 2 else 0
        if marathi >= 2 and marathi * 2 > hindi and marathi >= nepali:
            label = "mr"
        elif nepali >= 2 and nepali * 2 > hindi:
            label = "ne"
        else:
            label = "hi"
    elif devanagari >= 0.2 and devanagari + latin >= 0.8:
        label = "hi-mixed"
    elif latin >= 0.5:
        romanised, english = hits("stopwords_hi_latn"), hits("stopwords_en")
        label = "hi-latn" if romanised >= 1 and romanised >= 0.5 * english else "en"
    else:
        label = "other"
    return Identification(label, devanagari)
