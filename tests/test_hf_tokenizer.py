"""tokenizer.json outside hslm's Python: its normaliser is `hslm.normalize.normalize`, so
tokenizers and transformers give hslm's ids on unnormalised text; onnxruntime-genai's own
tokenizer (onnxruntime-extensions) gives them on normalised text, the one measured exception
being space-free runs of more than 100 symbols, and decodes them back to the same text."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hslm.config import ModelConfig
from hslm.hf_tokenizer import normalizer
from hslm.model import Gemma3
from hslm.normalize import _FIXES, normalize
from hslm.tokenizer import HF_TOKENIZER_FILE, SPECIAL_TOKENS, read_lines

# Text as a web page, a keyboard or an OCR tool gives it: every rule of normalize at work.
RAW_CASES = [
    "\u095bरा \u095eर्क \u095cक \u095dक्कन",                          # precomposed nukta letters
    "\u0915\u093cलम \u0958लम \u0929 \u0928\u093c \u0931 \u0930\u093c",  # nukta both ways
    "\u201cनमस्ते\u201d \u2018दुनिया\u2019 \u201e\u201f",                 # curly quotes
    "भारत\u00a0की\u202fराजधानी\u2009नई\u3000दिल्ली",                  # no-break and thin spaces
    "क\u200bख\ufeffग\u00ad\u2060घ \u200e\u202aलिखा\u202c",           # zero-width and bidi marks
    "क्\u200dष क्\u200cष a\u200db \u200dक",                            # joiners in and out of words
    "पहली पंक्ति  \r\nदूसरी\rतीसरी\u2028चौथी\x0bपाँचवीं\x85",           # line ends, trailing spaces
    "राम आए | फिर गए || और |\t| चले|| x | y",                          # pipes as dandas
    "a  \t b\t\tc   d \t",                                              # whitespace runs
    "kal subah 7 baje ka alarm laga do please",                          # Hinglish
    "मुझे kal के weather का update दो, OK?",
    "1234567890 ₹2,50,000.75 १२३४ 3.14159",                              # digits
    "😀🙏🏽 👍 emoji ✓ ™ © 中文 العربية ঋ \x00\x07\x7f\x9f",              # bytes and controls
    "▁ SentencePiece's own space marker ▁▁",
    "  \t ",
    "",
]


@pytest.fixture(scope="module")
def real_lines(hindi_data_dir) -> list[str]:
    """Every 20th line of every data file, as it is (about 7,300 lines)."""
    return [line for path in sorted(hindi_data_dir.glob("*.txt"))
            for line in list(read_lines(path))[::20]]


@pytest.fixture(scope="module")
def hf_tokenizer(trained_tokenizer_dir):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(trained_tokenizer_dir / HF_TOKENIZER_FILE))
    tokenizer.encode_special_tokens = True  # special token names as text, as hslm encodes
    return tokenizer


@pytest.fixture(scope="module")
def genai_tokenizer(trained_tokenizer, tmp_path_factory):
    """onnxruntime-genai's tokenizer on an ONNX folder's files (the graph is not needed)."""
    og = pytest.importorskip("onnxruntime_genai",
                             reason="onnxruntime-genai is not installed (pip install hslm[onnx])")
    from hslm.export.onnx import write_folder_files

    folder = tmp_path_factory.mktemp("genai-tokenizer")
    model = Gemma3(ModelConfig.preset("tiny", vocab_size=trained_tokenizer.vocab_size))
    write_folder_files(folder, model, trained_tokenizer)
    return og.Tokenizer(str(folder))


def genai_ids(genai_tokenizer, text: str) -> list[int]:
    return genai_tokenizer.encode(text).tolist()


# ---------------------------------------------------------------- the normaliser
FUZZ_ALPHABET = [
    *"कखगजडढफनरयािीुूेैोौंःँ्ऽ।॥१२ab1 \t\n\r|'\"<>",
    "\u093c", *map(chr, range(0x0958, 0x0960)), "\u0929", "\u0931", "\u0934",  # nukta forms
    "\u200c", "\u200d", "\u0301", "\u0334",  # joiners, combining marks of other scripts
    *(c for c in _FIXES if not 0xD800 <= ord(c) < 0xE000),  # everything normalize replaces
]


NORMALIZER = normalizer()


@settings(max_examples=1_000, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.text(st.sampled_from(FUZZ_ALPHABET), max_size=40))
def test_normalizer_is_normalize(text):
    assert NORMALIZER.normalize_str(text) == normalize(text).replace(" ", "▁")


def test_normalizer_is_normalize_on_real_and_raw_text(real_lines):
    for text in real_lines + RAW_CASES:
        assert NORMALIZER.normalize_str(text) == normalize(text).replace(" ", "▁"), text


def test_normalizer_in_the_file_reads_back(trained_tokenizer_dir):
    """What tokenizer.json holds (Oniguruma patterns as text) is the normaliser itself."""
    import tokenizers

    saved = json.loads((trained_tokenizer_dir / HF_TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert saved["normalizer"] == json.loads(normalizer().__getstate__())
    reloaded = tokenizers.Tokenizer.from_file(str(trained_tokenizer_dir / HF_TOKENIZER_FILE))
    text = RAW_CASES[0]
    assert reloaded.normalizer.normalize_str(text) == normalize(text).replace(" ", "▁")


# ---------------------------------------------------------------- tokenizers, transformers
@pytest.mark.parametrize("text", RAW_CASES)
def test_tokenizers_gives_hslm_ids_on_raw_text(hf_tokenizer, trained_tokenizer, text):
    ids = trained_tokenizer.encode(text)
    assert hf_tokenizer.encode(text, add_special_tokens=False).ids == ids
    assert hf_tokenizer.decode(ids) == trained_tokenizer.decode(ids) == normalize(text)


def test_transformers_gives_hslm_ids_on_raw_text(trained_tokenizer_dir, trained_tokenizer,
                                                real_lines):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    texts = real_lines[::3] + RAW_CASES
    assert sum(text != normalize(text) for text in texts) > 100  # raw text indeed
    ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == trained_tokenizer.encode_batch(texts)


# ---------------------------------------------------------------- onnxruntime-genai
def test_genai_tokenizer_gives_hslm_ids_on_normalised_text(genai_tokenizer, trained_tokenizer,
                                                           real_lines):
    texts = [normalize(text) for text in real_lines + RAW_CASES]
    expected = trained_tokenizer.encode_batch(texts)
    different = [text for text, ids in zip(texts, expected, strict=True)
                 if genai_ids(genai_tokenizer, text) != ids]
    # The one class that differs (see the next test): a run of more than 100 symbols without a
    # space, which onnxruntime-extensions cuts.
    assert all(max(map(len, text.split(" "))) > 100 for text in different), different
    assert len(different) <= len(texts) // 1000
    for text, ids in zip(texts, expected, strict=True):
        assert genai_tokenizer.decode(ids) == text


@pytest.mark.parametrize("run", ["हा" * 300, "\u0915\u093c" * 120])
def test_genai_tokenizer_cuts_space_free_runs_after_101_symbols(genai_tokenizer,
                                                                 trained_tokenizer, run):
    """onnxruntime-extensions' SentencePiece-style BPE (bpe_kernels.cc, SpmTokenize) merges a
    chunk as soon as it holds more than 100 symbols, so no merge crosses that cut; hslm (and
    SentencePiece, tokenizers and llama.cpp) merge over the whole run."""
    assert all(len(trained_tokenizer.encode(c)) == 1 for c in set(run))  # a symbol each
    theirs = genai_ids(genai_tokenizer, run)
    chunked = [token for start in range(0, len(run), 101)
               for token in trained_tokenizer.encode(run[start:start + 101])]
    assert theirs == chunked != trained_tokenizer.encode(run)
    assert genai_tokenizer.decode(theirs) == run


def test_genai_tokenizer_does_not_normalise(genai_tokenizer, trained_tokenizer):
    """onnxruntime-extensions reads no normaliser from tokenizer.json: an app normalises first."""
    text = RAW_CASES[0]  # precomposed nukta letters
    assert genai_ids(genai_tokenizer, text) != trained_tokenizer.encode(text)
    assert genai_ids(genai_tokenizer, normalize(text)) == trained_tokenizer.encode(text)


def test_genai_tokenizer_reads_special_token_names(genai_tokenizer, trained_tokenizer):
    """Like transformers by default, onnxruntime-genai gives a special token's id for its name
    in text (how a rendered chat template becomes ids); hslm spells names in text out."""
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert genai_ids(genai_tokenizer, f"नमस्ते{token}") == (
            trained_tokenizer.encode("नमस्ते") + [token_id])


@pytest.mark.xfail(strict=True, reason="onnxruntime-genai 0.18 drops the rest of the text after "
                   "byte tokens that are not valid UTF-8 (hslm writes U+FFFD and goes on)")
def test_genai_tokenizer_decodes_past_invalid_utf8(genai_tokenizer, trained_tokenizer):
    ids = (trained_tokenizer.encode("नमस्ते") + trained_tokenizer.encode_bytes(b"\xe0\xa4")
           + trained_tokenizer.encode(" दुनिया"))
    assert trained_tokenizer.decode(ids) == "नमस्ते\ufffd दुनिया"
    assert genai_tokenizer.decode(ids) == trained_tokenizer.decode(ids)
