"""Token shards: flat binary arrays of token ids plus a JSON manifest.

    out/manifest.json           format, dtype, vocab size, tokenizer checksum, shards per split
    out/train_00000.bin ...     ids, documents as <bos> ids <eos>, back to back

Documents are written as they come (memory does not grow with the corpus), and a document of
any length is tokenized whole, read and encoded in pieces.

Ids are uint16 when the vocabulary fits, uint32 otherwise (never truncated). Batches are
random windows whose positions depend only on (seed, step, index), where index numbers the
micro-batches of a step across all ranks; so a resumed run reads exactly the batches an
uninterrupted one would have read, and 2 ranks read what 1 rank with 2 micro-steps reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from tqdm import tqdm

from hslm.data.sources import RawDocument, SourceOptions, cut_text, read_documents
from hslm.files import write_atomically

if TYPE_CHECKING:
    import torch

FORMAT = "hslm-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
BOS_ID, EOS_ID = 2, 1


class ShardError(ValueError):
    """Shards that cannot be written or read as asked (message says why)."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class _OpenShard:
    """A shard being written: ids go straight to its temporary file."""

    path: Path
    file: BinaryIO
    sha256: Any = field(default_factory=hashlib.sha256)
    tokens: int = 0
    documents: int = 0


class ShardWriter:
    """Writes documents as they come: memory does not grow with the corpus. A shard is
    written to a temporary file, fsynced and renamed when it is full or at `close`."""

    def __init__(self, output_dir: str | Path, tokenizer_sha256: str, vocab_size: int,
                 shard_tokens: int = 50_000_000):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer_sha256 = tokenizer_sha256
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.shard_tokens = shard_tokens
        self.open: dict[str, _OpenShard] = {}
        self.shards: dict[str, list[dict]] = {}

    def add_document(self, ids: list[int], split: str = "train", starts: bool = True,
                     ends: bool = True) -> None:
        """`<bos> ids <eos>`; or a document in parts: `starts` adds the `<bos>`, `ends` the
        `<eos>` (and counts the document)."""
        tokens = np.asarray([BOS_ID] * starts + list(ids) + [EOS_ID] * ends, dtype=np.int64)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ShardError(f"token id {int(tokens.max())} is outside the vocabulary of "
                             f"{self.vocab_size}")
        shard = self.open.get(split) or self._start(split)
        data = tokens.astype(self.dtype).tobytes()
        shard.file.write(data)
        shard.sha256.update(data)
        shard.tokens += len(tokens)
        shard.documents += ends
        if shard.tokens >= self.shard_tokens and ends:
            self._finish(split)

    def _start(self, split: str) -> _OpenShard:
        name = f"{split}_{len(self.shards.setdefault(split, [])):05d}.bin"
        path = self.output_dir / name
        shard = _OpenShard(path, open(path.with_name(name + ".tmp"), "wb"))
        self.open[split] = shard
        return shard

    def _finish(self, split: str) -> None:
        shard = self.open.pop(split)
        shard.file.flush()
        os.fsync(shard.file.fileno())
        shard.file.close()
        os.replace(shard.file.name, shard.path)
        self.shards[split].append({"file": shard.path.name, "tokens": shard.tokens,
                                   "documents": shard.documents,
                                   "sha256": shard.sha256.hexdigest()})

    def discard(self) -> None:
        """Remove the shards being written (after an error)."""
        for shard in self.open.values():
            shard.file.close()
            Path(shard.file.name).unlink(missing_ok=True)
        self.open.clear()

    def close(self, extra_manifest: dict | None = None) -> Path:
        for split in list(self.open):
            self._finish(split)
        manifest = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name,
                    "vocab_size": self.vocab_size, "tokenizer_sha256": self.tokenizer_sha256,
                    "splits": self.shards, **(extra_manifest or {})}
        path = self.output_dir / MANIFEST
        text = (json.dumps(manifest, indent=2) + "\n").encode()
        write_atomically(path, lambda f: f.write(text))
        return path


def write_shards(documents: Iterable[RawDocument], tokenizer, output_dir: str | Path,
                 val_fraction: float = 0.05, source_files: list[str] = (),
                 batch_chars: int = 1_000_000) -> dict:
    """Tokenize documents into shards as they come and return the manifest. Every
    1/val_fraction-th document goes to validation (the split is by document); the manifest
    counts tokens per `source`. The pieces of a long document (`piece` 0, 1, 2, ..., as
    `read_documents` gives them with long_documents="split") become one `<bos> ... <eos>`.
    Texts are encoded in pieces of at most ENCODE_CHARS (SentencePiece's memory grows with the
    length of what it encodes) cut before spaces, which give the ids of the whole text, in
    batches of about `batch_chars` characters: memory does not grow with the corpus."""
    writer = ShardWriter(output_dir, tokenizer.sha256, tokenizer.vocab_size)
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    per_source: dict[str, dict[str, int]] = {}
    count, split_documents = 0, 0
    held: tuple[list[int], str, bool] | None = None  # written once the next piece shows its end
    split = "train"
    try:
        for batch in _batches(_encoding_pieces(documents), batch_chars):
            for (_, source, starts, read_in_pieces), ids in zip(
                    batch, tokenizer.encode_batch([text for text, *_ in batch])):
                starts = starts or held is None
                if held:
                    writer.add_document(*held, ends=starts)
                if starts:
                    split = "val" if every and count % every == every - 1 else "train"
                    count += 1
                split_documents += read_in_pieces
                held = (ids, split, starts)
                if source:
                    entry = per_source.setdefault(source, {"documents": 0, "tokens": 0})
                    entry["documents"] += starts
                    entry["tokens"] += len(ids) + 2 * starts  # with <bos> and <eos>
        if held:
            writer.add_document(*held, ends=True)
    except BaseException:
        writer.discard()
        raise
    extra = {"documents": count, "split_documents": split_documents,
             "source_files": list(source_files),
             "tokens_per_source": dict(sorted(per_source.items()))}
    writer.close(extra)
    return {"splits": writer.shards, **extra}


ENCODE_CHARS = 100_000


def _encoding_pieces(documents: Iterable[RawDocument]) -> Iterator[tuple[str, str, bool, bool]]:
    """(text, source, starts a document, is the second piece the reader gave) for every
    piece of at most ENCODE_CHARS of every document (an empty one is one empty piece)."""
    for document in documents:
        for index, text in enumerate(list(cut_text(document.text, ENCODE_CHARS)) or [""]):
            yield (text, document.source, document.piece == 0 and index == 0,
                   document.piece == 1 and index == 0)


def write_shards_from_texts(texts: Iterable[str], tokenizer, output_dir: str | Path,
                            val_fraction: float = 0.05, sources: Iterable[str] | None = None,
                            source_files: list[str] = ()) -> dict:
    """`write_shards` for plain texts, one document each; `sources` names each one's source."""
    labelled = zip(texts, sources if sources is not None else itertools.repeat(""))
    documents = (RawDocument(text, str(number), source)
                 for number, (text, source) in enumerate(labelled))
    return write_shards(documents, tokenizer, output_dir, val_fraction, source_files)


def tokenize_files(files: list[Path], tokenizer, output_dir: str | Path,
                   val_fraction: float = 0.05, options: SourceOptions = SourceOptions(),
                   progress: bool = False) -> dict:
    """`hslm-data tokenize`: the documents of `files` (any input format), read as a stream in
    pieces of at most `options.max_chars` characters, into shards; returns the manifest, with
    `too_long_records`: JSONL/CSV records too long to hold (`max_record_bytes`), skipped."""
    options = dataclasses.replace(options, long_documents="split")
    skipped = 0

    def documents() -> Iterator[RawDocument]:
        nonlocal skipped
        for path in tqdm(files, desc="tokenizing", unit="file", disable=not progress):
            for document in read_documents(path, options):
                if document.too_long:
                    skipped += 1
                else:
                    yield document

    manifest = write_shards(documents(), tokenizer, output_dir, val_fraction,
                            source_files=[str(p) for p in files])
    return {**manifest, "too_long_records": skipped}


def _batches(pieces: Iterator[tuple], batch_chars: int) -> Iterator[list[tuple]]:
    """`pieces` (text first) in lists of about `batch_chars` characters (at least one each)."""
    batch, chars = [], 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[0])
        if chars >= batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class TokenShards:
    """One split of a shard folder, memory-mapped, serving deterministic batches."""

    def __init__(self, folder: str | Path, split: str = "train"):
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ShardError(f"no {MANIFEST} in {folder}; write shards with hslm's ShardWriter")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ShardError(f"{manifest_path} is not valid JSON: {err}") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ShardError(f"{manifest_path} is not {FORMAT} version {VERSION}")
        if split not in manifest["splits"]:
            raise ShardError(f"{folder} has no {split!r} split (has {sorted(manifest['splits'])})")
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.files = []
        for shard in manifest["splits"][split]:
            path = folder / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                raise ShardError(f"shard {path} is missing or has the wrong size")
            self.files.append((path, shard["tokens"]))
        self.num_tokens = sum(n for _, n in self.files)

    def _window(self, start: int, length: int) -> np.ndarray:
        """`length` ids from global offset `start` (windows may span shards)."""
        out, offset = [], 0
        for path, n in self.files:
            if start < offset + n and len(out) < length:
                # A fresh memmap per read: a long-lived one makes RSS grow (nanoGPT's lesson).
                data = np.memmap(path, dtype=self.dtype, mode="r")
                begin = max(0, start - offset)
                out.extend(data[begin:begin + length - len(out)].tolist())
            offset += n
        return np.asarray(out, dtype=np.int64)

    def batch(self, step: int, index: int, batch_size: int, seq_len: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch  # here: tokenize, which writes shards, has no use for torch

        if self.num_tokens <= seq_len + 1:
            raise ShardError(f"the split holds {self.num_tokens} tokens, fewer than one sequence "
                             f"of {seq_len + 1}")
        rng = np.random.default_rng([seed, step, index])
        starts = rng.integers(0, self.num_tokens - seq_len - 1, size=batch_size)
        rows = torch.from_numpy(np.stack([self._window(int(s), seq_len + 1) for s in starts]))
        return rows[:, :-1], rows[:, 1:]
