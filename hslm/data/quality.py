"""Quality heuristics for Hindi text (Gopher / C4 rules, adapted): each a pure function of the
text, so filters, tests and the report share them.

- `remove_boilerplate`: drop whole lines of web boilerplate ("यह भी पढ़ें", "Previous
  article", share/subscribe lines) listed in `lists/boilerplate.txt`.
- `quality_problem`: the first failed rule (length, mean word length, symbols, digits,
  Hindi stop words, repeated lines/paragraphs/n-grams), or None.
- `legacy_font_damage`: signs of text broken by legacy-font conversion: vowel signs with no
  letter to sit on, impossible sign sequences, `ऽ`/`ॐ`/`ऋ` standing alone as punctuation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cache

from hslm.data.language import word_list

# Dependent vowel signs, virama, anusvara/chandrabindu/visarga and nukta: signs that must
# follow a letter (or, for the nasal signs and nukta, a letter's vowel sign).
_VOWEL_SIGNS = "\u093a-\u093b\u093e-\u094c\u094e-\u094f\u0955-\u0957\u0962-\u0963"
_MODIFIERS = "\u0900-\u0903\u093c\u094d"
_SIGNS = _VOWEL_SIGNS + _MODIFIERS
# A sign at the start of a word, or a vowel sign/virama followed by another vowel sign:
# neither happens in well-formed Devanagari; runs of them are conversion debris.
_STRAY_SIGN = re.compile(rf"(?<![\u0900-\u097f])[{_SIGNS}]|[{_VOWEL_SIGNS}\u094d][{_VOWEL_SIGNS}]")
# Avagraha, Om and the vowel ऋ standing alone between spaces/punctuation: used in place of
# punctuation by the old fonts (ऋ alone is never a Hindi word).
_LONE_GLYPH = re.compile(r"(?<![\u0900-\u097f])[\u093d\u0950\u090b](?![\u0900-\u097f])")
_DIGITS = re.compile(r"[0-9\u0966-\u096f]+")
# A whitespace-separated word that is only "#"/"…" or ends in an ellipsis (Gopher's symbols).
_SYMBOL_WORD = re.compile(r"(?<!\S)(?:[#…]+|\S*(?:\.\.\.|…))(?!\S)")


@dataclass(frozen=True)
class QualityThresholds:
    min_words: int = 3
    max_words: int = 100_000
    min_mean_word_length: float = 1.5  # in characters (Devanagari words average ~4)
    max_mean_word_length: float = 12.0
    max_symbol_word_ratio: float = 0.1  # words that are "#" or end in an ellipsis
    max_digit_ratio: float = 0.3  # digits among non-space characters
    min_alpha_word_ratio: float = 0.5  # words with at least one letter
    min_stop_words: int = 1  # Hindi stop words, in documents labelled Devanagari Hindi
    max_duplicate_line_ratio: float = 0.3  # Gopher: lines that repeat earlier lines
    max_duplicate_paragraph_ratio: float = 0.3
    ngram_min_words: int = 50  # the n-gram rules judge documents at least this long
    # Gopher's n-gram rules: characters in the most frequent 2/3/4-gram, and in repeated
    # 5..10-grams.
    max_top_ngram_char_ratio: tuple[float, float, float] = (0.20, 0.18, 0.16)
    max_duplicate_ngram_char_ratio: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)
    max_legacy_font_damage: float = 0.02  # damage marks per word


@cache
def _boilerplate_pattern() -> re.Pattern:
    prefixes = sorted(word_list("boilerplate"), key=len, reverse=True)
    # The prefix must end a word; \b would not see the end of a word that ends in a vowel sign.
    return re.compile(r"^[ \t]*(?:" + "|".join(map(re.escape, prefixes))
                      + r")(?![\w\u0900-\u0963\u0966-\u097f]).*$\n?", re.IGNORECASE | re.MULTILINE)


def remove_boilerplate(text: str) -> tuple[str, int]:
    """The text without boilerplate lines, and how many lines were removed."""
    cleaned, removed = _boilerplate_pattern().subn("", text)
    return cleaned.strip("\n"), removed


_DAMAGE = re.compile(f"{_STRAY_SIGN.pattern}|{_LONE_GLYPH.pattern}")


def legacy_font_damage(text: str) -> int:
    """How many marks of legacy-font conversion damage the text holds."""
    return len(_DAMAGE.findall(text))


def _duplicate_ratio(items: list[str]) -> float:
    """Share of characters in items that repeat an earlier item (Gopher's line/paragraph rule)."""
    seen, duplicate_chars, total_chars = set(), 0, 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            duplicate_chars += len(item)
        seen.add(item)
    return duplicate_chars / total_chars if total_chars else 0.0


def _top_ngram_char_ratio(tokens: list[str], n: int) -> float:
    ngrams = Counter(zip(*(tokens[i:] for i in range(n))))
    if not ngrams:
        return 0.0
    top, count = ngrams.most_common(1)[0]
    if count < 2:
        return 0.0
    return sum(map(len, top)) * count / max(1, sum(map(len, tokens)))


def _duplicate_ngram_char_ratio(tokens: list[str], n: int) -> float:
    """Characters of words covered by an n-gram that occurred before (Gopher)."""
    seen, covered = set(), [False] * len(tokens)
    for i, gram in enumerate(zip(*(tokens[i:] for i in range(n)))):
        if gram in seen:
            covered[i:i + n] = [True] * n
        else:
            seen.add(gram)
    total = sum(map(len, tokens))
    return sum(len(t) for t, c in zip(tokens, covered) if c) / total if total else 0.0


def _repeated_ngrams(tokens: list[str], limits: QualityThresholds) -> bool:
    # A longer n-gram can only repeat where a shorter one does: stop at the first n with none.
    for n, limit in zip((2, 3, 4), limits.max_top_ngram_char_ratio):
        ratio = _top_ngram_char_ratio(tokens, n)
        if ratio > limit:
            return True
        if ratio == 0:
            return False
    for n, limit in zip(range(5, 11), limits.max_duplicate_ngram_char_ratio):
        ratio = _duplicate_ngram_char_ratio(tokens, n)
        if ratio > limit:
            return True
        if ratio == 0:
            return False
    return False


def quality_problem(text: str, tokens: list[str], language: str,
                    limits: QualityThresholds) -> str | None:
    """The name of the first rule the document fails, or None when it passes all."""
    count = len(tokens)
    if count < limits.min_words:
        return "too_few_words"
    if count > limits.max_words:
        return "too_many_words"
    mean_length = sum(map(len, tokens)) / count
    if not limits.min_mean_word_length <= mean_length <= limits.max_mean_word_length:
        return "mean_word_length"
    if len(_SYMBOL_WORD.findall(text)) / count > limits.max_symbol_word_ratio:
        return "symbols"
    non_space = len(text) - text.count(" ") - text.count("\n") - text.count("\t")
    if non_space and sum(map(len, _DIGITS.findall(text))) / non_space > limits.max_digit_ratio:
        return "digits"
    if 1 - sum(map(str.isdigit, tokens)) / count < limits.min_alpha_word_ratio:
        return "few_words_with_letters"
    if language == "hi":
        stop_words = word_list("stopwords_hi")
        if sum(map(stop_words.__contains__, tokens)) < limits.min_stop_words:
            return "no_stop_words"
    if "\n" in text:
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if len(lines) > 1 and _duplicate_ratio(lines) > limits.max_duplicate_line_ratio:
            return "repeated_lines"
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        if (len(paragraphs) > 1
                and _duplicate_ratio(paragraphs) > limits.max_duplicate_paragraph_ratio):
            return "repeated_paragraphs"
    if count >= limits.ngram_min_words and _repeated_ngrams([t.lower() for t in tokens], limits):
        return "repeated_ngrams"
    if legacy_font_damage(text) / count > limits.max_legacy_font_damage:
        return "legacy_font"
    return None
