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
a conversation's `<bos>`, `<start_of_turn>` and `<end_of_turn>` by `hslm.chat.encode_chat`.

Training is in `hslm.tokenizer_train`, the tokenizer.json conversion in `hslm.hf_tokenizer`,
the chat format in `hslm.chat`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece.sentencepiece_model_pb2 import ModelProto
from tokenizers import Tokenizer as HFTokenizer

from hslm.normalize import normalize

__all__ = [
    "PAD", "EOS", "BOS", "UNK", "START_OF_TURN", "END_OF_TURN", "SPECIAL_TOKENS",
    "MODEL_FILE", "HF_TOKENIZER_FILE", "HF_CONFIG_FILE", "WHITESPACE_TOKENS", "TokenizerError",
    "Tokenizer", "read_lines", "require_file", "fertility", "merge_fertility",
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
        """See `hslm.chat.encode_chat`."""
        from hslm.chat import encode_chat  # it imports this module's names

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


def read_lines(path: str | Path, on_bytes_read: Callable[[int], object] | None = None
               ) -> Iterator[str]:
    """The lines of a UTF-8 text file, without line ends. A TokenizerError says which file and
    byte are at fault if it is missing or not UTF-8; `on_bytes_read` hears of progress."""
    path = Path(path)
    require_file(path)
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


def require_file(path: Path) -> None:
    if not path.is_file():
        raise TokenizerError(f"{path} is not a file" if path.exists()
                             else f"file not found: {path}")


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
