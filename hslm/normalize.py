"""The one text normalisation of hslm, shared by tokenizer training, encoding and the data pipeline.

`normalize(text)` applies, in this order (the order is what makes it idempotent):

1. Line breaks: CR LF, CR, VT, FF, NEL, U+2028 and U+2029 become "\\n".
2. Single characters:
   - removed: C0/C1 control characters other than "\\t" and "\\n", DEL, soft hyphen,
     zero-width space, BOM / zero-width no-break space, word joiner and invisible operators,
     bidirectional marks, embeddings, overrides and isolates;
   - to an ASCII space: no-break space and every other Unicode space separator;
   - curly quotes to straight ones (‘ ’ ‚ ‛ → ', “ ” „ ‟ → ");
   - U+2581 "▁" to a space: it is SentencePiece's space marker, so the tokenizer could not
     give it back as itself;
   - lone surrogates (not encodable as UTF-8) to U+FFFD.
3. Unicode NFC. This is also the rule for nukta letters: every nukta letter has exactly one
   form. क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़ (U+0958–U+095F) are composition exclusions, so NFC turns the
   precomposed letters into base + nukta U+093C and never composes them back; ऩ ऱ ऴ
   (U+0929, U+0931, U+0934) are not exclusions and come out precomposed. The result is
   plain NFC, so any other NFC-normalising tool agrees with it.
4. Joiners: ZWJ U+200D and ZWNJ U+200C are kept only directly between two Devanagari letters
   or signs, where they choose a conjunct's form (क्‍ष, र्‍य); elsewhere they are dropped.
5. Danda: an ASCII "|" that follows a Devanagari character (spaces, tabs and more pipes may
   come between) is a danda "।"; then "।।" is a double danda "॥". A pipe after Latin text
   or digits is left alone. (A Markdown table with Devanagari cells would lose its pipes.)
6. Whitespace within a line: a run of spaces and tabs becomes one character, a tab if the run
   has a tab (tabs separate columns in some sources), else one space; spaces and tabs at the
   end of every line are removed. Newlines, including empty lines, are kept.

Every step is a precompiled regular expression or a C-level string method, with the
expensive ones skipped when the text cannot need them: this runs on gigabytes.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize"]

# Letters and signs of the Devanagari blocks (not danda, double danda, digits or the
# abbreviation sign): the characters between which a joiner means something.
_DEVANAGARI_LETTER = "\u0900-\u0963\u0971-\u097f\ua8e0-\ua8ff"
# Any Devanagari character, punctuation included: what may come before a danda.
_DEVANAGARI = "\u0900-\u097f\ua8e0-\ua8ff"


def _single_character_fixes() -> dict[str, str]:
    controls = [c for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n"]
    invisible = [0x00AD, 0x061C, 0x180E, 0x200B, 0x200E, 0x200F, *range(0x202A, 0x202F),
                 *range(0x2060, 0x2065), *range(0x2066, 0x206A), 0xFEFF]
    fixes = {chr(code): "" for code in controls + invisible}
    for line_break in "\r\x0b\x0c\x85\u2028\u2029":
        fixes[line_break] = "\n"
    for space in ["\u00a0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u202f", "\u205f",
                  "\u3000", "\u2581"]:
        fixes[space] = " "
    fixes.update({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                  "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
    fixes.update({chr(code): "\ufffd" for code in range(0xD800, 0xE000)})
    return fixes


_FIXES = _single_character_fixes()
# A character class of every key; matching with a regex and looking up only the hits is
# about ten times faster than str.translate on text that is mostly clean.
_FIXABLE = re.compile("[" + "".join(re.escape(c) for c in _FIXES) + "]")
# A joiner not preceded or not followed by a Devanagari letter or sign. (The lookbehind
# spans the joiner itself so that the pattern starts with it, which makes the scan fast.)
_STRAY_JOINER = re.compile(
    f"[\u200c\u200d](?:(?<![{_DEVANAGARI_LETTER}].)|(?![{_DEVANAGARI_LETTER}]))")
_DEVANAGARI_CHAR = re.compile(f"[{_DEVANAGARI}]")
# A chain of pipes with nothing but spaces and tabs between them.
_PIPE_CHAIN = re.compile(r"\|(?:[ \t]*\|)*")
_SPACE_RUN = re.compile(r"[ \t]{2,}")


def _fix_character(match: re.Match) -> str:
    return _FIXES[match.group()]


def _pipes_to_dandas(match: re.Match) -> str:
    """The chain as dandas if the last character before it, spaces and tabs aside, is Devanagari."""
    text, before = match.string, match.start() - 1
    while before >= 0 and text[before] in " \t":
        before -= 1
    if before >= 0 and _DEVANAGARI_CHAR.match(text, before):
        return match.group().replace("|", "।")
    return match.group()


def _collapse_space_run(match: re.Match) -> str:
    return "\t" if "\t" in match.group() else " "


def normalize(text: str) -> str:
    """Normalise `text` as described in this module's docstring; idempotent."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    text = _FIXABLE.sub(_fix_character, text)
    text = unicodedata.normalize("NFC", text)
    # Dropping a joiner can bring a letter and a combining mark together, which NFC then
    # composes or reorders, giving another joiner new neighbours: repeat until stable
    # (one round in practice; each round removes at least one joiner, so it ends).
    while "\u200c" in text or "\u200d" in text:
        text, dropped = _STRAY_JOINER.subn("", text)
        if not dropped:
            break
        text = unicodedata.normalize("NFC", text)
    if "|" in text:
        text = _PIPE_CHAIN.sub(_pipes_to_dandas, text)
    text = text.replace("।।", "॥")
    if "  " in text or "\t" in text:
        text = _SPACE_RUN.sub(_collapse_space_run, text)
    # Runs are single characters now, so a trailing run is one space or tab.
    return text.replace(" \n", "\n").replace("\t\n", "\n").rstrip(" \t")
