"""hslm's tokenizer as Hugging Face files: tokenizer.json and tokenizer_config.json.

tokenizer.json is a `tokenizers` BPE built from the SentencePiece model. Every tool that reads
the file (tokenizers, transformers, transformers.js, onnxruntime-genai's tokenizer,
llguidance) gives hslm's ids, because of four choices:

- **Merges**: SentencePiece BPE merges, at every step, the adjacent pair whose concatenation
  is the piece with the highest score (leftmost first). A `tokenizers` BPE merges the pair
  with the lowest rank, so every way of cutting a piece into two vocabulary pieces becomes a
  merge, ranked by that piece's score.
- **Normaliser**: `hslm.normalize.normalize` written as `tokenizers` steps (`normalizer`), so
  that unnormalised text gives the ids `Tokenizer.encode` gives. onnxruntime-genai ignores
  normalisers: text for it, and for llama.cpp, must be normalised by the app (README).
- **Pre-tokenizer**: a no-op (a split at U+FEFF, which the normaliser always removes). With
  none, onnxruntime-extensions cuts words before every Devanagari vowel sign (its word regex
  knows only letters of Unicode category L, and the signs are category M), and merges never
  cross the cuts; a no-op `Split` makes it merge over whole space-separated chunks, as
  SentencePiece does. It still cuts a run of more than 100 symbols with no space: those rare
  runs are the one class where its ids differ (README).
- **Added tokens**: the special tokens are matched in the raw text (special, not normalised);
  "\\n" and "\\t" after normalisation, so that a run of tabs or a CR LF is normalised first.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from hslm.normalize import _DEVANAGARI as DEVANAGARI
from hslm.normalize import _DEVANAGARI_LETTER as DEVANAGARI_LETTER
from hslm.normalize import _FIXES as SINGLE_CHARACTER_FIXES
from hslm.chat import CHAT_TEMPLATE
from hslm.tokenizer import BOS, EOS, HF_CONFIG_FILE, HF_TOKENIZER_FILE, PAD, UNK

__all__ = ["normalizer", "to_hf_tokenizer", "tokenizer_config", "save_hf_files"]

# SentencePiece piece types (`Tokenizer.vocabulary`'s kinds).
_NORMAL, _UNKNOWN, _CONTROL = 1, 2, 3
# Dropping a joiner and composing again can give another joiner new neighbours (only with
# combining marks from other scripts; normalize.py repeats until stable): rounds written out.
JOINER_ROUNDS = 3
# The no-op pre-tokenizer's split: a character the normaliser removes.
_NO_SPLIT = "\ufeff"


def _char_class(characters) -> str:
    """A regex character class of `characters`, as \\uXXXX escapes (the same in Oniguruma,
    which tokenizers uses, and in JavaScript, which transformers.js uses)."""
    return "[" + "".join(f"\\u{ord(c):04x}" for c in sorted(characters)) + "]"


def normalizer() -> normalizers.Normalizer:
    """`hslm.normalize.normalize` as `tokenizers` normalisers, step by step in the same order,
    followed by SentencePiece's space marker. Lone surrogates (which normalize turns into U+FFFD)
    cannot reach it: Rust strings cannot hold them."""
    by_replacement: dict[str, list[str]] = {}
    for character, replacement in SINGLE_CHARACTER_FIXES.items():
        if not 0xD800 <= ord(character) < 0xE000:
            by_replacement.setdefault(replacement, []).append(character)
    letter, joiner = f"[{DEVANAGARI_LETTER}]", "[\\u200c\\u200d]"
    steps = [normalizers.Replace("\r\n", "\n")]
    steps += [normalizers.Replace(Regex(_char_class(characters)), replacement)
              for replacement, characters in by_replacement.items()]
    steps.append(normalizers.NFC())
    for _ in range(JOINER_ROUNDS):  # a joiner not between two Devanagari letters or signs
        steps += [normalizers.Replace(Regex(f"(?<!{letter}){joiner}|{joiner}(?!{letter})"), ""),
                  normalizers.NFC()]
    # A pipe after Devanagari text, spaces, tabs and pipes between (Oniguruma and JavaScript
    # both take a variable-length lookbehind), then double dandas.
    steps += [normalizers.Replace(Regex(f"(?<=[{DEVANAGARI}][ \\t|]*)\\|"), "।"),
              normalizers.Replace("।।", "॥")]
    # A run of spaces and tabs: a tab if it has one, else a space; none at the end of a line
    # or of the text.
    steps += [normalizers.Replace(Regex("[ \\t]*\\t[ \\t]*"), "\t"),
              normalizers.Replace(Regex(" {2,}"), " "),
              normalizers.Replace(Regex("[ \\t]+(?=\\n|$)"), ""),
              normalizers.Replace(" ", "▁")]
    return normalizers.Sequence(steps)


def to_hf_tokenizer(tokenizer) -> HFTokenizer:
    """`tokenizer` (an `hslm.tokenizer.Tokenizer`) as a `tokenizers.Tokenizer`."""
    vocabulary = tokenizer.vocabulary()
    vocab = {piece: token_id for token_id, (piece, _, _) in enumerate(vocabulary)}
    mergeable = {piece for piece, _, kind in vocabulary if kind == _NORMAL}
    learned = sorted(((piece, score) for piece, score, kind in vocabulary
                      if kind == _NORMAL and len(piece) > 1), key=lambda item: -item[1])
    merges = [(text[:cut], text[cut:]) for text, _ in learned for cut in range(1, len(text))
              if text[:cut] in mergeable and text[cut:] in mergeable]
    unk = vocabulary[tokenizer.unk_id][0]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                                byte_fallback=True))
    hf.normalizer = normalizer()
    hf.pre_tokenizer = pre_tokenizers.Split(_NO_SPLIT, behavior="isolated")
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse()])
    hf.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                           for piece, _, kind in vocabulary if kind in (_CONTROL, _UNKNOWN)])
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, tokenizer.bos_id)])
    return hf


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json: special tokens, `<bos>` first, Gemma's chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def save_hf_files(tokenizer, output_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json and tokenizer_config.json for `tokenizer` into `output_dir`."""
    to_hf_tokenizer(tokenizer).save(str(output_dir / HF_TOKENIZER_FILE))
    (output_dir / HF_CONFIG_FILE).write_text(
        json.dumps(tokenizer_config(model_max_length), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8")
