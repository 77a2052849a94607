"""Training hslm's tokenizer: SentencePiece BPE on normalised text, with Gemma's special tokens
at ids 0-5, "\n" and "\t" as tokens of their own, byte fallback, and no normalisation of its
own (`hslm.tokenizer` says why). The same texts and settings give the same file."""

from __future__ import annotations

import io
import math
import os
import random
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm
from sentencepiece.sentencepiece_model_pb2 import ModelProto
from tqdm import tqdm

from hslm.data.sources import cut_text
from hslm.normalize import normalize
from hslm.tokenizer import (BOS, END_OF_TURN, EOS, PAD, SPECIAL_TOKENS, START_OF_TURN, UNK,
                            WHITESPACE_TOKENS, Tokenizer, TokenizerError, read_lines,
                            require_file)


def train_tokenizer(input_files: Sequence[Path], output_dir: Path, vocab_size: int = 50_000, *,
                    max_sentence_chars: int = 4096, input_sentence_size: int = 5_000_000,
                    character_coverage: float = 0.9995, num_threads: int | None = None,
                    progress: bool = False) -> Tokenizer:
    """Train a SentencePiece BPE tokenizer on UTF-8 text files and save it to `output_dir`
    (`train_tokenizer_on_texts` on their lines). `progress` reports on stderr: a bar while the
    files are read, then a line."""
    input_files = [Path(path) for path in input_files]
    if not input_files:
        raise TokenizerError("no input files given")
    for path in input_files:  # all of them before reading any: reading may take long
        require_file(path)
    return train_tokenizer_on_texts(
        _lines_of_files(input_files, progress), output_dir, vocab_size,
        max_sentence_chars=max_sentence_chars, input_sentence_size=input_sentence_size,
        character_coverage=character_coverage, num_threads=num_threads, progress=progress)


def train_tokenizer_on_texts(texts: Iterable[str], output_dir: Path, vocab_size: int = 50_000,
                             *, max_sentence_chars: int = 4096,
                             input_sentence_size: int = 5_000_000,
                             character_coverage: float = 0.9995, num_threads: int | None = None,
                             progress: bool = False) -> Tokenizer:
    """Train a SentencePiece BPE tokenizer on `texts` and save it to `output_dir`.

    Every line of every text is normalised; lines longer than `max_sentence_chars` are cut at
    spaces (so SentencePiece does not drop them). At most `input_sentence_size` lines, a
    random sample drawn while the texts are read, are used: only the sample is written to a
    temporary file, and the same texts give the same sample and the same tokenizer.
    """
    smallest = len(SPECIAL_TOKENS) + len(WHITESPACE_TOKENS) + 256 + 1
    if vocab_size < smallest:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: the special, whitespace "
                             f"and 256 byte tokens alone take {smallest - 1}")
    with tempfile.TemporaryDirectory(prefix="hslm-tokenizer-") as work_dir:
        corpus = Path(work_dir) / "sample.txt"
        if not _write_training_corpus(texts, corpus, max_sentence_chars, input_sentence_size):
            raise TokenizerError("no text to train on")
        if progress:
            print(f"training SentencePiece BPE, vocab {vocab_size:,} ...", file=sys.stderr)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_writer=model, model_type="bpe",
                vocab_size=vocab_size, character_coverage=character_coverage,
                byte_fallback=True, split_digits=True,
                normalization_rule_name="identity", add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                max_sentence_length=4 * max_sentence_chars,  # bytes; UTF-8 is ≤ 4 per char
                input_sentence_size=0,  # the sample is all used: SentencePiece's own is random
                num_threads=num_threads or os.cpu_count(),
                pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                pad_piece=PAD, eos_piece=EOS, bos_piece=BOS, unk_piece=UNK,
                control_symbols=[START_OF_TURN, END_OF_TURN],
                user_defined_symbols=list(WHITESPACE_TOKENS),
                minloglevel=2)
        except RuntimeError as err:
            raise TokenizerError(_explain_training_error(str(err), vocab_size)) from None
    proto = ModelProto.FromString(model.getvalue())
    # SentencePiece records its temporary paths and thread count, which do not change the
    # pieces; without them the same text and settings give the same file and sha256.
    del proto.trainer_spec.input[:]
    proto.trainer_spec.ClearField("model_prefix")
    proto.trainer_spec.ClearField("num_threads")
    tokenizer = Tokenizer(proto.SerializeToString())
    tokenizer.save(output_dir)
    return tokenizer


SAMPLE_SEED = 17  # the training sample depends on the texts only


def _write_training_corpus(texts: Iterable[str], corpus: Path, max_sentence_chars: int,
                           sample_size: int) -> int:
    """Write a uniform random sample of at most `sample_size` of the normalised, non-empty
    lines of `texts` (cut to `max_sentence_chars`) to `corpus`, one per line; return how
    many (`sample_size` 0: every line). The sample is drawn while reading (reservoir
    sampling, Li's algorithm L: a few random numbers per kept line), so only the sample is
    ever held or written."""
    sample_size = sample_size if sample_size > 0 else sys.maxsize
    rng = random.Random(SAMPLE_SEED)
    sample: list[str] = []
    weight = math.exp(math.log(1 - rng.random()) / sample_size)
    next_pick = sample_size + _skip(rng, weight)
    index = 0
    for text in texts:
        for line in normalize(text).split("\n"):
            for sentence in cut_text(line, max_sentence_chars):
                if index < sample_size:
                    sample.append(sentence)
                elif index == next_pick:
                    sample[rng.randrange(sample_size)] = sentence
                    weight *= math.exp(math.log(1 - rng.random()) / sample_size)
                    next_pick += 1 + _skip(rng, weight)
                index += 1
    with corpus.open("w", encoding="utf-8") as out:
        out.writelines(sentence + "\n" for sentence in sample)
    return len(sample)


def _skip(rng: random.Random, weight: float) -> int:
    """How many lines algorithm L passes over before it keeps the next one."""
    if not 0 < weight < 1:
        return sys.maxsize
    return int(math.log(1 - rng.random()) / math.log(1 - weight))


def _lines_of_files(input_files: list[Path], progress: bool) -> Iterator[str]:
    """Every line of every file; a file with no text once normalised is an error."""
    total_bytes = sum(path.stat().st_size for path in input_files)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="reading",
              disable=not progress) as bar:
        for path in input_files:
            has_text = False
            for line in read_lines(path, on_bytes_read=bar.update):
                if not has_text and line.strip():  # normalised only until text is found
                    has_text = bool(normalize(line).strip())
                yield line
            if not has_text:
                raise TokenizerError(f"{path} has no text (it is empty, or empty once normalised)")


def _explain_training_error(message: str, vocab_size: int) -> str:
    too_high = re.search(r"Vocabulary size too high .*<= (\d+)", message)
    if too_high:
        return (f"vocab_size {vocab_size:,} is too large for this text: it supports at most "
                f"{int(too_high.group(1)):,} tokens; lower the vocabulary size or add text")
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        return (f"vocab_size {vocab_size:,} is too small for this text: its characters and the "
                f"special tokens alone need {int(too_small.group(1)):,}")
    return f"SentencePiece training failed: {message}"
