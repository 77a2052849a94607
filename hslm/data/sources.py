"""Raw input for the data pipeline: which files, in which format, and their documents.

Inputs are files, folders (searched recursively) and glob patterns. Formats, by suffix
(after an optional `.gz`, `.xz` or `.zst`):

    .txt (or anything else)  one document per line, or per blank-line separated block
    .jsonl / .json           one JSON object per line; the text is in `text_field`
    .csv / .tsv              a header row; the text is in `text_column`
    .parquet                 the text is in `text_column` (needs pyarrow)

Bytes that are not UTF-8 are repaired (replaced by U+FFFD) and the document is marked so
the pipeline can count it; a document longer than `max_chars` is reported, not read into
the pipeline whole. Every problem is a `SourceProblem` the reader counts and reports.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import json
import lzma
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

COMPRESSIONS = (".gz", ".xz", ".zst", ".bz2")
TEXT_LAYOUTS = ("line", "paragraph")


class SourceError(ValueError):
    """Input that cannot be found or read as configured (message says which and why)."""


@dataclass(frozen=True)
class SourceOptions:
    text_layout: str = "line"  # plain text: a document per line, or per blank-line block
    text_field: str = "text"  # JSONL
    text_column: str = "text"  # CSV/TSV/Parquet
    max_chars: int = 1_000_000  # longer documents are dropped and counted, never cut silently


@dataclass
class RawDocument:
    text: str
    id: str  # "<file>#<number>", stable across runs
    source: str  # the raw file's name (kept through prepare in JSONL metadata)
    repaired_utf8: bool = False
    too_long: bool = False


def resolve_inputs(inputs: list[str]) -> list[Path]:
    """Every file named by `inputs` (files, folders, globs), sorted and without repeats.
    Raises SourceError for an input that matches nothing."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            files += [p for p in found if p.suffix.lower() not in (".md",)]
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise SourceError(f"no file matches {item!r}")
            files += matches
        else:
            raise SourceError(f"input not found: {item}")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise SourceError("the inputs name no files")
    return unique


def format_of(path: Path) -> tuple[str, str]:
    """(format, compression) of a file by its suffixes, e.g. ("jsonl", ".zst")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else ""
    last = suffixes[-1] if suffixes else ""
    kind = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
            ".tsv": "tsv", ".parquet": "parquet"}.get(last, "text")
    return kind, compression


def open_binary(path: Path, compression: str):
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise SourceError(f"{path}: reading .zst needs the zstandard package "
                              "(pip install 'hslm[data]')") from None
        # The stream reader cannot iterate lines; a buffer over it can.
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")


def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def read_documents(path: Path, options: SourceOptions) -> Iterator[RawDocument]:
    """The documents of one file. Raises SourceError when the file cannot be read at all
    (missing column, broken compression, not JSON); per-document problems are flags."""
    kind, compression = format_of(path)
    try:
        if kind == "parquet":
            yield from _parquet_documents(path, options)
            return
        with open_binary(path, compression) as binary:
            reader = {"text": _text_documents, "jsonl": _jsonl_documents,
                      "csv": _csv_documents, "tsv": _csv_documents}[kind]
            yield from reader(path, binary, kind, options)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise SourceError(f"{path}: cannot read ({err})") from None
    except Exception as err:  # zstandard's and pyarrow's own error types
        if type(err).__module__.split(".")[0] in ("zstandard", "pyarrow"):
            raise SourceError(f"{path}: cannot read ({err})") from None
        raise


def _document(text: str, path: Path, number: int, repaired: bool, options: SourceOptions,
              source: str = "") -> RawDocument:
    too_long = len(text) > options.max_chars
    return RawDocument("" if too_long else text, f"{path.name}#{number}", source or path.name,
                       repaired, too_long)


def _text_documents(path, binary, kind, options) -> Iterator[RawDocument]:
    block: list[str] = []
    repaired_block = False
    number = 0
    for raw in binary:
        line, repaired = _decode(raw.rstrip(b"\r\n"))
        if options.text_layout == "line":
            if line.strip():
                number += 1
                yield _document(line, path, number, repaired, options)
            continue
        if line.strip():
            block.append(line)
            repaired_block |= repaired
        elif block:
            number += 1
            yield _document("\n".join(block), path, number, repaired_block, options)
            block, repaired_block = [], False
    if block:
        yield _document("\n".join(block), path, number + 1, repaired_block, options)


def _jsonl_documents(path, binary, kind, options) -> Iterator[RawDocument]:
    for number, raw in enumerate(binary, start=1):
        if not raw.strip():
            continue
        line, repaired = _decode(raw)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}: line {number} is not JSON ({err})") from None
        if not isinstance(record, dict) or options.text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SourceError(f"{path}: line {number} has no field {options.text_field!r} "
                              f"(has {keys}); choose it with text_field")
        text = record[options.text_field]
        metadata = record.get("metadata")
        source = metadata.get("source", "") if isinstance(metadata, dict) else ""
        if isinstance(text, str) and text.strip():
            yield _document(text, path, number, repaired, options, str(source))


def _csv_documents(path, binary, kind, options) -> Iterator[RawDocument]:
    csv.field_size_limit(sys.maxsize)  # a long document is a long field
    repaired_lines = 0

    def decoded_lines():
        nonlocal repaired_lines
        for raw in binary:
            line, repaired = _decode(raw)
            repaired_lines += repaired
            yield line

    rows = csv.reader(decoded_lines(), delimiter="\t" if kind == "tsv" else ",")
    header = next(rows, None)
    if header is None:
        return
    if options.text_column not in header:
        raise SourceError(f"{path}: no column {options.text_column!r} (has {header}); "
                          "choose it with text_column")
    column = header.index(options.text_column)
    seen_repairs = 0
    for number, row in enumerate(rows, start=1):
        # The reader consumes exactly this row's lines, so new repairs belong to it.
        repaired, seen_repairs = repaired_lines > seen_repairs, repaired_lines
        text = row[column] if column < len(row) else ""
        if text.strip():
            yield _document(text, path, number, repaired, options)


def _parquet_documents(path: Path, options: SourceOptions) -> Iterator[RawDocument]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"{path}: reading Parquet needs pyarrow "
                          "(pip install 'hslm[data]')") from None
    table = pq.ParquetFile(path)
    if options.text_column not in table.schema_arrow.names:
        raise SourceError(f"{path}: no column {options.text_column!r} "
                          f"(has {table.schema_arrow.names}); choose it with text_column")
    number = 0
    for batch in table.iter_batches(columns=[options.text_column]):
        for text in batch.column(0).to_pylist():
            number += 1
            if isinstance(text, str) and text.strip():
                yield _document(text, path, number, False, options)

