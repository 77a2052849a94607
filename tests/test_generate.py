"""Generation: sampling semantics vs transformers, greedy parity, seeds, streaming, stops, CLI."""

from __future__ import annotations

import pytest
import torch

from hslm.config import ModelConfig
from hslm.export.hf import save_hf
from hslm.generate import (Generation, SamplingParams, TextStream, generate, generate_ids,
                           process_logits, stream)
from hslm.model import Gemma3
from model_factory import perturb_norms


def make_model(vocab_size: int, seed: int = 0) -> Gemma3:
    """A tiny model with weights large enough that its argmax depends on the context."""
    torch.manual_seed(seed)
    model = Gemma3(ModelConfig.preset("tiny", vocab_size=vocab_size, init_std=0.15)).eval()
    perturb_norms(model)
    return model


# ---------------------------------------------------------------- sampling semantics
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.3, top_k=20),
    SamplingParams(temperature=0.9, top_p=0.8),
    SamplingParams(temperature=1.0, min_p=0.05),
    SamplingParams(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3),
    SamplingParams(temperature=0, repetition_penalty=1.5),
])
def test_process_logits_matches_transformers(params):
    from transformers.generation.logits_process import (
        LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(1)
    logits = torch.randn(1000) * 4
    seen = torch.randint(0, 1000, (30,))
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.greedy:
        processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1:
            processors.append(TopPLogitsWarper(params.top_p))
        if params.min_p:
            processors.append(MinPLogitsWarper(params.min_p))
    expected = processors(seen[None], logits[None].clone())[0]
    ours = process_logits(logits, params, seen)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(ours[finite], expected[finite], atol=1e-6)
    assert finite.sum() >= 1


def test_sampling_params_are_validated():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2},
                {"min_p": 2}, {"repetition_penalty": 0}, {"max_new_tokens": -1}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# ---------------------------------------------------------------- generation
def test_greedy_matches_transformers_generate(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_model(vocab_size=300)
    save_hf(model, tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.manual_seed(3)
    prompt = torch.randint(6, 300, (40,)).tolist()  # longer than the tiny model's window (16)
    ours = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=32, temperature=0)))
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32,
                                    do_sample=False)[0, len(prompt):].tolist()
    assert len(ours) == 32
    assert ours == theirs
    assert len(set(ours)) > 1  # a degenerate model would make the comparison meaningless


def test_seed_makes_sampling_repeatable():
    model = make_model(vocab_size=300)
    prompt = list(range(10, 30))
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    first = list(generate_ids(model, prompt, params))
    again = list(generate_ids(model, prompt, params))
    other = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=24, seed=8)))
    assert first == again
    assert first != other


def test_stop_token_ends_generation():
    model = make_model(vocab_size=300)
    prompt = list(range(10, 30))
    free = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=12, temperature=0)))
    stop_at = free[5]
    stopped = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=12, temperature=0),
                                stop_token_ids=[stop_at]))
    assert stopped == free[:free.index(stop_at)]


def test_prompt_errors_are_clear():
    model = make_model(vocab_size=300)
    with pytest.raises(ValueError, match="empty"):
        list(generate_ids(model, [], SamplingParams()))
    with pytest.raises(ValueError, match="context"):
        list(generate_ids(model, [7] * model.config.context_length, SamplingParams()))


def test_generation_stops_at_context_length():
    model = make_model(vocab_size=300)
    limit = model.config.context_length
    ids = list(generate_ids(model, [7] * (limit - 5), SamplingParams(max_new_tokens=50,
                                                                      temperature=0)))
    assert len(ids) == 5


# ---------------------------------------------------------------- text streaming
class ByteTokenizer:
    """Stands in for a tokenizer whose tokens are single bytes (like byte-fallback pieces)."""

    eos_id, end_of_turn_id = 1, 5

    def piece_bytes(self, token_id: int) -> bytes:
        return bytes([token_id - 6]) if token_id >= 6 else b""


def test_text_stream_never_splits_a_character():
    text = "नमस्ते दुनिया, क़लम और ज़िंदगी 🙂"
    ids = [b + 6 for b in text.encode("utf-8")]
    pieces = []
    text_stream = TextStream(ByteTokenizer())
    for token in ids:
        piece = text_stream.push(token)
        if piece:
            pieces.append(piece)
    pieces.append(text_stream.finish())
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(pieces) > 10  # it did stream, not buffer everything


def test_text_stream_cuts_stop_string_and_holds_partial_matches():
    text_stream = TextStream(ByteTokenizer(), stop_strings=["।।"])
    out = ""
    for token in [b + 6 for b in "राम आए। फिर।।गए".encode("utf-8")]:
        out += text_stream.push(token)
        if text_stream.stopped:
            break
    assert text_stream.stopped
    assert out == "राम आए। फिर"


def test_stream_with_real_tokenizer(trained_tokenizer):
    tokenizer = trained_tokenizer
    model = make_model(vocab_size=tokenizer.vocab_size)
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
    result = Generation(text="")
    pieces = list(stream(model, tokenizer, "भारत की राजधानी", params, result=result))
    assert "".join(pieces) == result.text == tokenizer.decode(result.token_ids)
    assert result.finish_reason in ("stop", "length")
    again = generate(model, tokenizer, "भारत की राजधानी", params)
    assert again.text == result.text and again.token_ids == result.token_ids


def test_stop_string_with_real_tokenizer(trained_tokenizer):
    tokenizer = trained_tokenizer
    model = make_model(vocab_size=tokenizer.vocab_size)
    free = generate(model, tokenizer, "कहानी", SamplingParams(max_new_tokens=30, temperature=0))
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = generate(model, tokenizer, "कहानी",
                   SamplingParams(max_new_tokens=30, temperature=0, stop_strings=[stop]))
    assert cut.text == free.text[:free.text.find(stop)]
    assert cut.finish_reason == "stop"


# ---------------------------------------------------------------- command line
def test_generate_cli_streams_text(trained_tokenizer, tmp_path, capsys):
    from hslm.apps.generate import main

    model = make_model(vocab_size=trained_tokenizer.vocab_size)
    save_hf(model, tmp_path / "model", tokenizer=trained_tokenizer)
    main([str(tmp_path / "model"), "--prompt", "नमस्ते", "--max-new-tokens", "12", "--seed", "1"])
    captured = capsys.readouterr()
    expected = generate(model, trained_tokenizer, "नमस्ते",
                        SamplingParams(max_new_tokens=12, seed=1, temperature=0.8, top_k=50,
                                       top_p=0.95, repetition_penalty=1.1))
    assert captured.out == expected.text + "\n"
    assert "tokens, finished by" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "model not found"),
    (["{model}", "--temperature", "-1"], "temperature"),
])
def test_generate_cli_reports_mistakes(trained_tokenizer, tmp_path, capsys, argv, message):
    from hslm.apps.generate import main

    save_hf(make_model(trained_tokenizer.vocab_size), tmp_path / "model", tokenizer=trained_tokenizer)
    argv = [a.format(missing=tmp_path / "nope", model=tmp_path / "model") for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--prompt", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_frequency_and_presence_penalties_follow_openai():
    """logit -= frequency_penalty * count + presence_penalty * (count > 0), over the generated
    tokens only (the prompt's repeats are the repetition penalty's business)."""
    torch.manual_seed(2)
    logits = torch.randn(50) * 3
    generated = torch.tensor([4, 4, 4, 9, 17, 17])
    params = SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=-1.25)
    expected = logits.clone()
    for token, count in ((4, 3), (9, 1), (17, 2)):
        expected[token] -= 0.5 * count - 1.25
    assert torch.allclose(process_logits(logits, params, torch.tensor([1, 2]), generated),
                          expected)
    assert torch.equal(process_logits(logits, params, torch.tensor([4, 9])), logits)
    with pytest.raises(ValueError):
        SamplingParams(frequency_penalty=2.5)
