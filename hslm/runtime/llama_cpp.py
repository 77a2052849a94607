"""The llama.cpp backend: a GGUF file run through llama-cpp-python.

llama.cpp computes the logits; sampling, stop handling and streaming are hslm's own
(`hslm.generate`), so every backend samples the same way. Text is decoded from the token
pieces stored in the GGUF file, not with `Llama.detokenize`, which silently drops any piece
longer than 32 bytes (a Devanagari piece of 11+ characters). Text is normalised as hslm's
tokenizer does before llama.cpp tokenizes it; its tokenizer then gives the same ids. Text is
tokenized with `special=False`, so a control token's name in it stays text; control ids come
from hslm's chat template (`encode_chat`), as with hslm's tokenizer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import gguf
import numpy as np
import torch

from hslm.normalize import normalize
from hslm.chat import encode_chat
from hslm.tokenizer import TokenizerError

_BYTE_PIECE_LENGTH = len("<0x00>")
# The KV cache llama.cpp allocates by default: the file's context, at most this. A file's
# context_length is whatever its writer put there (Gemma 3: 32,768; a crafted file: 2^63).
DEFAULT_CONTEXT = 4096


@contextlib.contextmanager
def _plain_cpu_buffers():
    """On CPUs with AMX, load without llama.cpp's extra CPU buffer types (AMX tiles,
    repacked weights): with them, llama-cpp-python 0.3.36 built for such a CPU crashes
    (segmentation fault) in batched matrix products of small models at q8_0, iq4_nl and f16.
    llama-cpp-python has no parameter for `use_extra_bufts`, so its default-parameters
    factory is wrapped while the model loads."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        yield
        return
    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults


# llama.cpp's file types by the names hslm gives them (q4 covers every 4-bit type).
FILE_TYPES = {"ALL_F32": "f32", "MOSTLY_F16": "f16", "MOSTLY_BF16": "bf16",
              "MOSTLY_Q8_0": "q8_0", "MOSTLY_Q4_0": "q4", "MOSTLY_IQ4_NL": "q4",
              "MOSTLY_Q4_K_M": "q4", "MOSTLY_IQ3_S": "iq3_s", "MOSTLY_IQ3_XXS": "iq3_xxs",
              "MOSTLY_IQ2_S": "iq2_s", "MOSTLY_IQ2_XS": "iq2_xs", "MOSTLY_IQ2_XXS": "iq2_xxs"}


def gguf_summary(path: str | Path) -> tuple[str, int]:
    """(hslm's name of the file's type, bytes of all its tensors). Raises GGUFLoadError."""
    try:
        reader = gguf.GGUFReader(path)
        file_type = gguf.LlamaFileType(int(reader.fields["general.file_type"].parts[-1][0]))
    except (KeyError, ValueError, OSError) as err:
        raise GGUFLoadError(f"{path} is not a readable hslm GGUF file: {err}") from None
    if file_type.name not in FILE_TYPES:
        raise GGUFLoadError(f"{path}: hslm has no name for GGUF type {file_type.name}")
    return FILE_TYPES[file_type.name], sum(int(t.n_bytes) for t in reader.tensors)


class GGUFLoadError(ValueError):
    """A file llama.cpp cannot run as an hslm model (message says why)."""


def _piece_bytes(piece: str, kind: int) -> bytes:
    if kind == gguf.TokenType.BYTE and len(piece) == _BYTE_PIECE_LENGTH:
        return bytes([int(piece[3:5], 16)])
    if kind in (gguf.TokenType.NORMAL, gguf.TokenType.USER_DEFINED):
        return piece.replace("▁", " ").encode("utf-8")
    return b""  # control, unknown and unused tokens add no text


class GGUFTokenizer:
    """Encode with llama.cpp's tokenizer; decode from the pieces stored in the file."""

    def __init__(self, llm, path: Path):
        self.llm = llm
        reader = gguf.GGUFReader(path)
        tokens = reader.fields["tokenizer.ggml.tokens"]
        kinds = reader.fields["tokenizer.ggml.token_type"]
        pieces = [bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data]
        types = [int(kinds.parts[i][0]) for i in kinds.data]
        self._pieces = pieces
        self._piece_bytes = [_piece_bytes(p, k) for p, k in zip(pieces, types)]
        ids = {piece: index for index, piece in enumerate(pieces)}
        self.vocab_size = len(pieces)
        self.bos_id, self.eos_id = llm.token_bos(), llm.token_eos()
        self.start_of_turn_id = ids.get("<start_of_turn>")
        self.end_of_turn_id = ids.get("<end_of_turn>", self.eos_id)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Normalise `text` and encode it as text (see hslm.tokenizer.Tokenizer.encode)."""
        ids = self.llm.tokenize(normalize(text).encode("utf-8"), add_bos=False, special=False)
        return [self.bos_id, *ids] if add_bos else ids

    def encode_chat(self, messages: Sequence[dict],
                    add_generation_prompt: bool = True) -> list[int]:
        if self.start_of_turn_id is None:
            raise TokenizerError("this GGUF file has no <start_of_turn> token: it cannot hold "
                                 "a conversation in Gemma's format")
        return encode_chat(self, messages, add_generation_prompt)

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids whose pieces are exactly `data` (no normalisation; see Tokenizer.encode_bytes)."""
        return self.llm.tokenize(data, add_bos=False, special=False)

    def piece_bytes(self, token_id: int) -> bytes:
        return self._piece_bytes[token_id]

    def id_to_piece(self, token_id: int) -> str:
        return self._pieces[token_id]

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(map(self.piece_bytes, ids)).decode("utf-8", errors="replace")


class LlamaCppLogits:
    """Next-token logits from llama.cpp (a logits source for `hslm.generate`)."""

    def __init__(self, llm):
        self.llm = llm
        self.context_length = llm.n_ctx()

    def reset(self) -> None:
        self.llm.reset()

    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        import llama_cpp

        self.llm.eval(list(ids))
        # Llama.scores is only filled with logits_all; the context always holds the last row.
        last = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(last, shape=(self.llm.n_vocab(),)).copy())

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of `ids` (for parity checks); needs `all_logits=True`."""
        self.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


def load_gguf(path: str | Path, threads: int | None = None, context_length: int | None = None,
              all_logits: bool = False) -> tuple[LlamaCppLogits, GGUFTokenizer]:
    """(logits source, tokenizer) for a GGUF file. The KV cache is kept in F32 so that the
    file's own precision is what is measured; it holds `context_length` tokens (default: the
    file's context, at most DEFAULT_CONTEXT)."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise GGUFLoadError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise GGUFLoadError(f"{path} is not a readable GGUF file: {err}") from None
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise GGUFLoadError(f"{path} has no tokenizer inside; export it with hslm-export")
    trained_context = int(reader.fields["gemma3.context_length"].parts[-1][0]) \
        if "gemma3.context_length" in reader.fields else None
    if trained_context is None:
        raise GGUFLoadError(f"{path} is not a gemma3 GGUF file")
    n_ctx = context_length or min(trained_context, DEFAULT_CONTEXT)
    if n_ctx < 1:  # llama.cpp would read 0 as "the file's context"
        raise GGUFLoadError(f"{path}: a context of {n_ctx} tokens is not a context")
    if n_ctx > trained_context:
        raise GGUFLoadError(f"a context of {n_ctx} is longer than the model's {trained_context}")
    try:
        with _plain_cpu_buffers():
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                        logits_all=all_logits, type_k=0, type_v=0, verbose=False)
    except ValueError as err:  # llama-cpp-python's error for a file llama.cpp refused
        raise GGUFLoadError(f"llama.cpp cannot load {path}: {err}") from None
    return LlamaCppLogits(llm), GGUFTokenizer(llm, path)
