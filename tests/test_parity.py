"""hslm-parity: correct exports pass with the metrics filled in; a deliberately broken export
(a wrong RoPE base, a dropped sliding-window key) fails with a non-zero exit."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from hslm.apps.parity import main
from hslm.export.gguf import write_gguf
from hslm.export.hf import save_hf
from hslm.parity import LIMITS, compare_logits, kl_divergence
from hslm.quant.llama_cpp import quantize_gguf
from model_factory import briefly_trained_model

TEXT = "stories_bhaav_sentences.txt"  # the model was trained on another file


@pytest.fixture(scope="module")
def exported(trained_tokenizer, hindi_data_dir, tmp_path_factory):
    model = briefly_trained_model(trained_tokenizer, hindi_data_dir)
    folder = tmp_path_factory.mktemp("parity")
    save_hf(model, folder / "model", tokenizer=trained_tokenizer)
    f32 = write_gguf(model, trained_tokenizer, folder / "model-f32.gguf", "f32")
    q8 = quantize_gguf(f32, folder / "model-q8_0.gguf", "q8_0").path
    return model, folder, f32, q8


def run_parity(model_dir, artifacts, hindi_data_dir, output, capsys) -> tuple[int, dict]:
    argv = [str(model_dir), *map(str, artifacts), "--text", str(hindi_data_dir / TEXT),
            "--windows", "2", "--max-lines", "300", "--output", str(output)]
    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code
    capsys.readouterr()
    report = json.loads((output / "parity.json").read_text()) if code != 2 else {}
    return code, report


def test_compare_logits_by_hand():
    reference = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    same = compare_logits(reference, reference, np.array([0, 1]))
    assert same["top1"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert same["ppl_ratio"] == pytest.approx(1.0)
    swapped = compare_logits(reference, reference[:, ::-1].copy(), np.array([0, 1]))
    assert swapped["top1"] == 0.5
    assert swapped["max_abs_logit"] == 3.0
    assert swapped["kl_mean"] == pytest.approx(kl_divergence(reference, reference[:, ::-1]).mean())


def test_correct_exports_pass(exported, hindi_data_dir, tmp_path, capsys):
    _, folder, f32, q8 = exported
    code, report = run_parity(folder / "model", [f32, q8], hindi_data_dir, tmp_path, capsys)
    assert code == 0, report
    assert report["passed"]
    by_type = {a["type"]: a for a in report["artifacts"]}
    assert set(by_type) == {"f32", "q8_0"}
    for artifact in report["artifacts"]:
        assert artifact["tokenizer_agreement"] == 1.0
        assert artifact["logits"]["positions"] > 500
        assert artifact["limits"] == {k: v for k, v in vars(LIMITS[artifact["type"]]).items()}
    assert by_type["f32"]["logits"]["top1"] == 1.0
    shared = sum(s for s, _ in by_type["f32"]["greedy_agreement"])
    assert shared == sum(n for _, n in by_type["f32"]["greedy_agreement"]) > 0
    assert by_type["q8_0"]["logits"]["kl_mean"] > by_type["f32"]["logits"]["kl_mean"]
    assert "| pass |" in (tmp_path / "parity.md").read_text()


@pytest.mark.parametrize("breakage", ["rope_base", "no_sliding_window"])
def test_broken_export_fails(exported, trained_tokenizer, hindi_data_dir, tmp_path, capsys,
                             monkeypatch, breakage):
    model, folder, _, _ = exported
    if breakage == "rope_base":
        original = gguf.GGUFWriter.add_rope_freq_base
        monkeypatch.setattr(gguf.GGUFWriter, "add_rope_freq_base",
                            lambda self, value: original(self, value * 10))
    else:
        monkeypatch.setattr(gguf.GGUFWriter, "add_sliding_window", lambda self, value: None)
    broken = write_gguf(model, trained_tokenizer, tmp_path / "broken.gguf", "f32")
    monkeypatch.undo()
    code, report = run_parity(folder / "model", [broken], hindi_data_dir, tmp_path / "out",
                              capsys)
    assert code == 1
    assert not report["passed"]
    failures = report["artifacts"][0]["failures"]
    assert any("max |Δlogit|" in f for f in failures), failures


def test_parity_errors_are_one_line(exported, hindi_data_dir, tmp_path, capsys):
    _, folder, f32, _ = exported
    not_a_model = tmp_path / "x.gguf"
    not_a_model.write_bytes(b"nothing here")
    for artifacts, text, message in [([not_a_model], hindi_data_dir / TEXT, "not an exported"),
                                     ([f32], tmp_path / "missing.txt", "input not found")]:
        with pytest.raises(SystemExit) as exit_:
            main([str(folder / "model"), *map(str, artifacts), "--text", str(text),
                  "--output", str(tmp_path)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_onnx_folders_pass_and_are_judged_by_their_type(exported, trained_tokenizer,
                                                          hindi_data_dir, tmp_path, capsys):
    from hslm.export.onnx import export_onnx
    from hslm.quant.onnx import quantize_onnx_folder

    model, folder, _, _ = exported
    fp32 = export_onnx(model, trained_tokenizer, tmp_path / "onnx-fp32").parent
    int8 = quantize_onnx_folder(fp32, tmp_path / "onnx-int8", "int8").parent
    code, report = run_parity(folder / "model", [fp32, int8], hindi_data_dir, tmp_path / "out",
                              capsys)
    assert code == 0, report
    types = [artifact["type"] for artifact in report["artifacts"]]
    assert types == ["fp32", "int8"]
    fp32_result = report["artifacts"][0]
    assert fp32_result["logits"]["max_abs_logit"] < 1e-3
    assert fp32_result["logits"]["top1"] == 1.0
