"""`prepare`: raw text → cleaned, filtered, deduplicated JSONL shards, as datatrove pipelines.

Six stages, each a datatrove executor that depends on the one before (local processes by
default; the same stages on Slurm or Ray by configuration):

    1 filter        read → input problems → normalise + boilerplate → language → quality
                    → safety → PII → write work/filtered/ + exact-dedup signatures
    2 exact-find    duplicates of the normalised text across the whole corpus (1 task)
    3 exact-filter  drop them → write work/unique/ + MinHash signatures
    4 mh-buckets    MinHash LSH buckets (one task per bucket)
    5 mh-cluster    near-duplicate clusters (1 task)
    6 mh-filter     keep one document per cluster → OUT/documents/NNNNN.jsonl.gz

Documents are sharded over `tasks` by input file; the output depends on `tasks` but not on
`workers`. Completed tasks are skipped on a re-run, and an interrupted task is redone from
the start, so a re-run after an interruption writes the same shards.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hslm.config import ConfigError
from hslm.configfile import load_dataclass
from hslm.data.quality import QualityThresholds
from hslm.data.sources import TEXT_LAYOUTS, SourceOptions, resolve_inputs
from hslm.data.steps import INVALID_UTF8, ON_ERROR

EXECUTORS = ("local", "slurm", "ray")
STAGES = ("filter", "exact-find", "exact-filter", "mh-buckets", "mh-cluster", "mh-filter")
KEEP_ALWAYS = ("hi",)
HINGLISH = ("hi-latn", "hi-mixed")


@dataclass
class PrepareConfig:
    inputs: list[str] = field(default_factory=list)  # files, folders, globs
    output: str = "runs/data/prepared"
    # reading
    text_layout: str = "line"  # plain text: "line" (a document per line) or "paragraph"
    text_field: str = "text"  # JSONL
    text_column: str = "text"  # CSV/TSV/Parquet
    max_chars: int = 1_000_000  # longer documents are dropped (and counted)
    on_error: str = "skip"  # an unreadable file: skip it (listed in the report) or stop
    invalid_utf8: str = "repair"  # repair (U+FFFD, counted) or drop the document
    # filtering
    keep_hinglish: bool = False  # keep romanised and code-mixed Hindi too
    quality: dict[str, Any] = field(default_factory=dict)  # QualityThresholds overrides
    scrub_pii: bool = True
    csam_lists: list[str] = field(default_factory=list)  # extra block-list files
    abusive_lists: list[str] = field(default_factory=list)
    max_abusive_share: float = 0.02  # of a document's words
    min_abusive_words: int = 2
    abusive_action: str = "drop"  # or "flag" (metadata abusive: true)
    # deduplication
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8  # 14 x 8: ~0.8 Jaccard is caught with high probability
    # execution
    executor: str = "local"
    tasks: int = 4
    workers: int = 0  # local: processes at once; 0 = the CPU count
    executor_options: dict[str, Any] = field(default_factory=dict)  # e.g. slurm partition, time
    examples_per_reason: int = 3  # in the report

    def __post_init__(self) -> None:
        choices = {"text_layout": TEXT_LAYOUTS, "on_error": ON_ERROR,
                   "invalid_utf8": INVALID_UTF8, "abusive_action": ("drop", "flag"),
                   "executor": EXECUTORS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("max_chars", "tasks", "minhash_ngrams", "minhash_buckets",
                     "minhash_hashes_per_bucket", "min_abusive_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if not 0 <= self.max_abusive_share <= 1:
            raise ConfigError(f"max_abusive_share must be in [0, 1], got {self.max_abusive_share}")
        self.thresholds()  # unknown quality keys fail here, before any work

    def thresholds(self) -> QualityThresholds:
        known = {f.name for f in dataclasses.fields(QualityThresholds)}
        unknown = sorted(set(self.quality) - known)
        if unknown:
            raise ConfigError(f"unknown quality key(s) {unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.quality.items()}
        return QualityThresholds(**values)

    def keep_labels(self) -> tuple[str, ...]:
        return KEEP_ALWAYS + (HINGLISH if self.keep_hinglish else ())

    def source_options(self) -> SourceOptions:
        return SourceOptions(self.text_layout, self.text_field, self.text_column, self.max_chars)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = ()) -> PrepareConfig:
        return load_dataclass(cls, path, overrides, what="prepare")


class Layout:
    """Where each stage reads and writes, under the output folder."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.documents = self.output / "documents"
        self.report_json = self.output / "report.json"
        self.report_md = self.output / "report.md"
        self.work = self.output / "work"
        self.logs = self.work / "logs"
        self.excluded = self.work / "excluded"  # documents the dedup stages dropped
        self.examples = self.work / "examples"  # the first few each filter dropped, by reason
        self.unreadable = self.work / "unreadable"
        self.filtered = self.work / "filtered"
        self.unique = self.work / "unique"
        self.exact_signatures = self.work / "exact_signatures"
        self.exact_duplicates = self.work / "exact_duplicates"
        self.minhash_signatures = self.work / "minhash_signatures"
        self.minhash_buckets = self.work / "minhash_buckets"
        self.minhash_remove = self.work / "minhash_remove"

    def log_dir(self, stage: str) -> Path:
        return self.logs / stage


def build_stages(config: PrepareConfig) -> list[tuple[str, list, int]]:
    """(stage name, datatrove pipeline, tasks) for each stage that the config enables."""
    from datatrove.pipeline.dedup import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter,
                                                      ExactDedupSignature, ExactFindDedups)
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from hslm.data import steps

    files = [str(p) for p in resolve_inputs(config.inputs)]
    at = Layout(config.output)

    def excluded(step: str) -> JsonlWriter:
        return JsonlWriter(str(at.excluded / step), output_filename="${rank}.jsonl.gz",
                           adapter=steps.document_record)

    def writer(folder: Path) -> JsonlWriter:
        # Work folders are read once by the next stage: not worth compressing.
        final = folder == at.documents
        return JsonlWriter(str(folder), output_filename="${rank}.jsonl" + (".gz" if final else ""),
                           compression="gzip" if final else None, adapter=steps.document_record)

    examples = (str(at.examples), config.examples_per_reason)
    withheld = (*examples, config.csam_lists)  # an example with a CSAM term is its id only
    filtering = [
        steps.RawTextReader(files, config.source_options(), config.on_error, str(at.unreadable)),
        steps.InputProblemsFilter(config.invalid_utf8, *withheld),
        steps.NormalizeText(),
        steps.LanguageFilter(config.keep_labels(), *withheld),
        steps.QualityFilter(config.thresholds(), *withheld),
        steps.SafetyFilter(config.csam_lists, config.abusive_lists, config.max_abusive_share,
                           config.min_abusive_words, config.abusive_action, *examples),
    ]
    if config.scrub_pii:
        filtering.append(steps.ScrubPII())
    last_folder = at.filtered
    filtering.append(writer(last_folder))
    exact = ExactDedupConfig(content_getter=steps.exact_key,
                             hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    stages: list[tuple[str, list, int]] = []
    if config.exact_dedup:
        filtering.append(ExactDedupSignature(str(at.exact_signatures), config=exact))
        stages.append(("filter", filtering, config.tasks))
        stages.append(("exact-find", [ExactFindDedups(str(at.exact_signatures),
                                                      str(at.exact_duplicates), config=exact)], 1))
        stages.append(("exact-filter", [
            steps.RankFileReader(str(last_folder)),
            ExactDedupFilter(str(at.exact_duplicates), config=exact,
                             exclusion_writer=excluded("exact_duplicates")),
            writer(at.unique)], config.tasks))
        last_folder = at.unique
    else:
        stages.append(("filter", filtering, config.tasks))
    final_folder = at.documents
    if config.near_dedup:
        minhash = MinhashConfig(n_grams=config.minhash_ngrams, num_buckets=config.minhash_buckets,
                                hashes_per_bucket=config.minhash_hashes_per_bucket,
                                # datatrove 0.10's MinHash passes str to its xxhash: use sha1.
                                hash_config=HashConfig(precision=64, hash_fc="sha1"))
        signature = MinhashDedupSignature(str(at.minhash_signatures), config=minhash,
                                          language=steps.WhitespaceWords())
        if config.exact_dedup:
            stages[-1][1].append(signature)
        else:
            filtering.append(signature)
        stages.append(("mh-buckets", [MinhashDedupBuckets(str(at.minhash_signatures),
                                                          str(at.minhash_buckets), config=minhash)],
                       config.minhash_buckets))
        stages.append(("mh-cluster", [MinhashDedupCluster(str(at.minhash_buckets),
                                                          str(at.minhash_remove), config=minhash)], 1))
        stages.append(("mh-filter", [
            steps.RankFileReader(str(last_folder)),
            MinhashDedupFilter(str(at.minhash_remove), exclusion_writer=excluded("near_duplicates")),
            writer(final_folder)], config.tasks))
    else:
        stages.append(("copy", [steps.RankFileReader(str(last_folder)), writer(final_folder)],
                       config.tasks))
    return stages


def make_executors(config: PrepareConfig, stages: list[tuple[str, list, int]]) -> list:
    """One datatrove executor per stage, each depending on the one before."""
    at = Layout(config.output)
    executors, previous = [], None
    for name, pipeline, tasks in stages:
        common = dict(pipeline=pipeline, tasks=tasks, logging_dir=str(at.log_dir(name)),
                      depends=previous)
        if config.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            workers = min(tasks, config.workers or os.cpu_count() or 1)
            executor = LocalPipelineExecutor(**common, workers=workers, start_method="fork",
                                             **config.executor_options)
        elif config.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            options = {"time": "12:00:00", "partition": "cpu", "job_name": f"hslm-{name}",
                       **config.executor_options}
            executor = SlurmPipelineExecutor(**common, **options)
        else:
            from datatrove.executor import RayPipelineExecutor

            executor = RayPipelineExecutor(**common, **config.executor_options)
        executors.append(executor)
        previous = executor
    return executors


def run_prepare(config: PrepareConfig, fresh: bool = False,
                on_stage: Callable[[int, int, str], object] | None = None) -> Path:
    """Run every stage and return the folder of prepared documents. Locally the stages run
    one after the other (`on_stage(index, count, name)` hears of each); on a cluster the last
    executor submits them all with dependencies. `fresh` deletes an earlier run's output
    instead of resuming it."""
    at = Layout(config.output)
    if fresh and at.output.exists():
        shutil.rmtree(at.output)
    at.output.mkdir(parents=True, exist_ok=True)
    stages = build_stages(config)
    executors = make_executors(config, stages)
    if config.executor != "local":
        executors[-1].run()
        return at.documents
    for index, ((name, _, _), executor) in enumerate(zip(stages, executors)):
        if on_stage:
            on_stage(index, len(stages), name)
        executor.run()
    return at.documents
