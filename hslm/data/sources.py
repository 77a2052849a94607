"""Raw input for the data pipeline: which files, in which format, and their documents.

Inputs are files, folders (searched recursively) and glob patterns. Formats, by suffix
(after an optional `.gz`, `.xz`, `.zst` or `.bz2`):

    .txt (or anything else)  one document per line, or per blank-line separated block
    .jsonl / .json           one JSON object per line; the text is in `text_field`
    .csv / .tsv              a header row; the text is in `text_column`
    .parquet                 the text is in `text_column` (needs pyarrow)

Everything is read as a stream: a line at most FRAGMENT_BYTES at a time, whatever the size
of the file, its decompressed size or its lines. Bytes that are not UTF-8 are repaired
(replaced by U+FFFD) and the document is marked so the pipeline can count it. A document
longer than `max_chars` is measured while it is read and never held whole: it is flagged
`too_long` (its text is dropped) or, with `long_documents="split"`, given in pieces of at
most `max_chars`. A JSONL/CSV record is held whole up to `max_record_bytes(max_chars)`; a
longer one is read past and flagged `too_long`. A file that cannot be read raises
SourceError.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import glob
import gzip
import io
import json
import lzma
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

COMPRESSIONS = (".gz", ".xz", ".zst", ".bz2")
TEXT_LAYOUTS = ("line", "paragraph")
LONG_DOCUMENTS = ("drop", "split")


class SourceError(ValueError):
    """Input that cannot be found or read as configured (message says which and why)."""


@dataclass(frozen=True)
class SourceOptions:
    text_layout: str = "line"  # plain text: a document per line, or per blank-line block
    text_field: str = "text"  # JSONL
    text_column: str = "text"  # CSV/TSV/Parquet
    max_chars: int = 1_000_000  # longer documents are dropped and counted, never cut silently
    long_documents: str = "drop"  # or "split" into pieces of at most max_chars (tokenize)

    def __post_init__(self) -> None:
        if self.text_layout not in TEXT_LAYOUTS:
            raise SourceError(f"text_layout must be one of {TEXT_LAYOUTS}, "
                              f"got {self.text_layout!r}")
        if self.long_documents not in LONG_DOCUMENTS:
            raise SourceError(f"long_documents must be one of {LONG_DOCUMENTS}, "
                              f"got {self.long_documents!r}")
        if self.max_chars <= 0:
            raise SourceError(f"max_chars must be positive, got {self.max_chars}")


@dataclass
class RawDocument:
    text: str
    id: str  # "<file>#<number>", stable across runs
    source: str  # the raw file's name (kept through prepare in JSONL metadata)
    repaired_utf8: bool = False
    too_long: bool = False  # longer than max_chars: text dropped
    piece: int = 0  # with long_documents="split": which piece of the document (same id)


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


def read_texts(files: list[Path], options: SourceOptions) -> Iterator[str]:
    """The text of every document of `files`, in order; a long one in pieces of at most
    `options.max_chars` (for training a tokenizer, which cuts text into lines anyway)."""
    options = dataclasses.replace(options, long_documents="split")
    for path in files:
        for document in read_documents(path, options):
            yield document.text


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


def max_record_bytes(max_chars: int) -> int:
    """The longest JSONL/CSV line read whole for a document of `max_chars`: JSON's \\uXXXX
    escapes take 6 bytes a character, and a record's other fields some more."""
    return 6 * max_chars + 65_536


def cut_text(text: str, limit: int) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters, cut before a space where possible."""
    while len(text) > limit:
        cut = text.rfind(" ", 1, limit)
        cut = cut if cut > 0 else limit
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text


# Raised by a reader for one file; anything else is a bug in hslm, not a bad file. Python's
# own limits count as bad input: RecursionError for deeply nested JSON, ValueError for an
# integer of more than 4,300 digits; zlib.error for corrupt deflate data.
_FILE_ERRORS = (OSError, EOFError, ValueError, RecursionError, lzma.LZMAError, zlib.error,
                csv.Error)


def read_documents(path: Path, options: SourceOptions) -> Iterator[RawDocument]:
    """The documents of one file, read as a stream (one line or record at a time, however
    large the file or its decompressed size). Raises SourceError when the file cannot be read
    (missing column, broken compression, a line that is not JSON, ...); the documents before
    the fault have been given already. Per-document problems are flags."""
    kind, compression = format_of(path)
    try:
        if kind == "parquet":
            yield from _parquet_documents(path, options)
            return
        with open_binary(path, compression) as binary:
            reader = {"text": _text_documents, "jsonl": _jsonl_documents,
                      "csv": _csv_documents, "tsv": _csv_documents}[kind]
            yield from reader(path, binary, kind, options)
    except SourceError:
        raise
    except _FILE_ERRORS as err:
        raise SourceError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    except Exception as err:  # zstandard's and pyarrow's own error types
        if type(err).__module__.split(".")[0] in ("zstandard", "pyarrow"):
            raise SourceError(f"{path}: cannot read ({err})") from None
        raise


FRAGMENT_BYTES = 1 << 20  # a line is read at most this much at a time


def _line_fragments(binary) -> Iterator[tuple[bytes, bool]]:
    """(fragment, ends the line) for every line of `binary`, without line ends: a line of up
    to FRAGMENT_BYTES is one fragment, a longer one several, each cut between UTF-8
    characters. Decompression and reading never hold more than a fragment."""
    carry = b""
    while chunk := binary.readline(FRAGMENT_BYTES):
        data = carry + chunk
        if data.endswith(b"\n"):
            yield data.rstrip(b"\r\n"), True
            carry = b""
            continue
        cut = _whole_characters(data)
        yield data[:cut], False
        carry = data[cut:]
    # The last line has no line end (or the file is empty).
    yield carry, True


def _whole_characters(data: bytes) -> int:
    """How many bytes of `data` make whole UTF-8 characters (its last one may be cut off)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte of the last character
            length = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else \
                4 if byte >> 3 == 0b11110 else 1
            return len(data) - back if length > back else len(data)
    return len(data)


def _records(fragments: Iterator[tuple[bytes, bool]], max_bytes: int,
             seen: Callable[[bytes], object] | None = None) -> Iterator[bytes | None]:
    """Each line whole, or None for a line over `max_bytes`, which is read past and never
    held whole. `seen` hears of every fragment, kept or not."""
    parts: list[bytes] = []
    size = 0
    for fragment, line_end in fragments:
        if seen:
            seen(fragment)
        size += len(fragment)
        if size <= max_bytes:
            parts.append(fragment)
        else:
            parts.clear()
        if line_end:
            yield b"".join(parts) if size <= max_bytes else None
            parts.clear()
            size = 0


class _Document:
    """A document being read fragment by fragment. Its text is kept up to `max_chars`; past
    that it is dropped (flagged too_long, nothing more kept) or, with long_documents=split,
    given as pieces of at most `max_chars` (cut before a space where possible)."""

    def __init__(self, path: Path, number: int, options: SourceOptions, source: str = ""):
        self.id = f"{path.name}#{number}"
        self.source = source or path.name
        self.options = options
        self.parts: list[str] = []
        self.chars = 0
        self.repaired = self.too_long = False
        self.pieces = 0

    def add(self, text: str, repaired: bool = False) -> Iterator[RawDocument]:
        self.repaired |= repaired
        if self.too_long:
            return
        self.parts.append(text)
        self.chars += len(text)
        if self.chars <= self.options.max_chars:
            return
        if self.options.long_documents == "drop":
            self.too_long = True
            self.parts, self.chars = [], 0
            return
        *done, rest = cut_text("".join(self.parts), self.options.max_chars)
        for piece in done:
            yield self._piece(piece)
        self.parts, self.chars = [rest], len(rest)

    def too_long_record(self) -> Iterator[RawDocument]:
        """The document of a record too long to hold (read past, never parsed)."""
        self.too_long = True
        yield from self.end()

    def end(self) -> Iterator[RawDocument]:
        text = "".join(self.parts)
        if self.too_long or text.strip():
            yield self._piece(text)

    def _piece(self, text: str) -> RawDocument:
        self.pieces += 1
        return RawDocument(text, self.id, self.source, self.repaired, self.too_long,
                           self.pieces - 1)


def _whole_document(text: str, path: Path, number: int, repaired: bool, options: SourceOptions,
                    source: str = "") -> Iterator[RawDocument]:
    """A document read whole (a JSON/CSV/Parquet field): dropped or split like any other."""
    document = _Document(path, number, options, source)
    yield from document.add(text, repaired)
    yield from document.end()


def _text_documents(path, binary, kind, options) -> Iterator[RawDocument]:
    paragraph = options.text_layout == "paragraph"
    number = 0
    document: _Document | None = None
    line_start = True
    for fragment, line_end in _line_fragments(binary):
        text, repaired = _decode(fragment)
        whole_line = line_start and line_end
        if whole_line and not paragraph and len(text) <= options.max_chars:  # the usual case
            if text.strip():
                number += 1
                yield RawDocument(text, f"{path.name}#{number}", path.name, repaired)
            continue
        if whole_line and not text.strip():  # a blank line
            if document is not None:
                yield from document.end()
                document = None
            continue
        if document is None:
            number += 1
            document = _Document(path, number, options)
        elif paragraph and line_start:
            yield from document.add("\n")
        yield from document.add(text, repaired)
        line_start = line_end
        if line_end and not paragraph:
            yield from document.end()
            document = None
    if document is not None:
        yield from document.end()


def _jsonl_documents(path, binary, kind, options) -> Iterator[RawDocument]:
    records = _records(_line_fragments(binary), max_record_bytes(options.max_chars))
    for number, raw in enumerate(records, start=1):
        if raw is None:  # a line too long to hold
            yield from _Document(path, number, options).too_long_record()
            continue
        if not raw.strip():
            continue
        line, repaired = _decode(raw)
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:  # also too deep, or too many digits
            raise SourceError(f"{path}: line {number} is not JSON that can be read "
                              f"({type(err).__name__}: {err})") from None
        if not isinstance(record, dict) or options.text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SourceError(f"{path}: line {number} has no field {options.text_field!r} "
                              f"(has {keys}); choose it with text_field")
        text = record[options.text_field]
        metadata = record.get("metadata")
        source = metadata.get("source", "") if isinstance(metadata, dict) else ""
        if isinstance(text, str) and text.strip():
            yield from _whole_document(text, path, number, repaired, options, str(source))


class _RowTooLong(Exception):
    """A CSV row over max_record_bytes (raised through the csv reader's input)."""


def _csv_documents(path, binary, kind, options) -> Iterator[RawDocument]:
    csv.field_size_limit(sys.maxsize)  # rows are bounded by max_record_bytes instead
    max_bytes = max_record_bytes(options.max_chars)
    fragments = _line_fragments(binary)
    row = {"bytes": 0, "quotes": 0, "repaired": False}  # the row being read

    def seen(fragment: bytes) -> None:
        row["bytes"] += len(fragment)
        row["quotes"] += fragment.count(b'"')

    def lines() -> Iterator[str]:
        for raw in _records(fragments, max_bytes, seen):
            if raw is None or row["bytes"] > max_bytes:
                raise _RowTooLong
            line, repaired = _decode(raw)
            row["repaired"] |= repaired
            yield line + "\n"

    def new_row() -> None:
        row.update(bytes=0, quotes=0, repaired=False)

    delimiter = "\t" if kind == "tsv" else ","
    rows = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(rows, None)
    except _RowTooLong:
        raise SourceError(f"{path}: the header row is longer than {max_bytes:,} bytes") from None
    if header is None:
        return
    if options.text_column not in header:
        raise SourceError(f"{path}: no column {options.text_column!r} (has {header}); "
                          "choose it with text_column")
    column = header.index(options.text_column)
    number = 0
    while True:
        new_row()
        number += 1
        try:
            fields = next(rows, None)
        except _RowTooLong:
            yield from _Document(path, number, options).too_long_record()
            # Read past the rest of the row: a quoted field ends where its quotes balance.
            while row["quotes"] % 2 and next(_records(fragments, max_bytes, seen), False) \
                    is not False:
                pass
            rows = csv.reader(lines(), delimiter=delimiter)
            continue
        if fields is None:
            return
        text = fields[column] if column < len(fields) else ""
        if text.strip():
            yield from _whole_document(text, path, number, row["repaired"], options)


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
    for batch in table.iter_batches(columns=[options.text_column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            number += 1
            if isinstance(text, str) and text.strip():
                yield from _whole_document(text, path, number, False, options)
