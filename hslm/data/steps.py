"""hslm's datatrove pipeline steps: reading raw input, normalising, filtering and scrubbing.

Each step is a thin adapter from datatrove's `Document` stream to the pure functions in
`sources`, `language`, `quality`, `pii` and `safety`; datatrove counts what each step
forwards and drops (by reason), which the report reads back.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.word_tokenizers import WordTokenizer

from hslm.data import language, pii, quality
from hslm.data.safety import SafetyLists
from hslm.data.sources import SourceError, SourceOptions, read_documents
from hslm.normalize import normalize

ON_ERROR = ("skip", "stop")
INVALID_UTF8 = ("repair", "drop")


class RawTextReader(PipelineStep):
    """Files given by path (see `hslm.data.sources`); task r reads files r, r+T, r+2T, ..."""

    name = "📖 raw text"
    type = "📖 - READER"

    def __init__(self, files: list[str], options: SourceOptions, on_error: str, error_folder: str):
        super().__init__()
        self.files = files
        self.options = options
        self.on_error = on_error
        self.error_folder = Path(error_folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        errors = []
        for path in self.files[rank::world_size]:
            self.stat_update("input_files")
            try:
                for raw in read_documents(Path(path), self.options):
                    self.stat_update("documents")
                    metadata = {"source": raw.source}
                    if raw.repaired_utf8:
                        metadata["repaired_utf8"] = True
                    if raw.too_long:
                        metadata["too_long"] = True
                    yield Document(text=raw.text, id=raw.id, metadata=metadata)
            except SourceError as err:
                if self.on_error == "stop":
                    raise
                self.stat_update("unreadable_files")
                errors.append(str(err))
        # The report lists every skipped file by name (stats only count them).
        self.error_folder.mkdir(parents=True, exist_ok=True)
        (self.error_folder / f"{rank:05d}.txt").write_text("".join(e + "\n" for e in errors), "utf-8")


class RankFileReader(JsonlReader):
    """Reads back exactly the file an earlier stage's task `rank` wrote (a missing file is an
    empty task): datatrove's dedup stages index documents by (task, position)."""

    name = "📖 stage output"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(name):
            for document in self.read_file(name):
                yield document


class InputProblemsFilter(BaseFilter):
    name = "🚧 input problems"

    def __init__(self, invalid_utf8: str, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.invalid_utf8 = invalid_utf8

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("too_long"):
            return False, "too_long"
        if doc.metadata.get("repaired_utf8"):
            if self.invalid_utf8 == "drop":
                return False, "invalid_utf8"
            self.stat_update("utf8_repaired")
        return True


class NormalizeText(PipelineStep):
    """hslm's normalisation (the tokenizer's too), then web boilerplate lines removed."""

    name = "🔤 normalise"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                normalized = normalize(doc.text)
                changed = normalized != doc.text
                doc.text, removed = quality.remove_boilerplate(normalized)
            self.stat_update("total")
            if changed:
                self.stat_update("changed_by_normalisation")
            if removed:
                self.stat_update("boilerplate_lines_removed", value=removed)
            yield doc


class LanguageFilter(BaseFilter):
    name = "🌐 script and language"

    def __init__(self, keep: tuple[str, ...], exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.keep = keep

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        found = language.identify(doc.text)
        doc.metadata["language"] = found.label
        return True if found.label in self.keep else (False, f"language_{found.label}")


class QualityFilter(BaseFilter):
    name = "🥇 quality"

    def __init__(self, limits: quality.QualityThresholds, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.limits = limits

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        problem = quality.quality_problem(doc.text, language.words(doc.text),
                                          doc.metadata.get("language", "hi"), self.limits)
        return True if problem is None else (False, problem)


class SafetyFilter(BaseFilter):
    name = "🛡 safety"

    def __init__(self, extra_csam: list[str], extra_abusive: list[str], max_abusive_share: float,
                 min_abusive_words: int, abusive_action: str,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.lists = SafetyLists.load(extra_csam, extra_abusive)
        self.max_abusive_share = max_abusive_share
        self.min_abusive_words = min_abusive_words
        self.abusive_action = abusive_action

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.lists.has_csam_term(doc.text):
            return False, "csam"
        count, share = self.lists.abusive_share([w.lower() for w in language.words(doc.text)])
        if count >= self.min_abusive_words and share > self.max_abusive_share:
            if self.abusive_action == "drop":
                return False, "abusive"
            doc.metadata["abusive"] = True
            self.stat_update("flagged_abusive")
        return True


class ScrubPII(PipelineStep):
    name = "🕵 PII"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                doc.text, counts = pii.scrub(doc.text)
            self.stat_update("total")
            for kind, count in counts.items():
                self.stat_update(f"pii_{kind}", value=count)
            yield doc


def exact_key(doc: Document) -> bytes:
    """What exact deduplication compares: the text, case and spacing aside."""
    return " ".join(doc.text.lower().split()).encode()


class WhitespaceWords(WordTokenizer):
    """Words for MinHash shingles: hslm's word pattern (datatrove's own Hindi tokenizer needs
    extra packages)."""

    def __init__(self):
        super().__init__("hi")

    def word_tokenize(self, text: str) -> list[str]:
        return language.words(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.split("\n") if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in language.WORD.finditer(text)]
