"""hslm's datatrove pipeline steps: reading raw input, normalising, filtering and scrubbing.

Each step is a thin adapter from datatrove's `Document` stream to the pure functions in
`sources`, `language`, `quality`, `pii` and `safety`; datatrove counts what each step
forwards and drops (by reason), which the report reads back.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.word_tokenizers import WordTokenizer

from hslm.data import language, pii, quality
from hslm.data.safety import SafetyLists
from hslm.data.sources import SourceError, SourceOptions, read_documents
from hslm.normalize import normalize

ON_ERROR = ("skip", "stop")
EXAMPLE_CHARS = 200  # of each example document kept for the report
TEXT_WITHHELD = ("csam",)  # reasons whose examples keep the id only, never any text
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

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        errors: list[dict] = []
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
                errors.append({"file": path, "reason": str(err).removeprefix(f"{path}: ")})
        # The report lists every skipped file and why (stats only count them).
        self.error_folder.mkdir(parents=True, exist_ok=True)
        (self.error_folder / f"{rank:05d}.jsonl").write_text(
            "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors), "utf-8")


class RankFileReader(JsonlReader):
    """Reads back exactly the file an earlier stage's task `rank` wrote (a missing file is an
    empty task): datatrove's dedup stages index documents by (task, position)."""

    name = "📖 stage output"

    def __init__(self, folder: str):
        super().__init__(folder, add_file_path=False)  # the work folder is no one's business

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl"
        if self.data_folder.exists(name):
            yield from self.read_file(name)


_last_words: tuple[str | None, list[str]] = (None, [])


def words_of(text: str) -> list[str]:
    """The words of `text`. The filters run one after another on each document, so a
    one-entry cache (keyed by the string object itself) saves splitting it three times."""
    global _last_words
    if _last_words[0] is not text:
        _last_words = (text, language.words(text))
    return _last_words[1]


def report_example(doc_id: str, text: str, withhold_text: bool) -> dict:
    """What the report may show of a dropped document: its start after PII scrubbing, or its
    id alone."""
    if withhold_text:
        return {"id": doc_id}
    return {"id": doc_id, "text": pii.scrub(text)[0][:EXAMPLE_CHARS]}


def document_record(writer, document: Document) -> dict:
    """What a JsonlWriter writes for a document (datatrove's default deep-copies it first)."""
    record = {"text": document.text, "id": document.id}
    if document.metadata:
        record["metadata"] = document.metadata
    return record


class CountingFilter(PipelineStep):
    """A filter whose bookkeeping is per task, not per document: counts and characters kept
    and dropped by reason go to datatrove's stats once at the end, and the first few dropped
    documents of each reason to EXAMPLES/<step>/<rank>.json for the report, PII scrubbed, and
    as ids only when the reason is in TEXT_WITHHELD or the text has a CSAM term (the language
    and quality filters run before the safety filter). (datatrove's BaseFilter updates several
    running statistics per document, which cost more than the Hindi rules themselves.)"""

    type = "🔻 - FILTER"
    step = ""  # folder name of the examples

    def __init__(self, examples_folder: str, examples_per_reason: int,
                 csam_lists: list[str] = ()):
        super().__init__()
        self.examples_folder = Path(examples_folder)
        self.examples_per_reason = examples_per_reason
        self.csam = SafetyLists.load(csam_lists).csam

    def check(self, doc: Document) -> str | None:
        """The reason to drop the document, or None to keep it (may annotate its metadata)."""
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        examples: dict[str, list] = {}
        for doc in data:
            reason = self.check(doc)
            if reason is None:
                counts["forwarded"] += 1
                counts["forwarded_chars"] += len(doc.text)
                yield doc
                continue
            counts[f"dropped_{reason}"] += 1
            counts[f"dropped_chars_{reason}"] += len(doc.text)
            kept_examples = examples.setdefault(reason, [])
            if len(kept_examples) < self.examples_per_reason:
                withhold = reason in TEXT_WITHHELD or self.csam.search(doc.text) is not None
                kept_examples.append(report_example(doc.id, doc.text, withhold))
        for key, value in counts.items():
            self.stat_update(key, value=value)
        folder = self.examples_folder / self.step
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rank:05d}.json").write_text(json.dumps(examples, ensure_ascii=False), "utf-8")


class InputProblemsFilter(CountingFilter):
    name = "🚧 input problems"
    step = "input"

    def __init__(self, invalid_utf8: str, examples_folder: str, examples_per_reason: int,
                 csam_lists: list[str] = ()):
        super().__init__(examples_folder, examples_per_reason, csam_lists)
        self.invalid_utf8 = invalid_utf8

    def check(self, doc: Document) -> str | None:
        if doc.metadata.get("too_long"):
            return "too_long"
        if doc.metadata.get("repaired_utf8"):
            if self.invalid_utf8 == "drop":
                return "invalid_utf8"
            self.stat_update("utf8_repaired")
        return None


class NormalizeText(PipelineStep):
    """hslm's normalisation (the tokenizer's too), then web boilerplate lines removed."""

    name = "🔤 normalise"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        for doc in data:
            normalized = normalize(doc.text)
            counts["changed_by_normalisation"] += normalized != doc.text
            doc.text, removed = quality.remove_boilerplate(normalized)
            counts["boilerplate_lines_removed"] += removed
            yield doc
        for key, value in counts.items():
            self.stat_update(key, value=value)


class LanguageFilter(CountingFilter):
    name = "🌐 script and language"
    step = "language"

    def __init__(self, keep: tuple[str, ...], examples_folder: str, examples_per_reason: int,
                 csam_lists: list[str] = ()):
        super().__init__(examples_folder, examples_per_reason, csam_lists)
        self.keep = keep

    def check(self, doc: Document) -> str | None:
        found = language.identify(doc.text, words_of(doc.text))
        doc.metadata["language"] = found.label
        return None if found.label in self.keep else f"language_{found.label}"


class QualityFilter(CountingFilter):
    name = "🥇 quality"
    step = "quality"

    def __init__(self, limits: quality.QualityThresholds, examples_folder: str,
                 examples_per_reason: int, csam_lists: list[str] = ()):
        super().__init__(examples_folder, examples_per_reason, csam_lists)
        self.limits = limits

    def check(self, doc: Document) -> str | None:
        return quality.quality_problem(doc.text, words_of(doc.text),
                                       doc.metadata.get("language", "hi"), self.limits)


class SafetyFilter(CountingFilter):
    name = "🛡 safety"
    step = "safety"

    def __init__(self, extra_csam: list[str], extra_abusive: list[str], max_abusive_share: float,
                 min_abusive_words: int, abusive_action: str, examples_folder: str,
                 examples_per_reason: int):
        super().__init__(examples_folder, examples_per_reason, extra_csam)
        self.lists = SafetyLists.load(extra_csam, extra_abusive)
        self.max_abusive_share = max_abusive_share
        self.min_abusive_words = min_abusive_words
        self.abusive_action = abusive_action

    def check(self, doc: Document) -> str | None:
        if self.lists.has_csam_term(doc.text):
            return "csam"
        count, share = self.lists.abusive_share(words_of(doc.text))
        if count >= self.min_abusive_words and share > self.max_abusive_share:
            if self.abusive_action == "drop":
                return "abusive"
            doc.metadata["abusive"] = True
            self.stat_update("flagged_abusive")
        return None


class ScrubPII(PipelineStep):
    name = "🕵 PII"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        for doc in data:
            doc.text, found = pii.scrub(doc.text)
            counts.update(found)
            yield doc
        for kind, count in counts.items():
            self.stat_update(f"pii_{kind}", value=count)


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
