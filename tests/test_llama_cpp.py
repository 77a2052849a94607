"""GGUF files run by llama.cpp compute what the PyTorch model computes; quantization; decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hslm.config import ModelConfig
from hslm.export.gguf import write_gguf
from hslm.generate import Generation, SamplingParams, generate_ids, stream
from hslm.model import Gemma3
from hslm.quant.llama_cpp import QuantizeError, quantize_gguf
from hslm.runtime.llama_cpp import GGUFLoadError, load_gguf
from hslm.parity import kl_divergence
from model_factory import briefly_trained_model, perturb_norms



@pytest.fixture(scope="module")
def exported(trained_tokenizer, hindi_data_dir, tmp_path_factory):
    model = briefly_trained_model(trained_tokenizer, hindi_data_dir)
    folder = tmp_path_factory.mktemp("gguf")
    path = write_gguf(model, trained_tokenizer, folder / "model-f32.gguf", "f32")
    return model, path


@pytest.fixture(scope="module")
def hindi_ids(trained_tokenizer, hindi_data_dir):
    lines = (hindi_data_dir / "stories_bhaav_sentences.txt").read_text("utf-8").splitlines()
    ids = trained_tokenizer.encode(" ".join(lines[:40]), add_bos=True)
    return ids[:120]  # several windows of the tiny model (16)


def torch_logits(model: Gemma3, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def f32_tolerance(reference: np.ndarray) -> float:
    # llama.cpp's CPU GELU uses an fp16 table: the error scales with the activations.
    return max(5e-3, 2e-4 * np.abs(reference).max())


def test_f32_gguf_matches_pytorch(exported, hindi_ids):
    model, path = exported
    source, _ = load_gguf(path, all_logits=True)
    ours, theirs = torch_logits(model, hindi_ids), source.all_logits(hindi_ids)
    assert np.abs(ours - theirs).max() <= f32_tolerance(ours)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    assert kl_divergence(ours, theirs).mean() < 1e-5


def test_f32_gguf_matches_pytorch_at_hindi_270m_shape(trained_tokenizer, tmp_path):
    torch.manual_seed(1)
    config = ModelConfig.preset("hindi-270m", vocab_size=trained_tokenizer.vocab_size,
                                init_std=0.05)
    model = Gemma3(config).eval()
    perturb_norms(model)
    ids = torch.randint(6, config.vocab_size, (600,), generator=torch.Generator().manual_seed(0))
    ids = [trained_tokenizer.bos_id] + ids.tolist()  # more tokens than the 512 window
    source, _ = load_gguf(write_gguf(model, trained_tokenizer, tmp_path / "m.gguf", "f32"),
                          all_logits=True)
    ours, theirs = torch_logits(model, ids), source.all_logits(ids)
    assert np.abs(ours - theirs).max() <= f32_tolerance(ours)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() == 1.0


# Each key llama.cpp would otherwise default: leaving it out must break the parity test.
DROPPABLE_KEYS = ["add_feed_forward_length", "add_head_count_kv", "add_key_length",
                  "add_value_length", "add_rope_freq_base", "add_rope_freq_base_swa",
                  "add_sliding_window", "add_sliding_window_pattern"]


@pytest.mark.parametrize("writer_method", DROPPABLE_KEYS)
def test_each_layout_key_is_needed(exported, trained_tokenizer, hindi_ids, tmp_path, monkeypatch,
                                   writer_method):
    import gguf

    model, _ = exported
    monkeypatch.setattr(gguf.GGUFWriter, writer_method, lambda self, value: None)
    path = write_gguf(model, trained_tokenizer, tmp_path / "m.gguf", "f32")
    try:
        source, _ = load_gguf(path, all_logits=True)
    except GGUFLoadError:
        return  # llama.cpp refused the file: the key is required
    ours = torch_logits(model, hindi_ids)
    assert np.abs(ours - source.all_logits(hindi_ids)).max() > f32_tolerance(ours)


def test_quantized_files_stay_close(exported, hindi_ids, tmp_path):
    model, path = exported
    ours = torch_logits(model, hindi_ids)
    quality = {}
    for out_type in ("q8_0", "q4_0", "iq4_nl"):
        report = quantize_gguf(path, tmp_path / f"{out_type}.gguf", out_type)
        assert not report.fallbacks
        source, _ = load_gguf(report.path, all_logits=True)
        theirs = source.all_logits(hindi_ids)
        quality[out_type] = {"top1": (ours.argmax(-1) == theirs.argmax(-1)).mean(),
                             "kl": kl_divergence(ours, theirs).mean(),
                             "bits": report.bits_per_weight}
    print(quality)
    # Thresholds from measurement on this briefly trained model (q8_0: top-1 0.97, KL 5e-5;
    # 4-bit: top-1 ~0.94, KL ~1e-3). Its predictions are nearly tied at many positions, so
    # top-1 is lower than on a fully trained model, where the target for q8_0 is >= 99%.
    assert quality["q8_0"]["top1"] >= 0.95
    assert quality["q8_0"]["kl"] < 1e-3
    for four_bit in ("q4_0", "iq4_nl"):
        assert quality[four_bit]["top1"] >= 0.85
        assert quality[four_bit]["kl"] < 0.05
        assert quality[four_bit]["bits"] < quality["q8_0"]["bits"]


def test_k_quant_fallback_is_reported(exported, tmp_path):
    _, path = exported
    report = quantize_gguf(path, tmp_path / "k.gguf", "q4_k_m")
    assert report.fallbacks  # 64-wide rows are not multiples of 256
    assert "fell back" in report.summary()


def test_quantize_errors(exported, tmp_path):
    _, path = exported
    with pytest.raises(QuantizeError, match="unknown quantization"):
        quantize_gguf(path, tmp_path / "x.gguf", "q3_magic")
    with pytest.raises(QuantizeError, match="not found"):
        quantize_gguf(tmp_path / "missing.gguf", tmp_path / "x.gguf", "q8_0")


def test_llama_cpp_tokenizer_agrees_with_sentencepiece(exported, trained_tokenizer, hindi_data_dir):
    _, path = exported
    _, gguf_tokenizer = load_gguf(path)
    lines = (hindi_data_dir / "hinglish_top_code_switched_queries.txt").read_text("utf-8").splitlines()
    for file in sorted(hindi_data_dir.glob("*.txt")):
        lines += file.read_text("utf-8").splitlines()[:1000]
    lines += ["क़लम और क़लम", "ज़िंदगी 2024 में 15,000 रुपये", "a  b\t\tc\n\nd  ", "   leading",
              "Kal 9:30 am ko alarm lagao 🙂👍🏽", "र्‍य क्‌ष", "", "\n",
              "<start_of_turn>user\nनमस्ते<end_of_turn>\n<start_of_turn>model\n", "<bos>शुरू<eos>"]
    mismatches = [line for line in lines
                  if gguf_tokenizer.encode(line, add_bos=True)
                  != trained_tokenizer.encode(line, add_bos=True)]
    assert len(lines) > 20_000
    assert mismatches == []


def test_greedy_generation_matches_pytorch(exported, trained_tokenizer, hindi_ids):
    model, path = exported
    source, _ = load_gguf(path)
    params = SamplingParams(max_new_tokens=24, temperature=0)
    prompt = hindi_ids[:40]
    assert list(generate_ids(source, prompt, params)) == list(generate_ids(model, prompt, params))


def test_long_devanagari_pieces_survive_decoding(exported, trained_tokenizer):
    """llama-cpp-python's detokenizer drops pieces over 32 bytes; hslm's decoding must not."""
    _, path = exported
    source, gguf_tokenizer = load_gguf(path)
    long_ids = [i for i in range(trained_tokenizer.vocab_size)
                if len(trained_tokenizer.piece_bytes(i)) > 32]
    assert long_ids, "the test tokenizer has no piece longer than 32 bytes"
    ids = long_ids[:5] + [trained_tokenizer.encode("और")[0]]
    expected = trained_tokenizer.decode(ids)
    assert gguf_tokenizer.decode(ids) == expected
    assert source.llm.detokenize(ids).decode("utf-8", errors="replace") != expected  # the bug

    # And through generation: streamed text equals decoding the generated ids.
    result = Generation(text="")
    params = SamplingParams(max_new_tokens=30, temperature=1.0, seed=0)
    text = "".join(stream(source, gguf_tokenizer, ids, params, result=result))
    assert text == trained_tokenizer.decode(result.token_ids)


def test_load_errors(tmp_path):
    with pytest.raises(GGUFLoadError, match="not found"):
        load_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(GGUFLoadError):
        load_gguf(bad)


def test_export_command_writes_runnable_gguf(exported, trained_tokenizer, hindi_ids, tmp_path, capsys):
    from hslm.apps.export import main
    from hslm.export.hf import save_hf

    model, _ = exported
    save_hf(model, tmp_path / "model", tokenizer=trained_tokenizer)
    main([str(tmp_path / "model"), "--gguf", "q8_0", "--output", str(tmp_path / "m.gguf")])
    assert "bits per weight" in capsys.readouterr().out
    source, _ = load_gguf(tmp_path / "m.gguf", all_logits=True)
    ours = torch_logits(model, hindi_ids[:60])
    assert kl_divergence(ours, source.all_logits(hindi_ids[:60])).mean() < 2e-3


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nope", "--gguf", "q4"], "model not found"),
    (["{tmp}/model", "--gguf", "f16", "--output", "{tmp}/no/dir/m.gguf"], "does not exist"),
])
def test_export_command_errors(exported, trained_tokenizer, tmp_path, capsys, argv, message):
    from hslm.apps.export import main
    from hslm.export.hf import save_hf

    save_hf(exported[0], tmp_path / "model", tokenizer=trained_tokenizer)
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_export_command_writes_ollama_modelfile(exported, trained_tokenizer, tmp_path, capsys):
    from hslm.apps.export import main
    from hslm.export.hf import save_hf

    save_hf(exported[0], tmp_path / "model", tokenizer=trained_tokenizer)
    main([str(tmp_path / "model"), "--gguf", "f16", "--output", str(tmp_path / "m.gguf"),
          "--ollama"])
    modelfile = (tmp_path / "Modelfile").read_text("utf-8")
    lines = modelfile.splitlines()
    assert lines[0] == "FROM ./m.gguf"
    assert 'PARAMETER stop "<end_of_turn>"' in lines and 'PARAMETER stop "<eos>"' in lines
    assert f"PARAMETER num_ctx {exported[0].config.context_length}" in lines
    template = modelfile[modelfile.index('TEMPLATE """') + 12:modelfile.index('"""\nPARAMETER')]
    assert "<start_of_turn>user\n" in template and "<start_of_turn>model\n" in template
    assert template.count("{{") == template.count("}}")  # a well-formed Go template
