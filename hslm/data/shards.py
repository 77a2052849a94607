"""Token shards: flat binary arrays of token ids plus a JSON manifest.

    out/manifest.json           format, dtype, vocab size, tokenizer checksum, shards per split
    out/train_00000.bin ...     ids, documents as <bos> ids <eos>, back to back

Ids are uint16 when the vocabulary fits, uint32 otherwise (never truncated). Batches are
random windows whose positions depend only on (seed, step, index), where index numbers the
micro-batches of a step across all ranks; so a resumed run reads exactly the batches an
uninterrupted one would have read, and 2 ranks read what 1 rank with 2 micro-steps reads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from hslm.files import write_atomically

FORMAT = "hslm-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
BOS_ID, EOS_ID = 2, 1


class ShardError(ValueError):
    """Shards that cannot be written or read as asked (message says why)."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    def __init__(self, output_dir: str | Path, tokenizer_sha256: str, vocab_size: int,
                 shard_tokens: int = 50_000_000):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer_sha256 = tokenizer_sha256
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.shard_tokens = shard_tokens
        self.pending: dict[str, list[np.ndarray]] = {}
        self.pending_tokens: dict[str, int] = {}
        self.shards: dict[str, list[dict]] = {}

    def add_document(self, ids: list[int], split: str = "train") -> None:
        doc = np.asarray([BOS_ID, *ids, EOS_ID], dtype=np.int64)
        if doc.min() < 0 or doc.max() >= self.vocab_size:
            raise ShardError(f"token id {int(doc.max())} is outside the vocabulary of {self.vocab_size}")
        self.pending.setdefault(split, []).append(doc.astype(self.dtype))
        self.pending_tokens[split] = self.pending_tokens.get(split, 0) + len(doc)
        if self.pending_tokens[split] >= self.shard_tokens:
            self._flush(split)

    def _flush(self, split: str) -> None:
        docs = self.pending.pop(split, [])
        self.pending_tokens.pop(split, None)
        if not docs:
            return
        data = np.concatenate(docs).tobytes()
        shards = self.shards.setdefault(split, [])
        name = f"{split}_{len(shards):05d}.bin"
        write_atomically(self.output_dir / name, lambda f: f.write(data))
        shards.append({"file": name, "tokens": len(data) // self.dtype.itemsize,
                       "documents": len(docs), "sha256": hashlib.sha256(data).hexdigest()})

    def close(self, extra_manifest: dict | None = None) -> Path:
        for split in list(self.pending):
            self._flush(split)
        manifest = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name,
                    "vocab_size": self.vocab_size, "tokenizer_sha256": self.tokenizer_sha256,
                    "splits": self.shards, **(extra_manifest or {})}
        path = self.output_dir / MANIFEST
        text = (json.dumps(manifest, indent=2) + "\n").encode()
        write_atomically(path, lambda f: f.write(text))
        return path


def write_shards_from_texts(texts: Iterable[str], tokenizer, output_dir: str | Path,
                            val_fraction: float = 0.05, sources: Iterable[str] | None = None,
                            source_files: list[str] = (), batch_documents: int = 10_000) -> Path:
    """Tokenize documents into shards; every 1/val_fraction-th document goes to validation
    (the split is by document). `sources` names each document's source, for the manifest's
    tokens-per-source table; documents are encoded in batches, so any number fits."""
    writer = ShardWriter(output_dir, tokenizer.sha256, tokenizer.vocab_size)
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    per_source: dict[str, dict[str, int]] = {}
    labelled = zip(texts, sources if sources is not None else itertools.repeat(""))
    index = 0
    while batch := list(itertools.islice(labelled, batch_documents)):
        for (_, source), ids in zip(batch, tokenizer.encode_batch([text for text, _ in batch])):
            writer.add_document(ids, "val" if every and index % every == every - 1 else "train")
            if source:
                entry = per_source.setdefault(source, {"documents": 0, "tokens": 0})
                entry["documents"] += 1
                entry["tokens"] += len(ids) + 2  # with <bos> and <eos>
            index += 1
    return writer.close({"documents": index, "source_files": list(source_files),
                         "tokens_per_source": dict(sorted(per_source.items()))})


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
        if self.num_tokens <= seq_len + 1:
            raise ShardError(f"the split holds {self.num_tokens} tokens, fewer than one sequence "
                             f"of {seq_len + 1}")
        rng = np.random.default_rng([seed, step, index])
        starts = rng.integers(0, self.num_tokens - seq_len - 1, size=batch_size)
        rows = torch.from_numpy(np.stack([self._window(int(s), seq_len + 1) for s in starts]))
        return rows[:, :-1], rows[:, 1:]
