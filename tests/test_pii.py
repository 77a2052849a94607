"""PII scrubbing: every identifier format the scrubber claims, written the ways Hindi and Hinglish
text writes it (grouped, dotted, glued to Hindi words, in Devanagari digits), next to the
ordinary numbers it must leave alone (years, prices, dates, ISBNs, scores, versions); real
news; arbitrary text; and inputs built to make a backtracking regex take quadratic time.
The recall and false-positive rates on a labelled set and on real text: benchmarks/pii_recall.py."""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hslm.data.pii import find_pii, luhn_valid, scrub, verhoeff_valid
from hslm.normalize import normalize

DEVANAGARI_DIGITS = str.maketrans("0123456789", "०१२३४५६७८९")


def valid_aadhaar(prefix: str = "23412341234") -> str:
    return next(prefix + str(d) for d in range(10) if verhoeff_valid(prefix + str(d)))


AADHAAR = valid_aadhaar()
NOT_AADHAAR = AADHAAR[:-1] + str((int(AADHAAR[-1]) + 1) % 10)  # fails Verhoeff


def test_verhoeff_and_luhn_against_published_examples():
    assert verhoeff_valid("2363") and not verhoeff_valid("2364")  # Verhoeff's "236" → 3
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert verhoeff_valid(AADHAAR) and not verhoeff_valid(NOT_AADHAAR)


A = AADHAAR
FOUND = [
    # phone: every grouping, prefix and separator; glued to Hindi; landlines with STD codes
    ("फ़ोन +91 98765 43210 पर करें", "फ़ोन <PHONE> पर करें"),
    ("call 09876543210 now", "call <PHONE> now"),
    ("नंबर 987 654 3210 पर", "नंबर <PHONE> पर"),
    ("नंबर 9876 543 210 पर", "नंबर <PHONE> पर"),
    ("नंबर 987-654-3210 पर", "नंबर <PHONE> पर"),
    ("नंबर 98765.43210 पर", "नंबर <PHONE> पर"),
    ("नंबर 98.7654.3210 पर", "नंबर <PHONE> पर"),
    ("नंबर 919876543210 पर", "नंबर <PHONE> पर"),
    ("नंबर (+91) 98765-43210 पर", "नंबर <PHONE> पर"),
    ("मोबाइल9876543210पर कॉल करें", "मोबाइल<PHONE>पर कॉल करें"),
    ("मो.नं.9876543210", "मो.नं.<PHONE>"),
    ("हेल्पलाइन 011-23978046 पर", "हेल्पलाइन <PHONE> पर"),
    ("फोन 0522 2230006 पर", "फोन <PHONE> पर"),
    ("फोन (0141) 234 5678 पर", "फोन <PHONE> पर"),
    ("फोन +91 11 2345 6789 पर", "फोन <PHONE> पर"),
    ("नंबर 104/0612-2217681 है", "नंबर 104/<PHONE> है"),
    ("फोन ९८७६५ ४३२१० पर", "फोन <PHONE> पर"),
    # Aadhaar: any separator, Devanagari digits, glued
    (f"आधार {A[:4]} {A[4:8]} {A[8:]} है", "आधार <AADHAAR> है"),
    (f"आधार {A} है", "आधार <AADHAAR> है"),
    (f"आधार {A[:4]}.{A[4:8]}.{A[8:]} है", "आधार <AADHAAR> है"),
    (f"आधार {A[:4]}/{A[4:8]}/{A[8:]} है", "आधार <AADHAAR> है"),
    (f"आधार {A[:4]}–{A[4:8]}–{A[8:]} है", "आधार <AADHAAR> है"),
    (f"आधार {A.translate(DEVANAGARI_DIGITS)} है", "आधार <AADHAAR> है"),
    (f"आधारकार्ड{A}जमा", "आधारकार्ड<AADHAAR>जमा"),
    # e-mail: ASCII, Devanagari local part, IDN domain, glued, [at]/(at)
    ("मेरा ईमेल ram.kumar@example.co.in है", "मेरा ईमेल <EMAIL> है"),
    ("मेल राम.कुमार@उदाहरण.भारत पर", "मेल <EMAIL> पर"),
    ("मेल ram@डाकघर.भारत पर", "मेल <EMAIL> पर"),
    ("ईमेल ram.k@gmail.comपर भेजें", "ईमेल <EMAIL>पर भेजें"),
    ("लिखें ram [at] gmail [dot] com पर", "लिखें <EMAIL> पर"),
    ("लिखें ram.kumar(at)yahoo.co.in पर", "लिखें <EMAIL> पर"),
    # UPI
    ("भुगतान ramkumar@okaxis पर करें", "भुगतान <UPI> पर करें"),
    ("9876543210@ybl पर भेजो", "<UPI> पर भेजो"),
    ("pay to shop.name@paytm.", "pay to <UPI>."),
    # PAN: upper, lower, spaced, glued; inside a GSTIN
    ("PAN ABCPE1234F जमा करें", "PAN <PAN> जमा करें"),
    ("पैन abcpe1234f है", "पैन <PAN> है"),
    ("पैन ABCPE 1234 F है", "पैन <PAN> है"),
    ("पैनABCPE1234Fजमा करें", "पैन<PAN>जमा करें"),
    ("GSTIN 27ABCPE1234F1Z5 है", "GSTIN <GSTIN> है"),
    ("पैन ABCPE१२३४F है", "पैन <PAN> है"),
    # vehicle, passport, voter ID, driving licence
    ("गाड़ी MH 12 AB 1234 थी", "गाड़ी <VEHICLE> थी"),
    ("गाड़ीMH12AB1234 थी", "गाड़ी<VEHICLE> थी"),
    ("कार DL 3C AB 1234 थी", "कार <VEHICLE> थी"),
    ("नई कार 22 BH 1234 AA है", "नई कार <VEHICLE> है"),
    ("गाड़ी MH १२ AB १२३४ थी", "गाड़ी <VEHICLE> थी"),
    ("पासपोर्ट J8369854 है", "पासपोर्ट <PASSPORT> है"),
    ("वोटर आईडी ABC1234567 है", "वोटर आईडी <VOTER_ID> है"),
    ("डीएल MH12 20110012345 है", "डीएल <LICENCE> है"),
    ("लाइसेंस DL-0420110149646 है", "लाइसेंस <LICENCE> है"),
    # bank: card (Luhn), account by its word or an IFSC after it, IFSC
    ("कार्ड 4111 1111 1111 1111 से भुगतान", "कार्ड <CARD> से भुगतान"),
    ("खाता संख्या 123456789012 है", "खाता संख्या <ACCOUNT> है"),
    ("A/c No. 50100123456780 है", "A/c No. <ACCOUNT> है"),
    ("खाता 12345678901, IFSC SBIN0001234", "खाता <ACCOUNT>, IFSC <IFSC>"),
    ("राशि 123456789012 (IFSC: HDFC0001234) में", "राशि <ACCOUNT> (IFSC: <IFSC>) में"),
    ("IFSC SBIN0001234 लिखें", "IFSC <IFSC> लिखें"),
    # ABHA, IP
    ("ABHA 91-1234-5678-9012 है", "ABHA <ABHA> है"),
    ("आभा नंबर 91123456789012 है", "आभा नंबर <ABHA> है"),
    ("सर्वर 192.168.10.254 बंद है", "सर्वर <IP> बंद है"),
    ("आईपी 2001:db8::1 है", "आईपी <IP> है"),
    ("IPv6 2001:0db8:85a3:0000:0000:8a2e:0370:7334.", "IPv6 <IP>."),
    ("सर्वर १९२.१६८.१०.२५४ बंद है", "सर्वर <IP> बंद है"),
    # street address
    ("पता: मकान नं. 12/3, गांधी नगर", "पता: <ADDRESS>, गांधी नगर"),
    ("House No. 45B, MG Road", "<ADDRESS>, MG Road"),
    ("पता: म.नं. 12, गली 3", "पता: <ADDRESS>, गली 3"),
    ("Flat 302, सनराइज़ अपार्टमेंट", "<ADDRESS>, सनराइज़ अपार्टमेंट"),
    ("फ्लैट 302 में रहते हैं", "<ADDRESS> में रहते हैं"),
    ("पता: म.नं. १२, गली ३", "पता: <ADDRESS>, गली ३"),
]


@pytest.mark.parametrize("text, expected", FOUND)
def test_each_format_is_replaced_by_its_placeholder(text, expected):
    scrubbed, counts = scrub(text)
    assert scrubbed == expected
    assert counts == Counter(kind.lower() for kind in re.findall(r"<([A-Z_]+)>", expected))


KEPT = [
    # years, dates, times
    "2020 में 1,234,567 लोग आए", "सन् १९४७ में आज़ादी मिली", "सत्र 2019-2020 में",
    "दिनांक 12.05.2020 को", "दिनांक 12/05/2020 को", "तारीख 2020-05-12 थी",
    "१५ अगस्त १९४७ को", "समय 02:53:00 PM IST", "बैठक 10:30 बजे",
    # prices and counts
    "कीमत ₹9,999 है", "कीमत 12,999 रुपये", "Rs. 1,49,999 का फोन", "कुल 98765 मामले",
    "जनसंख्या 1,21,08,54,977 है", "पिन कोड 110001 है", "Flat 50% off सब पर",
    "flat 500 रुपये की छूट", "फ्लैट 20 प्रतिशत छूट", "नया flat 2 BHK का",
    "flat 500 rupaye ki chhoot",
    # ISBNs, scores, versions, model names
    "ISBN 978-3-16-148410-0", "ISBN 81-7525-766-0", "भारत ने 250/6 रन बनाए",
    "भारत 287/4 (50 ओवर)", "कोहली 183(148) रन", "स्कोर 3:1 रहा", "संस्करण 4.4.2 जारी",
    "संस्करण 1.2.3.4.5 जारी", "एंड्रॉयड 10.2.1 पर", "COVID-19 और H1N1", "PM2.5 का स्तर 300",
    "UP 2022 चुनाव", "MP 12 सीटें", "Galaxy S10 और iPhone 11",
    # numbers that fail their checksum or lack their context
    f"रसीद संख्या {NOT_AADHAAR} है", "कार्ड 4111 1111 1111 1112 नहीं", "फोन 5123456789 नहीं",
    "वह दिखाता 123456789012 है", "कुल 12345678901234 रुपये",
    # @ and colons that are not addresses
    "हैंडल @CovidIndiaSeva पर", "फेसबुक पेज@RavishKaPage को", "पासवर्ड house123@# जैसा",
    "Moral Of This Story ::", "ठीक::", "decade faced a bad cafe 1",
]


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_numbers_and_lookalikes_survive(text):
    assert scrub(text) == (text, {})


def test_spans_point_into_the_original_text():
    text = f"राम का फोन ९८७६५४३२१० और आधार {A} है, मेल ram@x.in"
    spans = find_pii(text)
    assert [(text[s.start:s.end], s.kind) for s in spans] == [
        ("९८७६५४३२१०", "phone"), (A, "aadhaar"), ("ram@x.in", "email")]
    # Only the number is replaced where the words before it are what make it an id.
    text = "खाता नं. 123456789012"
    assert [(s.kind, text[s.start:s.end]) for s in find_pii(text)] == [("account", "123456789012")]


def test_real_news_keeps_its_ordinary_numbers(hindi_data_dir):
    """Dates, counts and years survive; what is replaced are the phone numbers the news
    printed (shops' and helplines' mobile numbers and landlines)."""
    path = hindi_data_dir / "news_covid19_hindi_newspapers_2020.txt"
    lines = [normalize(line) for line in path.read_text("utf-8").splitlines()[:3000]]
    short_number = re.compile(r"(?<![\d,.])\d{1,9}(?![\d,.]?\d)")
    replaced = Counter()
    for line in lines:
        scrubbed, counts = scrub(line)
        replaced += counts
        before, after = Counter(short_number.findall(line)), Counter(short_number.findall(scrubbed))
        assert after <= before, line
        # A landline's STD code and subscriber part are short numbers: only those go.
        found = [line[span.start:span.end] for span in find_pii(line)]
        assert all(any(number in text for text in found) for number in before - after), line
    assert set(replaced) == {"phone"} and replaced["phone"] > 30


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_scrubbing_arbitrary_text_never_crashes_and_is_idempotent(text):
    once, _ = scrub(text)
    assert scrub(once) == (once, {})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789०१२३४५६७८९ .-/@:()[]+AaBHZatdoक", max_size=80))
def test_scrubbing_id_shaped_text_is_idempotent(text):
    once, _ = scrub(text)
    assert scrub(once) == (once, {})
    spans = find_pii(text)  # in order, inside the text, never overlapping
    assert all(0 <= span.start < span.end <= len(text) for span in spans)
    assert all(before.end <= after.start for before, after in zip(spans, spans[1:]))


def adversarial_inputs(length: int) -> dict[str, str]:
    """Runs of what the patterns repeat over, each `length` characters: where a backtracking
    pattern with nested or overlapping repeats takes quadratic (or worse) time."""
    shapes = {
        "digits": "9", "spaced digits": "9 ", "dotted digits": "1.", "hyphenated digits": "1-",
        "digit-slash": "1/", "at signs": "@", "letter-at": "a@", "local part": "a.",
        "percent local part": "a%", "colons": ":", "hex and colons": "a1:",
        "bracketed at": "a [at] ", "dot words": "a [dot] ", "letters and digits": "A1",
        "state codes": "MH12", "PAN-like": "ABCPE", "Devanagari glued to digits": "क9",
        "Devanagari digits": "९", "Devanagari letters": "कि",
        "account word": "खाता ", "flat": "flat ", "house no": "H.No. ",
    }
    # Each ends with a digit and an "@" so that no input takes the no-digit, no-"@" fast exit.
    inputs = {name: (unit * (length // len(unit) + 1))[:length - 3] + " 1@"
              for name, unit in shapes.items()}
    rng = random.Random(17)
    alphabet = "0123456789०१ .-/@:()[]+aAZBHक"
    inputs["random id characters"] = "".join(rng.choice(alphabet) for _ in range(length))
    return inputs


def test_adversarial_inputs_take_linear_time():
    length = 100_000
    sentence = "राम ने 2020 में 15 किताबें पढ़ीं और ram@example.com पर 3 पत्र लिखे। "
    baseline_text = (sentence * (length // len(sentence) + 1))[:length]
    start = time.perf_counter()
    scrub(baseline_text)
    baseline = time.perf_counter() - start
    for name, text in adversarial_inputs(length).items():
        start = time.perf_counter()
        scrub(text)
        elapsed = time.perf_counter() - start
        # Linear inputs measure 0.5-2.5x the baseline; quadratic behaviour on 100k characters
        # is thousands of times it.
        assert elapsed < 50 * baseline, (name, elapsed, baseline)
