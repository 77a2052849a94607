"""The data pipeline's filters as pure functions: real Hindi text from ../shared/data/hindi for
the positive and negative cases, hand-made strings where real text has none (other
languages), and Hypothesis for arbitrary Unicode. PII scrubbing: test_pii.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hslm.data.language import identify, words
from hslm.data.quality import (QualityThresholds, legacy_font_damage, quality_problem,
                               remove_boilerplate)
from hslm.data.safety import SafetyLists
from hslm.normalize import normalize

LIMITS = QualityThresholds()


def real_lines(hindi_data_dir, name: str) -> list[str]:
    return [normalize(line) for line in (hindi_data_dir / name).read_text("utf-8").splitlines()
            if line.strip()]


def problem(text: str) -> str | None:
    return quality_problem(text, words(text), identify(text).label, LIMITS)


# ------------------------------------------------------------------ script and language
def test_real_devanagari_prose_is_hindi(hindi_data_dir):
    lines = real_lines(hindi_data_dir, "stories_hindi_discourse_sentences.txt")[:2000]
    labels = [identify(line).label for line in lines if len(words(line)) >= 5]
    assert labels.count("hi") / len(labels) > 0.99


def test_real_hinglish_queries_are_romanised_hindi(hindi_data_dir):
    lines = real_lines(hindi_data_dir, "hinglish_top_code_switched_queries.txt")
    labels = [identify(line).label for line in lines]
    assert labels.count("hi-latn") / len(labels) > 0.95
    assert identify("do ghante ke liye alarm set kardo").label == "hi-latn"


def test_english_and_code_mixed_devanagari(hindi_data_dir):
    english = [line for line in real_lines(hindi_data_dir, "essays_blogs_hindi_authors.txt")
               if line.startswith("(During this time Galileo")]
    assert english and identify(english[0]).label == "en"
    assert identify("FAQs about adverts on BBC pages").label == "en"
    assert identify("कम दाम में 4G Connectivity , Android 5.0 Lollipop है ।").label == "hi-mixed"


@pytest.mark.parametrize("text, label", [
    ("یہ ایک اردو جملہ ہے اور یہ فارسی رسم الخط میں لکھا گیا ہے", "ur"),
    ("मी आज शाळेत गेलो आणि तिथे खूप मजा आली, कारण आमच्या वर्गात नवीन शिक्षक आहेत", "mr"),
    ("म घर जाँदैछु किनभने आज धेरै काम भएको छ र म पनि थाकेको छु", "ne"),
    ("এটি একটি বাংলা বাক্য যা অন্য লিপিতে লেখা", "other"),
    ("12345 !!! ---", "none"),
])
def test_other_languages_and_scripts(text, label):
    assert identify(text).label == label


def test_hindi_with_a_marathi_looking_word_stays_hindi():
    assert identify("राम ने कहा कि वह आज पण बाज़ार नहीं जाएगा और घर पर ही रहेगा").label == "hi"


# ------------------------------------------------------------------ quality
def test_clean_real_sentences_pass(hindi_data_dir):
    lines = [line for line in real_lines(hindi_data_dir, "stories_bhaav_sentences.txt")[:3000]
             if len(words(line)) >= 8]
    failed = [line for line in lines if problem(line)]
    assert len(failed) / len(lines) < 0.1, failed[:5]


def test_legacy_font_damage_in_real_literature(hindi_data_dir):
    """The LTRC files use ऽ as punctuation and hold stray-sign runs; the news does not."""
    literature = real_lines(hindi_data_dir, "literature_ltrc_modern_prose_drama.txt")
    broken = [line for line in literature if " ऽ " in line][:500]
    assert len(broken) == 500
    assert all(legacy_font_damage(line) > 0 for line in broken)
    assert sum(problem(line) == "legacy_font" for line in broken) / len(broken) > 0.8
    headlines = real_lines(hindi_data_dir, "news_headlines_bbc_hindi.txt")
    assert sum(legacy_font_damage(line) > 0 for line in headlines) / len(headlines) < 0.02
    assert legacy_font_damage("प्ृश्र्द्यीैूश्") >= 2
    assert legacy_font_damage("सोऽहम् एक संस्कृत शब्द है") == 0  # avagraha inside a word


@pytest.mark.parametrize("text, expected", [
    ("नमस्ते", "too_few_words"),
    ("यह " + "अत्यधिकलंबाशब्दजोकभीखत्मनहींहोता " * 5, "mean_word_length"),
    ("# # # # # यह है कुछ", "symbols"),
    ("कोड 1234 5678 9012 3456 7890 1234 है", "digits"),
    ("बीबीसी हिंदी डॉट कॉम : नियम व शर्तें", "no_stop_words"),
    ("यह एक पंक्ति है\nयह एक पंक्ति है\nयह एक पंक्ति है\nकुछ और है", "repeated_lines"),
    (" ".join(["वह बाज़ार गया और फल लाया"] * 12), "repeated_ngrams"),
])
def test_quality_rules_catch_bad_text(text, expected):
    assert problem(text) == expected


def test_boilerplate_lines_are_removed():
    text = ("कोरोना से दो मौतें हुई हैं और अस्पताल में भर्ती मरीज़ों की संख्या बढ़ी है।\n"
            "यह भी पढ़ें: कोरोना के नए मामले\nPrevious article\nहमें फॉलो करें फेसबुक पर\n"
            "सरकार ने नए दिशानिर्देश जारी किए हैं।")
    cleaned, removed = remove_boilerplate(text)
    assert removed == 3
    assert cleaned.splitlines() == [text.splitlines()[0], text.splitlines()[-1]]
    # A sentence that merely mentions reading is not boilerplate.
    assert remove_boilerplate("उसने किताब पढ़ें या नहीं, यह तय नहीं था।")[1] == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_normalisation_of_arbitrary_unicode_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_filters_accept_arbitrary_unicode(text):
    text = normalize(text)
    identify(text)
    problem(text)
    legacy_font_damage(text)
    remove_boilerplate(text)


# ------------------------------------------------------------------ safety
def test_csam_terms_drop_real_headlines_and_lists_extend(hindi_data_dir, tmp_path):
    lists = SafetyLists.load()
    headlines = real_lines(hindi_data_dir, "news_headlines_bbc_hindi.txt")
    hits = [line for line in headlines if lists.has_csam_term(line)]
    assert hits and all("पोर्न" in line for line in hits)
    assert not lists.has_csam_term("बच्चों की शिक्षा पर नई नीति")
    extra = tmp_path / "mine.txt"
    extra.write_text("# my list\nनिषिद्धशब्द\n", encoding="utf-8")
    assert SafetyLists.load(extra_csam=[str(extra)]).has_csam_term("इसमें निषिद्धशब्द है")
    assert not lists.has_csam_term("इसमें निषिद्धशब्द है")


def test_abusive_share():
    lists = SafetyLists.load()
    text = "तू चूतिया है और वो भी चूतिया है, chutiya log"
    count, share = lists.abusive_share(words(text))
    assert count == 3 and share > 0.2
    assert lists.abusive_share(words("आज मौसम अच्छा है")) == (0, 0.0)
    assert lists.abusive_share(words("CHUTIYA kaha")) == (1, 0.5)
