"""PII scrubbing: personal identifiers replaced by typed placeholders, and counted.

Numbers are replaced only when they validate or have the exact shape (and, for the loosest
shapes, the context) of an identifier, so ordinary numbers survive: Aadhaar numbers (12 digits,
first 2-9) must pass the Verhoeff checksum, card numbers (13-19 digits) Luhn, IPv6 addresses
Python's own parser; a bank account number needs an account word before it or an IFSC after it,
a bare 14-digit ABHA number the word ABHA. What is not covered, and why: README, "Data".

- Digits may be ASCII or Devanagari (०-९): the patterns run on a copy of the text whose
  Devanagari digits are ASCII ones (one character for one, so positions agree).
- Boundaries are lookarounds on ASCII letters and digits, never `\\b`: Python counts Devanagari
  letters (but not vowel signs) as word characters, so `\\b` fails on an id glued to a Hindi
  word (`मोबाइल9876543210`) and splits Hindi words inside.
- The patterns run in a fixed order, each on the text with what earlier ones found masked, so
  a GSTIN is not half-matched as a PAN nor a card number as a phone number.
- Linear time on any input: a pattern that starts with a repeated character class checks,
  right after its first character, that the one before is not of that class (a run is tried
  once, from its start), and repetitions are of single classes or of bounded groups whose
  parts cannot match the same characters (tested on adversarial inputs).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

PLACEHOLDERS = {
    "email": "<EMAIL>", "upi": "<UPI>", "aadhaar": "<AADHAAR>", "abha": "<ABHA>",
    "card": "<CARD>", "account": "<ACCOUNT>", "phone": "<PHONE>", "ip": "<IP>", "pan": "<PAN>",
    "gstin": "<GSTIN>", "ifsc": "<IFSC>", "vehicle": "<VEHICLE>", "licence": "<LICENCE>",
    "passport": "<PASSPORT>", "voter_id": "<VOTER_ID>", "address": "<ADDRESS>",
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
    return re.sub(r"[^0-9]", "", text)


def _ipv4_valid(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6_valid(text: str) -> bool:
    if text.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_ASCII_DIGITS = str.maketrans("०१२३४५६७८९", "0123456789")
# Boundaries. Each pattern starts with a character class, which `re` scans for quickly, and
# checks what comes before that first character right after it (a lookbehind as the first
# item would run at every position). A number's first digit comes not after an ASCII letter
# or digit or a "+" (a phone number's country code), nor after a digit and a separator (the
# tail of a longer number); a Devanagari letter or sign before is fine: ids are glued to
# Hindi words.
_NOT_AFTER_NUMBER = r"(?<![0-9A-Za-z_+].)(?<![0-9][.,/-].)"
# Not followed by a digit, nor by a separator and a digit.
_END = r"(?![0-9]|[.,/\-\u2013][0-9])"
_NOT_AFTER_ALNUM, _ALNUM_END = r"(?<![0-9A-Za-z].)", r"(?![0-9A-Za-z])"
_SEP = "[ .\u2013-]"  # between digit groups: space, dot, hyphen, en-dash
_ID_SEP = "[ ./\u2013-]"  # and a slash, in ids that are not phone numbers
# Devanagari letters and signs (no danda, no digits: those are ASCII in the matched copy).
_DEVANAGARI = "\u0900-\u0963\u0971-\u097f"
_STATE = (r"(?:A[NPRS]|BR|C[GH]|D[DLN]|G[AJ]|H[PR]|J[HK]|K[AL]|L[AD]|M[HLNPZ]|NL|O[DR]|P[BY]|RJ"
          r"|SK|T[GNRS]|U[AKP]|WB)")  # vehicle registration state and union territory codes


def _email() -> str:
    local = f"[A-Za-z0-9._%+{_DEVANAGARI}-]"
    label = f"[A-Za-z0-9{_DEVANAGARI}-]+"
    at = r"(?:@|\s?[\[({]\s?(?i:at|@)\s?[\])}]\s?)"
    dot = r"(?:\.|\s?[\[({]\s?(?i:dot)\s?[\])}]\s?)"
    top_level = f"(?:[A-Za-z]{{2,}}|[{_DEVANAGARI}]{{2,}})"
    return (f"{local}(?<!{local}.){local}*{at}{label}(?:{dot}{label})*{dot}{top_level}"
            "(?![A-Za-z0-9-])")


def _mobile() -> str:
    s = _SEP
    # The first character read is a prefix's ("+", "(", "0", the 9 of "91") or the number's
    # own first digit, 6-9.
    prefix = rf"(?<=\+)91{s}?|(?<=\()\+?91\){s}?|(?<=0)(?:091)?{s}?|(?<=9)1{s}?"
    groupings = (f"[0-9]{{9}}|[0-9]{{4}}{s}[0-9]{{5}}|[0-9]{{2}}{s}[0-9]{{3}}{s}[0-9]{{4}}|"
                 f"[0-9]{{3}}{s}[0-9]{{3}}{s}[0-9]{{3}}|[0-9]{{3}}{s}[0-9]{{6}}|"
                 f"[0-9]{s}[0-9]{{4}}{s}[0-9]{{4}}")  # 10, 5-5, 3-3-4, 4-3-3, 4-6, 2-4-4
    return f"[+(0-9]{_NOT_AFTER_NUMBER}(?:(?:{prefix})[6-9]|(?<=[6-9]))(?:{groupings}){_END}"


def _landline() -> str:
    s = f"{_SEP}?"
    # STD code (2-4 digits after the trunk 0) + subscriber number (8-6 digits) = 10 digits.
    numbers = "|".join(f"[1-9][0-9]{{{std - 1}}}\\)?{s}[0-9]{{{first}}}{s}[0-9]{{{last}}}"
                       for std, first, last in ((2, 4, 4), (3, 3, 4), (4, 3, 3)))
    prefix = f"(?<=\\+)91{s}|(?<=0)091{s}|(?<=0)|(?<=\\()0"  # +91, 0091, the trunk 0, (0
    return f"[+0(](?<![0-9A-Za-z_].)(?:{prefix})(?:{numbers}){_END}"


def _address() -> list[str]:
    number = f"[0-9]+[A-Za-z]?(?:[/-][0-9A-Za-z{_DEVANAGARI}]{{1,8}}){{0,3}}"  # 12/3, 17-बी
    # "Flat 302" and "फ्लैट 302" without "no.", but not a discount ("flat 50% off") or a
    # flat's size ("2 BHK flat" is the usual order, "flat 2 BHK" happens).
    not_discount = ("(?![0-9A-Za-z]|\\s*(?i:%|percent|off|rs|rupa|rupe|₹|रु|प्रतिशत|फ\u093c?ीसदी|"
                    "की छूट|ki chh|discount|cashback|bhk|बीएचके))")
    return [
        r"[HhFfPp](?<![A-Za-z].)(?i:(?<=h)ouse|(?<=f)lat|(?<=p)lot|(?<=h)\.)\s*"
        r"(?i:no\.?|number|#)\s*" + number,
        r"(?:मकान|फ्लैट|प्लॉट)\s*(?:नं\.?|नंबर|संख्या)\s*" + number,
        f"म(?<![{_DEVANAGARI}].)" r"\.\s?नं?\.?\s*" + number,
        r"[Ff](?<![A-Za-z].)(?i:lat)\s?" + number + not_discount,
        r"फ्लैट\s?" + number + not_discount,
    ]


_Valid = Callable[[str], bool]
# (kind, pattern, validator or None). A pattern with an `id` group replaces only that group
# (the words around it are the context that makes the number an id).
_PATTERNS: list[tuple[str, re.Pattern, _Valid | None]] = [
    ("email", re.compile(_email()), None),  # email and UPI run only on text with an "at"
    # UPI: a handle without a top-level domain (name@okaxis, 9876543210@ybl, name@paytm).
    ("upi", re.compile(r"[A-Za-z0-9._-](?<![A-Za-z0-9._-].)[A-Za-z0-9._-]+@[A-Za-z][A-Za-z0-9]+"
                       r"(?![A-Za-z0-9_@-]|\.[A-Za-z0-9])"), None),
    # IPv6: a run of hex digits and colons with a colon near its start, that Python parses.
    ("ip", re.compile(r"[0-9A-Fa-f:](?<![0-9A-Za-z:.].)(?=[0-9A-Fa-f]{0,3}:)"
                      r"[0-9A-Fa-f:]{2,38}(?![0-9A-Za-z:])"), _ipv6_valid),
    # GSTIN: state code, the holder's PAN, entity number, "Z", check character.
    ("gstin", re.compile(f"[0-3]{_NOT_AFTER_ALNUM}[0-9][A-Z]{{3}}[ABCFGHLJPT][A-Z][0-9]{{4}}"
                         f"[A-Z][1-9A-Z]Z[0-9A-Z]{_ALNUM_END}"), None),
    # PAN: 5 letters (the 4th is the holder type), 4 digits, a letter; in one case, groups
    # may be spaced.
    ("pan", re.compile(f"[A-Za-z]{_NOT_AFTER_ALNUM}"
                       r"(?:(?<=[A-Z])[A-Z]{2}[ABCFGHLJPT][A-Z][ -]?[0-9]{4}[ -]?[A-Z]|"
                       r"(?<=[a-z])[a-z]{2}[abcfghljpt][a-z][ -]?[0-9]{4}[ -]?[a-z])"
                       + _ALNUM_END), None),
    # Driving licence: state, RTO, year of issue, 7 digits (MH12 20110012345, DL-0420110149646).
    ("licence", re.compile(f"[A-Z]{_NOT_AFTER_ALNUM}[A-Z](?<={_STATE})"
                           r"[ -]?[0-9]{2}[ -]?(?:19|20)[0-9]{2}[ -]?[0-9]{7}" + _ALNUM_END), None),
    # Vehicle registration: state, district (Delhi adds a letter), series letters, number;
    # and the Bharat series (22 BH 1234 AA).
    ("vehicle", re.compile(f"[A-Z]{_NOT_AFTER_ALNUM}[A-Z](?<={_STATE})"
                           r"[ .-]?[0-9]{1,2}[A-Z]?[ .-]?[A-Z]{1,3}[ .-]?[0-9]{1,4}" + _ALNUM_END),
     None),
    ("vehicle", re.compile(f"[0-9]{_NOT_AFTER_ALNUM}[0-9][ .-]?BH[ .-]?[0-9]{{4}}[ .-]?[A-Z]{{1,2}}"
                           + _ALNUM_END), None),
    ("voter_id", re.compile(f"[A-Z]{_NOT_AFTER_ALNUM}[A-Z]{{2}}[0-9]{{7}}{_ALNUM_END}"), None),
    ("passport", re.compile(f"[A-Z]{_NOT_AFTER_ALNUM}[0-9]{{7}}{_ALNUM_END}"), None),
    # Bank account: 9-18 digits after an account word, or before an IFSC.
    ("account", re.compile(
        f"[Aaखअए](?<![A-Za-z{_DEVANAGARI}].)"
        r"(?:(?<=[Aa])(?i:/c|cct|ccount)|(?<=ख)ाता|(?<=[अए])काउंट)"
        r"(?:\s?(?i:no\.?|number|संख्या|नं\.?|नंबर|क्रमांक|#))?\s?[:-]?\s?"
        r"(?P<id>[0-9]{9,18})(?![0-9])"), None),
    ("account", re.compile(r"[0-9](?<![0-9].)[0-9]{8,17}(?![0-9])"
                           r"(?=[^\n0-9]{0,40}(?:IFSC|आईएफएससी|[A-Z]{4}0[A-Z0-9]{6}))"), None),
    # ABHA: 14 digits written 2-4-4-4, or after the word ABHA.
    ("abha", re.compile(
        f"[0-9]{_NOT_AFTER_NUMBER}[0-9]([ -])[0-9]{{4}}\\1[0-9]{{4}}\\1[0-9]{{4}}{_END}"), None),
    ("abha", re.compile(f"[Aaआ](?<![A-Za-z{_DEVANAGARI}].)(?:(?<=[Aa])(?i:bha)|(?<=आ)भा)"
                        r"[^\n0-9]{0,30}(?P<id>[0-9]{14})(?![0-9])"), None),
    ("aadhaar", re.compile(
        f"[2-9]{_NOT_AFTER_NUMBER}[0-9]{{3}}{_ID_SEP}?[0-9]{{4}}{_ID_SEP}?[0-9]{{4}}{_END}"),
     lambda m: verhoeff_valid(_digits(m))),
    ("card", re.compile(f"[0-9]{_NOT_AFTER_NUMBER}(?:[ -]?[0-9]){{12,18}}{_END}"),
     lambda m: luhn_valid(_digits(m))),
    ("phone", re.compile(_mobile()), None),
    ("phone", re.compile(_landline()), None),
    ("ip", re.compile(r"[0-9](?<![0-9.].)[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9.]?[0-9])"),
     _ipv4_valid),
    ("ifsc", re.compile(f"[A-Z]{_NOT_AFTER_ALNUM}[A-Z]{{3}}0[A-Z0-9]{{6}}{_ALNUM_END}"), None),
    # Street level: a house/flat/plot number phrase, the part of an address that is reliable
    # to find; the locality that follows is left alone.
    *(("address", re.compile(pattern), None) for pattern in _address()),
]

# Every pattern needs a digit, an "@" or a bracketed "at": the fast exit.
_MAY_HAVE_PII = re.compile(r"[0-9\u0966-\u096f@]|[\[({]\s?(?i:at)\s?[\])}]")
_AT = re.compile(r"@|[\[({]\s?(?i:at|@)\s?[\])}]")
_MASK = "\x00"  # stands for found text in the matched copy: no pattern matches it


@dataclass(frozen=True)
class PiiSpan:
    start: int
    end: int
    kind: str


def find_pii(text: str) -> list[PiiSpan]:
    """Where the PII in `text` is, in text order."""
    if not _MAY_HAVE_PII.search(text):
        return []
    view = text.translate(_ASCII_DIGITS)
    has_at = _AT.search(view) is not None
    found: list[PiiSpan] = []
    for kind, pattern, valid in _PATTERNS:
        if kind in ("email", "upi") and not has_at:
            continue
        def mask(match: re.Match, kind=kind, valid=valid) -> str:
            if valid is not None and not valid(match.group()):
                return match.group()
            group = "id" if match.groupdict().get("id") is not None else 0
            start, end = match.span(group)
            found.append(PiiSpan(start, end, kind))
            return (match.string[match.start():start] + _MASK * (end - start)
                    + match.string[end:match.end()])
        view = pattern.sub(mask, view)
    return sorted(found, key=lambda span: span.start)


def scrub(text: str) -> tuple[str, Counter]:
    """The text with PII replaced by placeholders, and counts by type."""
    spans = find_pii(text)
    pieces, end = [], 0
    for span in spans:
        pieces += [text[end:span.start], PLACEHOLDERS[span.kind]]
        end = span.end
    pieces.append(text[end:])
    return "".join(pieces), Counter(span.kind for span in spans)
