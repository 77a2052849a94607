"""hslm-data end to end: input formats and problems, the datatrove pipeline on real Hindi files
(document accounting, workers, resuming), the report, the commands."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hslm.data.prepare import Layout, PrepareConfig, run_prepare
from hslm.data.report import write_report
from hslm.data.sources import SourceError, SourceOptions, read_documents, resolve_inputs

REAL_FILES = ("news_headlines_bbc_hindi.txt", "hinglish_top_code_switched_queries.txt",
              "reviews_iitp_product_sentences.txt", "literature_ltrc_classical_verse.txt")


def documents_of(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz"))
            for line in gzip.open(path, "rt", encoding="utf-8")]


def prepare(tmp_path: Path, inputs: list, name: str = "out", **settings) -> tuple[Path, dict]:
    config = PrepareConfig(inputs=[str(p) for p in inputs], output=str(tmp_path / name),
                           **{"tasks": 2, "workers": 1, **settings})
    run_prepare(config)
    return Layout(config.output).documents, write_report(config.output)


@pytest.fixture(scope="module")
def real_inputs(hindi_data_dir, tmp_path_factory) -> list[Path]:
    """Four real files, cut to 1,500 lines each (so the pipeline runs in seconds), plus a
    duplicate of one of them under another name."""
    folder = tmp_path_factory.mktemp("raw")
    for name in REAL_FILES:
        lines = (hindi_data_dir / name).read_text("utf-8").splitlines()[:1500]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(folder / REAL_FILES[0], folder / "copy_of_headlines.txt")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def real_run(real_inputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepared")
    documents, report = prepare(tmp, real_inputs, keep_hinglish=True)
    return tmp, documents, report


# ------------------------------------------------------------------ input
def test_every_format_and_compression(tmp_path):
    texts = ["पहला दस्तावेज़ यहाँ है", "दूसरा दस्तावेज़\nदो पंक्तियों में", "तीसरा"]
    (tmp_path / "a.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": t}, ensure_ascii=False) + "\n"
                                              for t in texts), encoding="utf-8")
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "content"])
        writer.writerows([i, t] for i, t in enumerate(texts))
    with open(tmp_path / "d.tsv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter="\t")
        writer.writerow(["content"])
        writer.writerows([t] for t in texts)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    pq.write_table(pa.table({"content": texts}), tmp_path / "e.parquet")
    raw = (tmp_path / "b.jsonl").read_bytes()
    (tmp_path / "f.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "g.jsonl.xz").write_bytes(lzma.compress(raw))
    (tmp_path / "h.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "i.jsonl.bz2").write_bytes(bz2.compress(raw))
    options = SourceOptions(text_layout="paragraph", text_field="body", text_column="content")
    for path in resolve_inputs([str(tmp_path)]):
        got = [doc.text for doc in read_documents(path, options)]
        assert got == texts, path.name
    line_options = SourceOptions(text_layout="line")
    assert len(list(read_documents(tmp_path / "a.txt", line_options))) == 4


def test_input_problems_are_flagged_not_lost(tmp_path):
    (tmp_path / "bad.txt").write_bytes("अच्छा पाठ\n".encode() + b"\xff\xfe broken \xc3\n"
                                       + b"x" * (50 * 1024 * 1024) + b"\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    docs = list(read_documents(tmp_path / "bad.txt", SourceOptions(max_chars=1000)))
    assert [d.repaired_utf8 for d in docs] == [False, True, False]
    assert "\ufffd" in docs[1].text
    assert docs[2].too_long and docs[2].text == ""
    assert list(read_documents(tmp_path / "empty.txt", SourceOptions())) == []


def test_input_errors_name_the_problem(tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        resolve_inputs([str(tmp_path / "nothing.txt")])
    with pytest.raises(SourceError, match="no file matches"):
        resolve_inputs([str(tmp_path / "*.jsonl")])
    (tmp_path / "x.jsonl").write_text('{"body": "पाठ"}\n', encoding="utf-8")
    with pytest.raises(SourceError, match="no field 'text'.*text_field"):
        list(read_documents(tmp_path / "x.jsonl", SourceOptions()))
    (tmp_path / "y.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="cannot read"):
        list(read_documents(tmp_path / "y.txt.gz", SourceOptions()))


# ------------------------------------------------------------------ the pipeline
def test_every_document_is_accounted_for(real_run, real_inputs):
    _, documents, report = real_run
    read = sum(1 for path in real_inputs for line in path.read_text("utf-8").splitlines()
               if line.strip())
    assert report["input"]["documents"] == read
    assert report["accounted"]
    dropped = sum(step["dropped_documents"] for step in report["steps"])
    assert report["output"]["documents"] + dropped == read == len(documents_of(documents)) + dropped
    reasons = {reason for step in report["steps"] for reason in step["reasons"]}
    # The copy is dropped whole as exact duplicates; the verse and the queries meet their filters.
    assert {"exact_duplicate", "language_en", "legacy_font", "no_stop_words"} <= reasons
    assert report["dedup"]["exact_duplicates"]["dropped"] >= 1400
    for step in report["steps"]:
        for entry in step["reasons"].values():
            assert 1 <= len(entry["examples"]) <= 3


def test_output_documents_are_clean_and_unique(real_run):
    _, documents, report = real_run
    docs = documents_of(documents)
    texts = [d["text"] for d in docs]
    assert len({" ".join(t.lower().split()) for t in texts}) == len(texts)
    assert {d["metadata"]["language"] for d in docs} <= {"hi", "hi-latn", "hi-mixed"}
    assert set(report["output"]["per_source"]) <= set(REAL_FILES) | {"copy_of_headlines.txt"}
    from hslm.normalize import normalize

    assert all(normalize(t) == t for t in texts)


def test_same_output_with_one_and_two_workers(real_run, real_inputs, tmp_path):
    _, documents, _ = real_run
    two_workers, _ = prepare(tmp_path, real_inputs, keep_hinglish=True, workers=2)
    assert documents_of(two_workers) == documents_of(documents)


def test_rerun_after_interruption_gives_the_same_shards(real_run, real_inputs, tmp_path):
    _, documents, _ = real_run
    config = PrepareConfig(inputs=[str(p) for p in real_inputs], output=str(tmp_path / "out"),
                           tasks=2, workers=1, keep_hinglish=True)
    run_prepare(config)
    at = Layout(config.output)
    # An interruption: task 1 of the last stage and all of the cluster stage never finished,
    # leaving a half-written output file behind.
    (at.log_dir("mh-filter") / "completions" / "00001").unlink()
    shutil.rmtree(at.log_dir("mh-cluster") / "completions")
    half = at.documents / "00001.jsonl.gz"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    run_prepare(config)
    assert documents_of(at.documents) == documents_of(documents)


def test_unreadable_file_is_skipped_and_listed_or_stops(real_inputs, tmp_path):
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    _, report = prepare(tmp_path, [real_inputs[0], broken], name="skip")
    assert len(report["input"]["unreadable_files"]) == 1
    assert Path(report["input"]["unreadable_files"][0]["file"]).name == "broken.txt.gz"
    assert report["accounted"]
    from hslm.data.sources import SourceError as Stopped

    with pytest.raises(Exception) as raised:
        prepare(tmp_path, [real_inputs[0], broken], name="stop", on_error="stop")
    assert isinstance(raised.value, Stopped) or "broken.txt.gz" in str(raised.value)


def test_pii_and_safety_in_the_pipeline(tmp_path):
    lines = ["मेरा नंबर 98765 43210 है और ईमेल ram@example.com पर लिखें, धन्यवाद आपका",
             "यह एक सामान्य वाक्य है जिसमें कोई निजी जानकारी नहीं है और यह ठीक है",
             "चाइल्ड पोर्न के खिलाफ यह खबर है जो हटाई जानी चाहिए पूरी तरह से",
             "तू चूतिया है और वो भी चूतिया है, ऐसा वह बार बार कहता रहा"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    documents, report = prepare(tmp_path, [tmp_path / "in.txt"], tasks=1)
    texts = [d["text"] for d in documents_of(documents)]
    assert texts == ["मेरा नंबर <PHONE> है और ईमेल <EMAIL> पर लिखें, धन्यवाद आपका", lines[1]]
    assert report["pii"] == {"email": 1, "phone": 1}
    safety = next(step for step in report["steps"] if step["step"] == "safety")
    assert set(safety["reasons"]) == {"csam", "abusive"}
    flagged, _ = prepare(tmp_path, [tmp_path / "in.txt"], name="flag", tasks=1,
                         abusive_action="flag")
    assert [d["metadata"].get("abusive") for d in documents_of(flagged)] == [None, None, True]


def test_config_errors_are_clear():
    from hslm.config import ConfigError

    with pytest.raises(ConfigError, match="executor must be one of"):
        PrepareConfig(executor="spark")
    with pytest.raises(ConfigError, match="unknown quality key"):
        PrepareConfig(quality={"min_wrds": 3})
    with pytest.raises(ConfigError, match="unknown prepare key"):
        PrepareConfig.load(None, ["keep_hinglsh=true"])


def test_slurm_stages_are_built_from_the_same_config(real_inputs, tmp_path):
    """The cluster executor gets the same six stages with dependencies (not submitted here)."""
    from datatrove.executor import SlurmPipelineExecutor

    from hslm.data.prepare import build_stages, make_executors

    config = PrepareConfig(inputs=[str(real_inputs[0])], output=str(tmp_path / "out"),
                           executor="slurm", tasks=8,
                           executor_options={"partition": "cpu", "time": "01:00:00"})
    stages = build_stages(config)
    executors = make_executors(config, stages)
    assert [name for name, _, _ in stages] == ["filter", "exact-find", "exact-filter",
                                                "mh-buckets", "mh-cluster", "mh-filter"]
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert [e.depends for e in executors[1:]] == executors[:-1]
    assert executors[0].world_size == 8


# ------------------------------------------------------------------ commands
def run_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from hslm.apps.data import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_commands_end_to_end(real_inputs, tmp_path):
    """prepare → tokenizer → tokenize → stats, as a user runs them (outside the checkout)."""
    config = tmp_path / "prepare.yaml"
    config.write_text("keep_hinglish: true\ntasks: 2\nquality:\n  min_words: 2\n", "utf-8")
    done = run_command("prepare", *map(str, real_inputs[:2]), "--output", "prepared",
                       "--config", str(config), "workers=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "every document accounted for (read = kept + dropped): yes" in done.stdout
    assert (tmp_path / "prepared" / "report.md").is_file()
    assert "Launching pipeline" not in done.stderr  # datatrove's logs went to a file
    assert (tmp_path / "prepared/work/logs/console.log").stat().st_size > 0

    done = run_command("tokenizer", "prepared/documents", "--output", "tok",
                       "--vocab-size", "2000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_command("tokenize", "prepared/documents", "--tokenizer", "tok", "--output",
                       "shards", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "shards/manifest.json").read_text())
    kept = json.loads((tmp_path / "prepared/report.json").read_text())["output"]["per_source"]
    assert {k: v["documents"] for k, v in manifest["tokens_per_source"].items()} == \
           {k: v["documents"] for k, v in kept.items()}
    assert manifest["documents"] == sum(v["documents"] for v in kept.values())
    assert all(name.endswith(".jsonl.gz") for name in manifest["source_files"])

    done = run_command("stats", "prepared", "shards", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "## Token shards" in done.stdout and "exact_duplicate" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["prepare", "missing-folder"], "input not found"),
    (["prepare", "x.txt", "tasks=0"], "tasks must be a positive integer"),
    (["prepare", "x.txt", "nonsense=1"], "unknown prepare key"),
    (["prepare"], "no inputs"),
    (["stats", "nowhere"], "no report"),
    (["tokenize", "x.txt", "--tokenizer", "none", "--output", "s"], "tokenizer"),
])
def test_command_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "x.txt").write_text("कुछ पाठ यहाँ है\n", encoding="utf-8")
    done = run_command(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
