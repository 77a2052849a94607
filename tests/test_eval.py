"""hslm-eval: the lm-eval model class against lm-eval's own Hugging Face backend, every
backend (PyTorch, GGUF, ONNX) on every task type offline, the tasks' scoring through
lm-eval's pipeline with an oracle model, the split rules, Hindi-aware EM/F1, one-line errors."""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402

from hslm.apps.eval import main  # noqa: E402
from hslm.eval import data, metrics  # noqa: E402
from hslm.eval.run import TASK_NAMES, go_offline  # noqa: E402
from model_factory import make_config, make_model  # noqa: E402

PAIRS = [("भारत की राजधानी", "दिल्ली है।"), ("प्रेमचंद ने", " कई उपन्यास लिखे"),
         ("Kal subah", " 7 baje alarm")]


@pytest.fixture(autouse=True)
def offline_data(hindi_data_dir, monkeypatch):
    """The tasks read the shared Hindi folder; nothing may open a network connection."""
    monkeypatch.setenv(data.DATA_ENV, str(hindi_data_dir))
    go_offline()

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during evaluation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def artifacts(trained_tokenizer, tmp_path_factory):
    """A tiny model with the Hindi tokenizer as a model folder, an f32 GGUF and an fp32 ONNX
    folder. Its weights are random but perturbed so that logits are O(1-10) (model_factory):
    these tests compare backends and scoring, not skill, and briefly_trained_model's 300
    steps cost minutes of CPU."""
    from hslm.export.gguf import write_gguf
    from hslm.export.hf import save_hf
    from hslm.export.onnx import export_onnx

    model = make_model(make_config(vocab_size=trained_tokenizer.vocab_size, context_length=256))
    folder = tmp_path_factory.mktemp("eval")
    save_hf(model, folder / "model", tokenizer=trained_tokenizer)
    write_gguf(model, trained_tokenizer, folder / "model-f32.gguf", "f32")
    export_onnx(model, trained_tokenizer, folder / "onnx")
    return {"torch": folder / "model", "llama.cpp": folder / "model-f32.gguf",
            "onnx": folder / "onnx"}


def requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in arguments]


def run_cli(argv, capsys) -> tuple[int, str]:
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_loglikelihoods_equal_lm_evals_hf_backend(artifacts):
    from lm_eval.models.huggingface import HFLM

    from hslm.eval.lm import HslmLM

    ours = HslmLM(str(artifacts["torch"]))
    theirs = HFLM(pretrained=str(artifacts["torch"]), dtype="float32", device="cpu",
                  batch_size=1, add_bos_token=True)
    pairs = PAIRS + [("", "भारत की राजधानी दिल्ली है।")]
    mine = ours.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    reference = theirs.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    for (logprob, greedy), (expected, expected_greedy) in zip(mine, reference):
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy
    assert all(logprob < 0 for logprob, _ in mine)
    # A text that fits the context is one rolling window: its log-likelihood after <bos>.
    text = pairs[-1][1]
    (rolling,) = ours.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]),
                                            disable_tqdm=True)
    assert rolling == pytest.approx(reference[-1][0], abs=1e-4)
    # A longer one is scored in windows of the context (lm-eval's rule: the first window
    # after <bos>, each next one predicts up to a context's worth with what fits before it).
    ours.max_length = 4
    (windowed,) = ours.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]),
                                             disable_tqdm=True)
    ids = ours.tok_encode(text, add_special_tokens=False)
    assert len(ids) == 6
    expected = ours._score([ours.prefix_token_id], ids[:4])[0] + ours._score(ids[1:4], ids[4:])[0]
    assert windowed == pytest.approx(expected, abs=1e-6) and windowed != pytest.approx(rolling)


def test_every_backend_runs_every_task_type(artifacts, tmp_path, capsys):
    tasks = ["hindi_bpb_hinglish", "hindi_cloze", "xquad_hi", "indicquest_hi",
             "hindi_agent_json"]
    code, err = run_cli([*artifacts.values(), "--tasks", *tasks, "--limit", "2",
                         "--output", tmp_path], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["backend"] for r in results] == ["torch", "llama.cpp", "onnx"]
    torch_scores = results[0]["tasks"]
    for result in results:
        scores = result["tasks"]
        assert set(scores) == set(tasks)
        # f32 exports compute what PyTorch computes: the same bits per byte and choices.
        assert scores["hindi_bpb_hinglish"]["bits_per_byte"] == pytest.approx(
            torch_scores["hindi_bpb_hinglish"]["bits_per_byte"], rel=1e-3)
        assert scores["hindi_cloze"]["acc"] == torch_scores["hindi_cloze"]["acc"]
        assert 0 < scores["hindi_bpb_hinglish"]["bits_per_byte"] < 8
        # Guided decoding: every answer is an object under the schema, on every backend.
        assert scores["hindi_agent_json"]["valid"] == 1.0
        assert 0 <= scores["xquad_hi"]["f1"] <= 1
    assert "hindi_agent_json (exact)" in (tmp_path / "results.md").read_text()


def test_backends_generate_the_same_greedy_answers(artifacts):
    from hslm.eval.lm import HslmLM

    options = {"until": ["\n"], "max_gen_toks": 10}
    answers = {backend: [HslmLM(str(path)).generate(prompt, dict(options, chat=chat))
                         for prompt, chat in ((PAIRS[0][0], False), (PAIRS[1][0], True))]
               for backend, path in artifacts.items()}
    assert answers["llama.cpp"] == answers["torch"] == answers["onnx"]
    assert any(answers["torch"])


class OracleLM(LM):
    """Knows every gold answer: a perfect model must score 100% on every task's metrics."""

    def __init__(self):
        super().__init__()
        self.answers = {f"{r['context']}\n\n{r['question']}": r["answer"]
                        for r in data.xquad_split("test")}
        self.answers |= {r["instruction"]: r["response"]
                         for r in data.read_jsonl(data.INDICQUEST_FILE)}
        self.answers |= {item["prompt"]: json.dumps(item["label"], ensure_ascii=False)
                         for item in data.agent_items("test")}
        self.cloze = {item["prefix"]: item["choices"][item["answer"]]
                      for item in data.cloze_items()}

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(0.0, True) if self.cloze[context] == continuation.strip() else (-10.0, False)
                for context, continuation in (r.args for r in requests)]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return [-1.0 for _ in requests]

    def generate_until(self, requests, disable_tqdm=False):
        return [self.answers[context] for context, _ in (r.args for r in requests)]


def test_an_oracle_scores_perfectly_through_lm_evals_pipeline():
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from hslm.eval.run import TASKS_DIR

    tasks = ["hindi_cloze", "xquad_hi", "indicquest_hi", "hindi_agent_json"]
    output = simple_evaluate(model=OracleLM(), tasks=tasks, limit=20, bootstrap_iters=0,
                             task_manager=TaskManager(include_path=str(TASKS_DIR),
                                                      include_defaults=False))
    results = output["results"]
    assert results["hindi_cloze"]["acc,none"] == 1.0
    assert results["xquad_hi"]["exact_match,none"] == results["xquad_hi"]["f1,none"] == 1.0
    assert results["indicquest_hi"]["f1,none"] == 1.0
    for metric in ("valid", "exact", "intent_accuracy", "time_accuracy", "day_accuracy"):
        assert results["hindi_agent_json"][f"{metric},none"] == 1.0


@pytest.mark.parametrize("prediction, reference, em, f1", [
    ("दिल्ली", "दिल्ली।", 1.0, 1.0),  # a danda is punctuation
    ("ज़िला", "ज\u093c\u093fला", 1.0, 1.0),  # a decomposed nukta is the same letter
    ("नई दिल्ली शहर", "नई दिल्ली", 0.0, 0.8),  # precision 2/3, recall 1
    ("कि", "की", 0.0, 0.0),  # vowel signs are part of the word
    ("  Mumbai, India ", "mumbai india", 1.0, 1.0),  # Latin case and commas
    ("", "दिल्ली", 0.0, 0.0),
])
def test_exact_match_and_f1_on_hindi(prediction, reference, em, f1):
    assert metrics.exact_match(prediction, reference) == em
    assert metrics.token_f1(prediction, reference) == pytest.approx(f1)


def test_agent_scores_need_a_valid_object():
    label = {"intent": "alarm", "time": "7 baje", "day": "tomorrow"}
    perfect = metrics.agent_scores(json.dumps(label), label, data.AGENT_SCHEMA)
    assert perfect == {"valid": 1.0, "exact": 1.0, "intent_accuracy": 1.0,
                       "time_accuracy": 1.0, "day_accuracy": 1.0}
    wrong_day = metrics.agent_scores(json.dumps({**label, "day": "today"}), label,
                                     data.AGENT_SCHEMA)
    assert (wrong_day["valid"], wrong_day["exact"], wrong_day["day_accuracy"],
            wrong_day["intent_accuracy"]) == (1.0, 0.0, 0.0, 1.0)
    for broken in ('{"intent": "alarm"', json.dumps({**label, "intent": "cooking"}),
                   json.dumps({**label, "extra": 1})):
        scores = metrics.agent_scores(broken, label, data.AGENT_SCHEMA)
        assert scores["valid"] == scores["intent_accuracy"] == 0.0


def test_agent_labels_by_rule():
    assert data.agent_label("kal subah 7 baje ka alarm set karo") == \
        {"intent": "alarm", "time": "7 baje", "day": "tomorrow"}
    assert data.agent_label("mujhe Friday ko 4:30 pm par dawai ki yaad dilao") == \
        {"intent": "reminder", "time": "4:30 pm", "day": "friday"}
    assert data.agent_label("aaj mausam kaisa hai") == \
        {"intent": "weather", "time": "", "day": "today"}
    assert data.agent_label("alarm ke baad timer bhi lagao") is None  # two intents
    assert data.agent_label("namaste") is None
    assert len(data.agent_items("test")) >= 200


def test_splits_keep_scored_items_out_of_training(hindi_data_dir, tmp_path):
    test, train = data.xquad_split("test"), data.xquad_split("train")
    assert test and train
    assert not {r["title"] for r in test} & {r["title"] for r in train}
    data.write_sft_data(tmp_path / "sft")
    data.write_pretraining_text(tmp_path / "text")
    sft = [json.loads(line) for line in
           (tmp_path / "sft" / "xquad_hi_train.jsonl").read_text("utf-8").splitlines()]
    assert len(sft) == len(train)
    assert not {r["question"] for r in sft} & {r["question"] for r in test}
    agent_sft = {json.loads(line)["instruction"].lower() for line in
                 (tmp_path / "sft" / "hindi_agent_train.jsonl").read_text("utf-8").splitlines()}
    assert len(agent_sft) > 1000
    assert not agent_sft & {item["prompt"].lower() for item in data.agent_items("test")}
    contexts = {r["context"] for r in test}
    for path in sorted(hindi_data_dir.glob("*.txt")):
        lines = data.read_text_lines(path.name)
        written = (tmp_path / "text" / path.name).read_text("utf-8").splitlines()
        start = data.held_out_start(len(lines))
        assert 0 < start < len(lines)
        assert written == [line for line in lines[:start] if line not in contexts]
    encyclopedic = set((tmp_path / "text" / data.ENCYCLOPEDIC_FILE).read_text("utf-8")
                       .splitlines())
    assert data.held_out_lines("encyclopedic")
    assert not encyclopedic & set(data.held_out_lines("encyclopedic"))
    assert len(data.cloze_items()) >= 200


def test_cli_errors_are_one_line(artifacts, tmp_path, capsys):
    cases = [
        ([artifacts["torch"], "--tasks", "mmlu", "--output", tmp_path], "unknown task 'mmlu'"),
        ([tmp_path / "missing.gguf", "--tasks", "hindi_cloze", "--output", tmp_path],
         "artifact not found"),
        ([artifacts["torch"], "--tasks", "hindi_cloze", "--data", tmp_path / "nowhere",
          "--output", tmp_path], "--data: no such folder"),
        ([artifacts["torch"], "--tasks", "hindi_cloze", "--limit", "0", "--output", tmp_path],
         "--limit must be >= 1"),
        ([tmp_path, "--tasks", "hindi_cloze", "--output", tmp_path / "out"], "error: "),
    ]
    for argv, message in cases:
        code, err = run_cli(argv, capsys)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and message in errors[0], err
        assert "Traceback" not in err


def test_task_names_are_the_documented_ones():
    assert set(TASK_NAMES) == {"hindi_bpb_news", "hindi_bpb_literature",
                               "hindi_bpb_encyclopedic", "hindi_bpb_hinglish", "xquad_hi",
                               "indicquest_hi", "hindi_agent_json", "hindi_cloze"}


def test_eval_report_joins_scores_with_costs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    evals = [{"artifact": f"/runs/{name}", "backend": backend, "seconds": 1.0, "limit": 50,
              "tasks": {"hindi_cloze": {"acc": acc}, "hindi_bpb_news": {"bits_per_byte": bpb}}}
             for name, backend, acc, bpb in (("model", "torch", 0.5, 2.0),
                                             ("model-q4.gguf", "llama.cpp", 0.25, 2.5))]
    derived = {"ttft_ms": {"p50": 8.0}, "tpot_ms": {"p50": 0.5}, "tg_tokens_per_s": [900.0, 1.0],
               "bytes_per_token": 660_000, "joules_per_token": "unavailable"}
    bench = {"cases": [{"path": "/elsewhere/model-q4.gguf", "name": "llama.cpp q4",
                        "peak_rss_mb": 300.0, "derived": derived}]}
    (tmp_path / "results.json").write_text(json.dumps(evals))
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    script = Path(__file__).parent.parent / "benchmarks" / "eval_report.py"
    subprocess.run([sys.executable, script, "--eval", tmp_path / "results.json", "--bench",
                    tmp_path / "bench.json", "--output", tmp_path / "report"], check=True,
                   capture_output=True)
    rows = {line.split(" | ")[0]: line for line in
            (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("| model")}
    assert "0.250 (-0.250)" in rows["| model-q4.gguf"] and "2.500 (+0.500)" in rows["| model-q4.gguf"]
    assert "llama.cpp q4 | 8.0 | 0.50 | 900 | 300 | 0.66 | unavailable" in rows["| model-q4.gguf"]
    assert "not benchmarked" in rows["| model"]
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000


def test_without_lm_eval_the_command_names_the_extra(monkeypatch, tmp_path, capsys):
    from test_optional_packages import hide

    hide(monkeypatch, "lm_eval")
    code, err = run_cli([tmp_path, "--tasks", "hindi_cloze", "--output", tmp_path / "out"],
                        capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "pip install 'hslm[eval]'" in errors[0], err
