"""The hslm tokenizer: SentencePiece BPE over normalised text, and the same for Hugging Face.

A tokenizer folder holds three files that give identical ids:

- `tokenizer.model`: the SentencePiece model, the source of truth (llama.cpp reads it too);
- `tokenizer.json`: a `tokenizers` BPE built from that model (for transformers, onnxruntime-genai);
- `tokenizer_config.json`: special tokens, `add_bos_token` and the Gemma chat template.

The SentencePiece model does no normalisation of its own (rule "identity", no dummy prefix,
whitespace kept): `Tokenizer.encode` normalises with `hslm.normalize.normalize` first, and
tokenizer.json carries the same normalisation (`hslm.hf_tokenizer`): on any text it gives
`Tokenizer.encode`'s ids, and on normalised text SentencePiece's. Byte fallback makes decoding
lossless: `decode(encode(x)) == normalize(x)`.

Special tokens use Gemma's ids 0-5. `<start_of_turn>` and `<end_of_turn>` are control tokens,
like `<bos>`: decoding skips them. "\\n" and "\\t" are user-defined tokens: SentencePiece
trains line by line and would otherwise never learn a newline; as their own tokens they never
merge.

Control ids come only from hslm's own code, never from text. `Tokenizer.encode` encodes text
as text: a "<eos>" (or any other special token's name) in a web page, an SFT message or a
user's prompt becomes the pieces of its characters, as plain SentencePiece does, and decodes
back to itself. Document boundaries (`<bos>` ... `<eos>`) are added as ids by the shard writer;
a conversation's `<bos>`, `<start_of_turn>` and `<end_of_turn>` come from `encode_chat`, which
encodes the template's structure as ids and every message as text, so no message can end a
turn or forge one. (The Jinja template in tokenizer_config.json renders a string that
transformers, llama.cpp --jinja and onnxruntime-genai then parse for special tokens: for
ordinary messages their ids equal `encode_chat`'s, but those tools do not guard against
control strings inside messages.)
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece.sentencepiece_model_pb2 import ModelProto
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from hslm.data.sources import cut_text
from hslm.normalize import normalize

__all__ = [
    "PAD", "EOS", "BOS", "UNK", "START_OF_TURN", "END_OF_TURN", "SPECIAL_TOKENS",
    "MODEL_FILE", "HF_TOKENIZER_FILE", "HF_CONFIG_FILE", "CHAT_TEMPLATE", "ChatPart",
    "chat_parts", "render_chat", "encode_chat", "encode_chat_parts",
    "WHITESPACE_TOKENS", "TokenizerError", "Tokenizer", "train_tokenizer",
    "train_tokenizer_on_texts", "read_lines",
    "fertility", "merge_fertility",
]

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)  # ids 0-5, Gemma's order
WHITESPACE_TOKENS = ("\n", "\t")  # ids 6 and 7

MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
MODEL_MAX_LENGTH = 1024  # the hindi-270m context; callers that know the model pass theirs

_Piece = ModelProto.SentencePiece

# Gemma's conversation format: an optional system message goes in front of the first user
# turn, "assistant" is spelled "model", every turn's text is trimmed. `chat_parts` is the same
# rules in Python; the tests hold the two to each other.
CHAT_TEMPLATE = (
    "{%- if not messages -%}{{ raise_exception('the conversation has no messages') }}{%- endif -%}"
    "{%- for message in messages -%}{%- if message.content is not string -%}"
    "{{ raise_exception('message content must be a string') }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if messages[0].role == 'system' -%}"
    "{%- set system_prefix = messages[0].content + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- if not turns -%}"
    "{{ raise_exception('a system message must be followed by a user message') }}"
    "{%- endif -%}"
    "{%- else -%}{%- set system_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{ bos_token }}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message.role in ('assistant', 'model') else message.role -%}"
    "{%- if role != ('user' if loop.index0 % 2 == 0 else 'model') -%}"
    "{{ raise_exception('roles must alternate user, assistant, user, ... after an optional "
    "system message') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (system_prefix if loop.first else '') }}"
    "{{ (message.content | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


_UNDECODABLE = re.compile("([\udc80-\udcff]+)")


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, loaded or used as asked; the message says why."""


class Tokenizer:
    """A SentencePiece BPE model with hslm's normalisation, special tokens and chat format."""

    def __init__(self, model: bytes):
        """`model` is a serialised SentencePiece model (the bytes of a tokenizer.model file)."""
        try:
            proto = ModelProto.FromString(model)
        except DecodeError:
            raise TokenizerError("not a SentencePiece model file") from None
        _check_supported(proto)
        self._model = model
        self._proto = proto
        self._sp = spm.SentencePieceProcessor(model_proto=model)
        self._piece_bytes = tuple(_bytes_of(piece) for piece in proto.pieces)
        self._special_ids = {token: self._sp.piece_to_id(token) for token in SPECIAL_TOKENS}

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer folder (one with tokenizer.model) or a tokenizer.model file."""
        path = Path(path)
        model_file = path / MODEL_FILE if path.is_dir() else path
        if not model_file.is_file():
            raise TokenizerError(f"tokenizer not found: {model_file}")
        try:
            return cls(model_file.read_bytes())
        except TokenizerError as err:
            raise TokenizerError(f"{model_file}: {err}") from None

    # ---------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._piece_bytes)

    @property
    def pad_id(self) -> int:
        return self._special_ids[PAD]

    @property
    def eos_id(self) -> int:
        return self._special_ids[EOS]

    @property
    def bos_id(self) -> int:
        return self._special_ids[BOS]

    @property
    def unk_id(self) -> int:
        return self._special_ids[UNK]

    @property
    def start_of_turn_id(self) -> int:
        return self._special_ids[START_OF_TURN]

    @property
    def end_of_turn_id(self) -> int:
        return self._special_ids[END_OF_TURN]

    @property
    def model_bytes(self) -> bytes:
        """The serialised SentencePiece model (what tokenizer.model holds)."""
        return self._model

    @property
    def sha256(self) -> str:
        """Checksum of the tokenizer.model bytes: ties a checkpoint to its vocabulary."""
        return hashlib.sha256(self._model).hexdigest()

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self._proto.pieces[token_id].piece

    def piece_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes `token_id` adds to decoded text: "▁" is a space, a byte-fallback token
        its one byte (maybe part of a character), a control or unknown token nothing."""
        self._check_id(token_id)
        return self._piece_bytes[token_id]

    def vocabulary(self) -> list[tuple[str, float, int]]:
        """(piece, score, kind) for every id. `kind` is SentencePiece's piece type: 1 normal,
        2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte (GGUF numbers them the same)."""
        return [(piece.piece, piece.score, int(piece.type)) for piece in self._proto.pieces]

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._piece_bytes):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary "
                                 f"(0-{len(self._piece_bytes) - 1})")

    # ---------------------------------------------------------------- text <-> ids
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Normalise `text` and encode it as text (after `<bos>` if `add_bos`): a special token's
        name in it is spelled out, never its id."""
        return self.encode_batch([text], add_bos)[0]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids whose pieces are exactly `data`: no normalisation, special token strings stay
        text, and bytes that are not whole UTF-8 characters become byte tokens (what
        constrained decoding needs to tokenize forced output)."""
        ids: list[int] = []
        # surrogateescape keeps every undecodable byte as one lone surrogate U+DC80..U+DCFF.
        for part in _UNDECODABLE.split(data.decode("utf-8", errors="surrogateescape")):
            if part and "\udc80" <= part[0] <= "\udcff":
                ids += [self._sp.piece_to_id(f"<0x{ord(c) - 0xDC00:02X}>") for c in part]
            elif part:
                ids += self._sp.encode(part)
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        """`encode` for many texts at once, with SentencePiece's threads (default: all cores)."""
        # SentencePiece never matches a control or unknown piece in text: it spells it out.
        batch = self._sp.encode([normalize(text) for text in texts],
                                num_threads=num_threads or os.cpu_count())
        return [[self.bos_id, *ids] for ids in batch] if add_bos else batch

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`: control and unknown tokens add nothing, bytes that are not UTF-8
        become U+FFFD."""
        return b"".join(map(self.piece_bytes, ids)).decode("utf-8", errors="replace")

    def encode_chat(self, messages: Sequence[dict],
                    add_generation_prompt: bool = True) -> list[int]:
        """See `encode_chat` (the module's function)."""
        return encode_chat(self, messages, add_generation_prompt)

    # ---------------------------------------------------------------- files
    def save(self, output_dir: str | Path, model_max_length: int = MODEL_MAX_LENGTH) -> Path:
        """Write tokenizer.model, tokenizer.json and tokenizer_config.json; returns the folder."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / MODEL_FILE).write_bytes(self._model)
        from hslm.hf_tokenizer import save_hf_files  # it imports this module's names

        save_hf_files(self, output_dir, model_max_length)
        return output_dir

    def to_hf_tokenizer(self) -> HFTokenizer:
        """The same tokenizer as a `tokenizers.Tokenizer` (what tokenizer.json holds; see
        `hslm.hf_tokenizer`)."""
        from hslm.hf_tokenizer import to_hf_tokenizer

        return to_hf_tokenizer(self)


class ChatPart(NamedTuple):
    """One piece of a conversation in Gemma's format: a control token the template puts there,
    or text."""

    text: str  # the text, or the control token's name (BOS, START_OF_TURN or END_OF_TURN)
    control: bool
    answer: bool = False  # a model turn's own text and end: what fine-tuning learns


def chat_parts(messages: Sequence[dict], add_generation_prompt: bool = True) -> list[ChatPart]:
    """A conversation ([{"role": ..., "content": ...}, ...]) in Gemma's format, as the Jinja
    `chat_template` in tokenizer_config.json renders it, cut into control tokens and text.
    Only the template's structure is a control part; message content is always text."""
    if not messages:
        raise TokenizerError("the conversation has no messages")
    if not all(isinstance(message, dict) for message in messages):
        raise TokenizerError("every message must be a {'role': ..., 'content': ...} object")
    if not all(isinstance(message.get("content"), str) for message in messages):
        raise TokenizerError("message content must be a string")
    system_prefix, turns = "", list(messages)
    if messages[0].get("role") == "system":
        system_prefix, turns = messages[0]["content"] + "\n\n", turns[1:]
        if not turns:
            raise TokenizerError("a system message must be followed by a user message")
    parts = [ChatPart(BOS, True)]
    for index, message in enumerate(turns):
        role = "model" if message.get("role") in ("assistant", "model") else message.get("role")
        if role != ("user" if index % 2 == 0 else "model"):
            raise TokenizerError("roles must alternate user, assistant, user, ... after an "
                                 "optional system message")
        prefix = system_prefix if index == 0 else ""
        answer = role == "model"
        # The header is a part of its own: it is also the generation prompt, which a model
        # turn's text must follow with the token boundaries inference will have.
        parts += [ChatPart(START_OF_TURN, True), ChatPart(f"{role}\n", False),
                  ChatPart(prefix + message["content"].strip(), False, answer),
                  ChatPart(END_OF_TURN, True, answer), ChatPart("\n", False, answer)]
    if add_generation_prompt:
        parts += [ChatPart(START_OF_TURN, True), ChatPart("model\n", False)]
    return parts


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """The conversation as the Jinja `chat_template` renders it (a string that starts with
    "<bos>"), for display and for tools that take the template; hslm encodes conversations
    with `encode_chat`, never by parsing this string."""
    return "".join(part.text for part in chat_parts(messages, add_generation_prompt))


def encode_chat_parts(tokenizer, parts: Sequence[ChatPart]) -> list[list[int]]:
    """The ids of each part: a control part its token's id, a text part `tokenizer.encode` of
    its text (text only). `tokenizer` is hslm's or a backend's with the same interface."""
    control_ids = {BOS: tokenizer.bos_id, START_OF_TURN: tokenizer.start_of_turn_id,
                   END_OF_TURN: tokenizer.end_of_turn_id}
    return [[control_ids[part.text]] if part.control else tokenizer.encode(part.text)
            for part in parts]


def encode_chat(tokenizer, messages: Sequence[dict],
                add_generation_prompt: bool = True) -> list[int]:
    """The ids of a conversation, `<bos>` first: control ids only where the template puts them,
    every message encoded as text (a "<end_of_turn>" written in a message stays text). For
    messages without special token names these are the ids of `render_chat`'s string parsed
    for special tokens, as transformers does."""
    parts = chat_parts(messages, add_generation_prompt)
    return [token for ids in encode_chat_parts(tokenizer, parts) for token in ids]


def _check_supported(proto: ModelProto) -> None:
    """Refuse models whose SentencePiece behaviour tokenizer.json could not reproduce."""
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != trainer.BPE:
        problems.append("it is not a BPE model")
    if normalizer.name != "identity" or normalizer.add_dummy_prefix \
            or normalizer.remove_extra_whitespaces or not normalizer.escape_whitespaces:
        problems.append("it normalises text itself (hslm needs rule 'identity', no dummy prefix, "
                        "whitespace kept)")
    if not trainer.byte_fallback:
        problems.append("it has no byte fallback")
    present = {piece.piece for piece in proto.pieces}
    missing = [token for token in SPECIAL_TOKENS if token not in present]
    if missing:
        problems.append(f"it lacks the special tokens {', '.join(missing)}")
    if problems:
        raise TokenizerError("not an hslm tokenizer: " + "; ".join(problems))


def _bytes_of(piece: ModelProto.SentencePiece) -> bytes:
    if piece.type == _Piece.BYTE:  # spelled <0xAB>
        return bytes([int(piece.piece[3:5], 16)])
    if piece.type in (_Piece.NORMAL, _Piece.USER_DEFINED):
        return piece.piece.replace("▁", " ").encode("utf-8")
    return b""


# -------------------------------------------------------------------- training
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
        _require_file(path)
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


def read_lines(path: str | Path, on_bytes_read: Callable[[int], object] | None = None
               ) -> Iterator[str]:
    """The lines of a UTF-8 text file, without line ends. A TokenizerError says which file and
    byte are at fault if it is missing or not UTF-8; `on_bytes_read` hears of progress."""
    path = Path(path)
    _require_file(path)
    offset = 0
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise TokenizerError(
                    f"{path} is not UTF-8 text: invalid byte 0x{raw[err.start]:02x} at byte "
                    f"offset {offset + err.start} (line {number})") from None
            offset += len(raw)
            if on_bytes_read:
                on_bytes_read(len(raw))


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise TokenizerError(f"{path} is not a file" if path.exists()
                             else f"file not found: {path}")


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


# -------------------------------------------------------------------- measurement
def fertility(tokenizer: Tokenizer, lines: Iterable[str]) -> dict:
    """How finely `tokenizer` cuts `lines`: tokens per whitespace-separated word, characters
    and UTF-8 bytes per token, and the counts behind them (all after normalisation)."""
    texts = [text for text in map(normalize, lines) if text]
    counts = {"lines": len(texts),
              "words": sum(len(text.split()) for text in texts),
              "tokens": sum(map(len, tokenizer.encode_batch(texts))),
              "chars": sum(map(len, texts)),
              "bytes": sum(len(text.encode("utf-8")) for text in texts)}
    return _with_ratios(counts)


def merge_fertility(results: Iterable[dict]) -> dict:
    """The fertility of several texts together, from their separate `fertility` results."""
    results = list(results)
    return _with_ratios({key: sum(result[key] for result in results) for key in _COUNTS})


_COUNTS = ("lines", "words", "tokens", "chars", "bytes")


def _with_ratios(counts: dict) -> dict:
    if not counts["words"]:
        raise TokenizerError("there is no text to measure")
    return {**counts, "tokens_per_word": counts["tokens"] / counts["words"],
            "chars_per_token": counts["chars"] / counts["tokens"],
            "bytes_per_token": counts["bytes"] / counts["tokens"]}
