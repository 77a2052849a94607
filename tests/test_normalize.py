"""hslm.normalize: one form for each text, idempotent, on hand-made cases and the real data."""

from __future__ import annotations

import random
import unicodedata

import pytest

from hslm.normalize import normalize

KA, NUKTA, VIRAMA, SSA = "\u0915", "\u093c", "\u094d", "\u0937"
ZWJ, ZWNJ = "\u200d", "\u200c"


@pytest.mark.parametrize("variants, expected", [
    (["\u0958", KA + NUKTA], KA + NUKTA),                      # क़: NFC keeps it decomposed
    (["\u095c", "\u0921\u093c"], "\u0921\u093c"),              # ड़
    (["\u095e", "\u092b\u093c"], "\u092b\u093c"),              # फ़
    (["\u0929", "\u0928\u093c"], "\u0929"),                    # ऩ: NFC composes it
])
def test_nukta_letters_have_one_form(variants, expected):
    for variant in variants:
        assert normalize(f"{variant}लम") == f"{expected}लम"


def test_output_is_nfc():
    text = "क़लम ज़िंदगी ऩ e\u0301 \u212b"
    assert normalize(text) == unicodedata.normalize("NFC", normalize(text))


@pytest.mark.parametrize("text", [
    KA + VIRAMA + ZWJ + SSA,            # क्‍ष, half form
    KA + VIRAMA + ZWNJ + SSA,           # क्‌ष, explicit virama
    "\u0930" + ZWJ + VIRAMA + "\u092f",  # eyelash ra
])
def test_joiners_between_devanagari_are_kept(text):
    assert normalize(text) == text


@pytest.mark.parametrize("text, expected", [
    (f"a{ZWJ}b", "ab"),
    (f"{ZWJ}क", "क"),
    (f"क{ZWNJ}", "क"),
    (f"ऊपर{ZWNJ} निकल", "ऊपर निकल"),
    (f"सावित्री {ZWNJ}देवी", "सावित्री देवी"),
    (f"क।{ZWJ}ष", "क।ष"),               # a danda is not a letter
    (f"क{ZWJ}{ZWJ}ष", "कष"),
])
def test_stray_joiners_are_dropped(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("invisible", ["\ufeff", "\u200b", "\u00ad", "\u200e", "\u200f",
                                       "\u202a", "\u202e", "\u2066", "\u2060", "\x00", "\x07",
                                       "\x1b", "\x7f", "\x9f"])
def test_invisible_and_control_characters_are_removed(invisible):
    assert normalize(f"{invisible}नमस्ते{invisible}दुनिया{invisible}") == "नमस्तेदुनिया"


@pytest.mark.parametrize("text, expected", [
    ("राम आए|", "राम आए।"),
    ("राम आए |", "राम आए ।"),
    ("राम आए||", "राम आए॥"),
    ("राम आए।।", "राम आए॥"),
    ("राम आए | |", "राम आए । ।"),
    ("।। 1 ।।", "॥ 1 ॥"),
    ("Password kaise banaye | स्ट्रोंग", "Password kaise banaye | स्ट्रोंग"),
    ("a|b 1 | 2", "a|b 1 | 2"),
    ("नवभारतटाइम्स.कॉम | Edited", "नवभारतटाइम्स.कॉम । Edited"),
])
def test_danda_variants(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\u201cनमस्ते\u201d", '"नमस्ते"'),
    ("\u2018hi\u2019 \u201ahi\u201b \u201ehi\u201f", "'hi' 'hi' \"hi\""),
])
def test_curly_quotes_become_straight(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("a  b", "a b"),
    ("a\u00a0b\u2003c\u3000\u202fd", "a b c d"),
    ("a \t b", "a\tb"),
    ("a\t\tb", "a\tb"),
    ("a\tb", "a\tb"),
    (" a", " a"),
    ("   a", " a"),
    ("a  \nb \t\n\t", "a\nb\n"),
    ("a\n\n\nb", "a\n\n\nb"),
    ("a\r\nb\rc", "a\nb\nc"),
    ("a\u2028b\u2029c\x85d\x0be\x0cf", "a\nb\nc\nd\ne\nf"),
    ("a\u2581b", "a b"),
    ("", ""),
    ("   ", ""),
])
def test_whitespace(text, expected):
    assert normalize(text) == expected


def test_lone_surrogates_become_replacement_characters():
    assert normalize("a\ud800b") == "a\ufffdb"
    normalize("a\ud800b").encode("utf-8")


IDEMPOTENCE_ALPHABET = [
    "क", "ष", "न", "र", "ळ", "ि", "़", "्", "\u0958", "\u0929", "।", "॥", "|", " ", "\t", "\n",
    "\r", "\u00a0", "\u2003", "a", "1", "\u0301", "\u0308", ZWJ, ZWNJ, "\u200b", "\ufeff",
    "\u00ad", "\u201c", "\u2019", "\u2581", "\u2028", "\x85", "\x0b", "\ud800",
]


def test_idempotent_on_random_strings():
    rng = random.Random(0)
    for _ in range(30_000):
        text = "".join(rng.choices(IDEMPOTENCE_ALPHABET, k=rng.randint(0, 14)))
        once = normalize(text)
        assert normalize(once) == once, repr(text)


def test_idempotent_on_real_text_and_keeps_its_lines(hindi_data_dir):
    for path in sorted(hindi_data_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        once = normalize(text)
        assert normalize(once) == once, path.name
        assert once.count("\n") == text.count("\n"), path.name  # no line is lost or split
        # Normalisation cleans, it does not rewrite: at most a few percent of the text changes.
        assert len(once) > 0.97 * len(text), path.name
