"""hslm-bench: a real (short) run over a PyTorch folder and a GGUF file writes a report that
validates against its schema, with every sample, derived figures that follow from them, and
energy reported as unavailable (never guessed) without counters; bad input is refused."""

from __future__ import annotations

import json

import jsonschema
import pytest

from hslm.apps.bench import main
from hslm.bench.machine import EnergyMeter
from hslm.bench.report import SCHEMA, derive
from hslm.bench.run import plan_case, size_model_case
from hslm.export.gguf import write_gguf
from hslm.export.hf import save_hf
from hslm.export.onnx import export_onnx
from hslm.quant.llama_cpp import quantize_gguf
from hslm.quant.onnx import quantize_onnx_folder
from model_factory import make_config, make_model

REPEAT = 2


@pytest.fixture(scope="module")
def artifacts(trained_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    model = make_model(make_config(vocab_size=trained_tokenizer.vocab_size, context_length=512))
    save_hf(model, folder / "model", tokenizer=trained_tokenizer)
    f16 = write_gguf(model, trained_tokenizer, folder / "model-f16.gguf", "f16")
    q8 = quantize_gguf(f16, folder / "model-q8_0.gguf", "q8_0").path
    onnx_fp32 = export_onnx(model, trained_tokenizer, folder / "onnx-fp32").parent
    onnx_int4 = quantize_onnx_folder(onnx_fp32, folder / "onnx-int4", "int4").parent
    return folder, f16, q8, onnx_fp32, onnx_int4


def run_bench(argv: list[str], capsys) -> tuple[int, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err


def test_report_of_a_short_run(artifacts, tmp_path, capsys):
    folder, f16, q8, _, onnx_int4 = artifacts
    output = tmp_path / "report"
    code, err = run_bench([str(folder / "model"), str(f16), str(q8), str(onnx_int4),
                           "--threads", "1",
                           "--repeat", str(REPEAT), "--warmup", "1", "--n-prompt", "32",
                           "--n-gen", "8", "--output", str(output)], capsys)
    assert code == 0, err
    report = json.loads((output / "bench.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert json.loads((output / "bench.schema.json").read_text()) == SCHEMA
    assert [(c["backend"], c["type"]) for c in report["cases"]] == [
        ("torch", "fp32"), ("llama.cpp", "f16"), ("llama.cpp", "q8_0"), ("onnx", "int4")]
    for case in report["cases"]:
        assert len(case["pp"]["tokens_per_s"]) == REPEAT
        assert len(case["tg"]["tokens_per_s"]) == REPEAT
        assert len(case["tg"]["step_s"]) == REPEAT * 8
        assert case["agent"]["prompt_tokens"] >= 200
        assert all(1 <= n <= 48 for n in case["agent"]["answer_tokens"])
        assert case["derived"] == derive(case, report["bandwidth_gbs"])
    torch_case, f16_case, q8_case, int4_case = report["cases"]
    # Bytes per token come from the files' tensors: q8_0 reads about half of f16.
    assert 0.45 < q8_case["weight_bytes"] / f16_case["weight_bytes"] < 0.6
    assert f16_case["weight_bytes"] == pytest.approx(torch_case["weight_bytes"] / 2, rel=0.05)
    # int4 keeps this head-heavy model's output head at 8 bits (fp32 scales): near q8_0
    assert 0.25 < int4_case["weight_bytes"] / torch_case["weight_bytes"] < 0.3
    if not EnergyMeter().available:
        assert all(c["tg"]["joules_per_token"] == "unavailable" for c in report["cases"])
        assert "Energy: unavailable" in (output / "bench.md").read_text()
    markdown = (output / "bench.md").read_text()
    assert all(c["name"] in markdown for c in report["cases"])
    assert (output / "tokens_per_s.png").stat().st_size > 0
    assert (output / "roofline.png").stat().st_size > 0


def test_derived_figures_by_hand():
    case = {"pp": {"tokens_per_s": [100.0, 300.0]},
            "tg": {"tokens_per_s": [10.0, 30.0], "step_s": [0.01, 0.02, 0.03, 0.04],
                   "joules_per_token": "unavailable"},
            "weight_bytes": 2_000_000_000, "agent": None}
    derived = derive(case, bandwidth_gbs=80.0)
    assert derived["tg_tokens_per_s"][0] == 20.0
    assert derived["pp_tokens_per_s"][0] == 200.0
    assert derived["roofline_efficiency"] == pytest.approx(20 * 2 / 80)
    assert derived["tpot_ms"]["p50"] == pytest.approx(25.0)
    assert derived["joules_per_token"] == "unavailable"
    assert "joules_per_token_estimate" not in derived
    estimated = derive(case, bandwidth_gbs=80.0, assumed_watts=15.0)
    assert estimated["joules_per_token_estimate"]["value"][0] == pytest.approx((1.5 + 0.5) / 2)


def test_size_model_case_is_a_q4_gguf_of_the_preset(trained_tokenizer_dir, tmp_path):
    case = size_model_case("tiny", trained_tokenizer_dir, tmp_path)
    assert case.backend == "llama.cpp" and case.type == "q4"
    assert case.path.is_file() and "tiny" in case.label
    # 4-bit weights: well under a third of the f32 parameters' bytes.
    assert case.weight_bytes < case.parameters * 4 / 3
    assert not list(tmp_path.glob("*f16.gguf"))  # the intermediate file is removed


def test_onnx_folders_are_typed_and_sized_from_the_graph(artifacts):
    _, _, _, onnx_fp32, onnx_int4 = artifacts
    (fp32,), (int4,) = plan_case(onnx_fp32), plan_case(onnx_int4 / "model.onnx")
    assert (fp32.backend, fp32.type, int4.type) == ("onnx", "fp32", "int4")
    assert int4.path == onnx_int4
    # int4 reads its 4-bit layers and the 8-bit output head, whose bytes the embedding lookup
    # shares (counted once): this model is mostly head, so 27% of fp32
    assert int4.weight_bytes < 0.3 * fp32.weight_bytes


def test_bad_input_is_refused_with_one_line(artifacts, tmp_path, capsys):
    folder, f16, *_ = artifacts
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    truncated = tmp_path / "broken.gguf"
    truncated.write_bytes(f16.read_bytes()[:1000])
    for argv, message in [
        ([str(tmp_path / "missing.gguf")], "not found"),
        ([str(text)], "neither a GGUF file"),
        ([str(truncated)], "broken.gguf"),
        (["--sizes", "hindi-1b"], "--sizes needs --tokenizer"),
        ([], "nothing to benchmark"),
        ([str(f16), "--repeat", "0"], "must be >= 1"),
        ([str(f16), "--assume-watts", "-3"], "must be > 0"),
    ]:
        code, err = run_bench([*argv, "--output", str(tmp_path / "out")], capsys)
        assert code == 2, (argv, err)
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(ValueError, match="not found"):
        plan_case(tmp_path / "nothing")
