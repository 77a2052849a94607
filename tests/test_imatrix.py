"""GGUF quantization with an importance matrix: llama.cpp's llama-imatrix on Hindi calibration
text, then llama-quantize --imatrix (`hslm-export MODEL --gguf TYPE --calibration TEXT...`).

The test model is the briefly trained tiny model with attention output and FFN down matrices
256 wide on their input side, like hindi-270m's (1,024 and 2,048): those get the 3- and 2-bit
types, while every matrix reading the 64-wide hidden state falls back to IQ4_NL as the 640-wide
ones do."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from hslm import native
from hslm.config import ModelConfig
from hslm.apps.export import main
from hslm.export.gguf import write_gguf
from hslm.export.hf import save_hf
from hslm.model import Gemma3
from hslm.parity import compare_logits, greedy_ids, validation_windows
from hslm.quant.imatrix import calibration_text, compute_imatrix
from hslm.quant.llama_cpp import LOW_BIT_TYPES, QuantizeError, quantize_gguf
from hslm.runtime.llama_cpp import load_gguf
from model_factory import briefly_trained_model, single_thread  # noqa: F401 (autouse)

CALIBRATION = "news_headlines_bbc_hindi.txt"  # the model was trained on stories
HELD_OUT = "stories_bhaav_sentences.txt"
CALIBRATION_LINES = 1_500  # about 60 chunks of 256 tokens
WINDOWS = 6
# 256-wide inputs for attn_output (4 heads x 64) and ffn_down
SHAPE = {"head_dim": 64, "query_pre_attn_scalar": 64, "ffn_size": 256}
LOW_BIT_MATRICES = ("attn_output", "ffn_down")


def layer_matrices(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors
            if t.name.startswith("blk.") and len(t.shape) == 2}


@pytest.fixture(scope="module")
def model(trained_tokenizer, hindi_data_dir):
    return briefly_trained_model(trained_tokenizer, hindi_data_dir, **SHAPE)


@pytest.fixture(scope="module")
def calibration_file(hindi_data_dir, tmp_path_factory) -> Path:
    lines = (hindi_data_dir / CALIBRATION).read_text("utf-8").splitlines()[:CALIBRATION_LINES]
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


@pytest.fixture(scope="module")
def files(native_programs, model, trained_tokenizer, calibration_file, tmp_path_factory):
    """The f32 GGUF and its importance matrix (one thread: llama.cpp's spinning thread pool
    is many times slower on a busy 2-core machine)."""
    folder = tmp_path_factory.mktemp("imatrix")
    f32 = write_gguf(model, trained_tokenizer, folder / "model-f32.gguf", "f32")
    imatrix = compute_imatrix(f32, calibration_text([calibration_file]), trained_tokenizer,
                              folder / "imatrix.gguf", model.config.context_length, threads=1,
                              say=lambda line: None)
    q4 = quantize_gguf(f32, folder / "model-q4.gguf", "q4", threads=1, imatrix=imatrix,
                       say=lambda line: None)
    return {"folder": folder, "f32": f32, "imatrix": imatrix, "q4": q4}


@pytest.fixture(scope="module")
def reference(model, trained_tokenizer, hindi_data_dir):
    """PyTorch's logits on held-out text windows: (windows, logits, next tokens)."""
    lines = (hindi_data_dir / HELD_OUT).read_text("utf-8").splitlines()[:600]
    windows = validation_windows(trained_tokenizer, lines, model.config.context_length, WINDOWS)
    with torch.no_grad():
        logits = np.concatenate([model(torch.tensor([w]))[0, :-1].numpy() for w in windows])
    return windows, logits, np.concatenate([w[1:] for w in windows])


def quality(path: Path, reference) -> dict:
    windows, logits, targets = reference
    source, _ = load_gguf(path, threads=1, all_logits=True)
    return compare_logits(logits, np.concatenate([source.all_logits(w)[:-1] for w in windows]),
                          targets)


def test_imatrix_is_llama_cpps_format_over_every_layer_matrix(files, model):
    reader = gguf.GGUFReader(files["imatrix"])
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.type"] == "imatrix"
    assert fields["imatrix.chunk_size"] == model.config.context_length
    assert fields["imatrix.chunk_count"] >= 50
    sums = {t.name.removesuffix(".in_sum2"): t for t in reader.tensors
            if t.name.endswith(".in_sum2")}
    matrices = layer_matrices(files["f32"])
    assert set(sums) == set(matrices)
    for name, tensor in sums.items():
        # one sum of squared activations per input column, all seen
        assert tensor.n_elements == matrices[name].shape[0]
        assert np.all(np.isfinite(tensor.data)) and np.all(tensor.data > 0)


@pytest.mark.parametrize("out_type", ["q4", "q4_0"])
def test_imatrix_changes_the_weights_and_does_not_lose_quality(files, reference, out_type):
    """Same f32 source with and without the importance matrix: different layer bytes, and the
    calibrated file's mean KL against PyTorch on held-out text is no larger."""
    folder = files["folder"]
    plain = quantize_gguf(files["f32"], folder / f"plain-{out_type}.gguf", out_type, threads=1)
    calibrated = quantize_gguf(files["f32"], folder / f"calibrated-{out_type}.gguf", out_type,
                               threads=1, imatrix=files["imatrix"], say=lambda line: None)
    assert calibrated.bits_per_weight == plain.bits_per_weight  # same types, other values
    before, after = layer_matrices(plain.path), layer_matrices(calibrated.path)
    changed = [name for name in before
               if before[name].tensor_type == after[name].tensor_type
               and bytes(before[name].data) != bytes(after[name].data)]
    assert len(changed) == len(before)
    plain_quality, calibrated_quality = quality(plain.path, reference), \
        quality(calibrated.path, reference)
    print(out_type, "KL without", plain_quality["kl_mean"], "with", calibrated_quality["kl_mean"])
    assert calibrated_quality["kl_mean"] <= plain_quality["kl_mean"]


@pytest.mark.parametrize("out_type", LOW_BIT_TYPES)
def test_low_bit_types_load_and_generate(files, reference, trained_tokenizer, out_type):
    report = quantize_gguf(files["f32"], files["folder"] / f"model-{out_type}.gguf", out_type,
                           threads=1, imatrix=files["imatrix"], say=lambda line: None)
    # The 256-wide matrices are below 4 bits; those reading the hidden state are IQ4_NL.
    for name, tensor in layer_matrices(report.path).items():
        bits = tensor.n_bytes * 8 / tensor.n_elements
        if name.split(".")[2] in LOW_BIT_MATRICES:
            assert bits < 4.0, (name, tensor.tensor_type.name)
        elif name.split(".")[2] != "attn_v":  # llama.cpp gives attn_v more bits
            assert tensor.tensor_type == gguf.GGMLQuantizationType.IQ4_NL
    assert report.bits_per_weight < files["q4"].bits_per_weight
    measured = quality(report.path, reference)
    assert np.isfinite(measured["kl_mean"]) and measured["top1"] > 0.3
    source, tokenizer = load_gguf(report.path, threads=1)
    windows = reference[0]
    tokens = greedy_ids(source, windows[0][:16], 12)
    assert len(tokens) > 0 and all(0 <= t < trained_tokenizer.vocab_size for t in tokens)


def test_corrupt_or_foreign_imatrix_is_refused(files, model, trained_tokenizer, tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(QuantizeError, match="llama-quantize failed"):
        quantize_gguf(files["f32"], tmp_path / "a.gguf", "q4", threads=1, imatrix=corrupt,
                      say=lambda line: None)
    # a model of another shape (the tiny preset's FFN of 192) than the importance matrix's
    config = ModelConfig.preset("tiny", vocab_size=trained_tokenizer.vocab_size)
    foreign = write_gguf(Gemma3(config).eval(), trained_tokenizer, tmp_path / "foreign.gguf",
                         "f32")
    with pytest.raises(QuantizeError, match="llama-quantize failed"):
        quantize_gguf(foreign, tmp_path / "b.gguf", "q4", threads=1, imatrix=files["imatrix"],
                      say=lambda line: None)


@pytest.fixture(scope="module")
def model_folder(model, trained_tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "model"
    save_hf(model, folder, tokenizer=trained_tokenizer)
    return folder


def test_export_command_calibrates(native_programs, model_folder, calibration_file, files,
                                   tmp_path, capsys):
    """--calibration computes the importance matrix the library does (--imatrix-out keeps it)
    and quantizes with it; --imatrix reuses it to the same bytes."""
    main([str(model_folder), "--gguf", "iq2_xs", "--calibration", str(calibration_file),
          "--output", str(tmp_path / "a.gguf"), "--imatrix-out", str(tmp_path / "kept.gguf"),
          "--threads", "1"])
    captured = capsys.readouterr()
    assert "iq2_xs" in captured.out and "bits per weight" in captured.out
    assert "llama-imatrix: computing over" in captured.err
    kept = gguf.GGUFReader(tmp_path / "kept.gguf")
    expected = gguf.GGUFReader(files["imatrix"])
    assert {t.name: bytes(t.data) for t in kept.tensors} == \
        {t.name: bytes(t.data) for t in expected.tensors}
    main([str(model_folder), "--gguf", "iq2_xs", "--imatrix", str(tmp_path / "kept.gguf"),
          "--output", str(tmp_path / "b.gguf"), "--threads", "1"])
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--gguf", "iq3_xxs"], "iq3_xxs needs an importance matrix: give --calibration"),
    (["--gguf", "iq2_xxs", "--calibration", "{tmp}/missing.txt"],
     "calibration text: file not found: {tmp}/missing.txt"),
    (["--gguf", "q4", "--calibration", "{tmp}/empty.txt"], "calibration text: {tmp}/empty.txt is empty"),
    (["--gguf", "q4", "--calibration", "{tmp}/short.txt"], "the calibration text is too short"),
    (["--gguf", "f16", "--calibration", "{tmp}/short.txt"], "f16 does not use an importance matrix"),
    (["--gguf", "q8_0", "--calibration", "{tmp}/short.txt"], "q8_0 does not use an importance"),
    (["--gguf", "q4", "--imatrix", "{tmp}/missing.gguf"], "importance matrix not found"),
    (["--gguf", "q4", "--imatrix-out", "{tmp}/m.gguf"], "--imatrix-out keeps"),
])
def test_export_command_errors_are_one_line(native_programs, model_folder, tmp_path, capsys,
                                            argv, message):
    (tmp_path / "empty.txt").write_text("\n  \n", "utf-8")
    (tmp_path / "short.txt").write_text("भारत की राजधानी नई दिल्ली है।\n", "utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main([str(model_folder), *[a.format(tmp=tmp_path) for a in argv],
              "--output", str(tmp_path / "out.gguf"), "--threads", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(tmp=tmp_path) in last
    assert not (tmp_path / "out.gguf").exists()


def test_unbuilt_programs_are_named(model_folder, calibration_file, monkeypatch, tmp_path,
                                    capsys):
    monkeypatch.setenv("HSLM_LLAMA_CPP_DIR", str(tmp_path / "nothing-built"))
    assert native.programs() is None
    with pytest.raises(SystemExit):
        main([str(model_folder), "--gguf", "q4", "--calibration", str(calibration_file)])
    assert capsys.readouterr().err.strip() == (
        "error: an importance matrix needs llama.cpp's llama-imatrix and llama-quantize: build "
        "them with hslm-native build")
