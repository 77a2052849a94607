"""Guided decoding: every output parses and validates, on every backend, for trained and
random models; bad constraints are refused up front; Hindi alternatives work."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from hslm.config import ModelConfig
from hslm.export.gguf import write_gguf
from hslm.export.onnx import export_onnx
from hslm.generate import SamplingParams
from hslm.model import Gemma3
from hslm.runtime import load
from hslm.runtime.engine import Runtime
from hslm.runtime.guided import GuideError
from hslm.generate import TorchLogits
from model_factory import briefly_trained_model

SEEDS = range(20)
SCHEMAS = {
    "hindi strings": {
        "type": "object", "additionalProperties": False, "required": ["नाम", "शहर"],
        "properties": {"नाम": {"type": "string", "maxLength": 12},
                       "शहर": {"type": "string", "minLength": 1, "maxLength": 10}}},
    "hindi enum": {"enum": ["हाँ", "नहीं", "शायद"]},
    "integer range": {"type": "object", "additionalProperties": False, "required": ["उम्र"],
                      "properties": {"उम्र": {"type": "integer", "minimum": 18, "maximum": 99}}},
    "array": {"type": "array", "items": {"enum": ["लाल", "हरा", "नीला"]}, "minItems": 1,
              "maxItems": 3},
    "nested": {"type": "object", "additionalProperties": False, "required": ["पता"],
               "properties": {"पता": {
                   "type": "object", "additionalProperties": False,
                   "required": ["पिन", "राज्य"],
                   "properties": {"पिन": {"type": "integer", "minimum": 100000, "maximum": 999999},
                                  "राज्य": {"enum": ["बिहार", "केरल"]}}}}},
    "boolean": {"type": "object", "additionalProperties": False, "required": ["सही"],
                "properties": {"सही": {"type": "boolean"}}},
}
REGEXES = {"indian phone": r"(\+91 )?[6-9][0-9]{9}", "date": r"[0-3][0-9]-[01][0-9]-20[0-9]{2}"}
PARAMS = dict(max_new_tokens=60, temperature=1.0, top_k=0)


@pytest.fixture(scope="module")
def runtimes(trained_tokenizer, hindi_data_dir, tmp_path_factory):
    """PyTorch, llama.cpp and ONNX Runtime runtimes of a briefly trained model and of random
    weights."""
    trained = briefly_trained_model(trained_tokenizer, hindi_data_dir)
    torch.manual_seed(1)
    random = Gemma3(ModelConfig.preset("tiny", vocab_size=trained_tokenizer.vocab_size)).eval()
    folder = tmp_path_factory.mktemp("guided")
    found = {}
    for name, model in (("trained", trained), ("random", random)):
        found[f"{name}/torch"] = Runtime("torch", TorchLogits(model), trained_tokenizer, name)
        found[f"{name}/llama.cpp"] = load(write_gguf(model, trained_tokenizer,
                                                     folder / f"{name}.gguf", "f32"))
        found[f"{name}/onnx"] = load(export_onnx(model, trained_tokenizer,
                                                 folder / f"{name}-onnx").parent)
    return found


@pytest.mark.parametrize("backend", [f"{weights}/{backend}" for weights in ("trained", "random")
                                     for backend in ("torch", "llama.cpp", "onnx")])
def test_every_output_validates(runtimes, backend):
    runtime = runtimes[backend]
    failures = []
    for name, schema in SCHEMAS.items():
        for seed in SEEDS:
            out = runtime.chat([{"role": "user", "content": f"{name}:"}],
                               SamplingParams(**PARAMS, seed=seed), json_schema=schema)
            try:
                jsonschema.validate(json.loads(out.text), schema)
                assert out.finish_reason == "stop"
            except (ValueError, jsonschema.ValidationError, AssertionError) as err:
                failures.append((name, seed, out.text, out.finish_reason, str(err)[:80]))
    for name, pattern in REGEXES.items():
        for seed in SEEDS:
            out = runtime.generate("फ़ोन नंबर:", SamplingParams(**PARAMS, seed=seed), regex=pattern)
            if not re.fullmatch(pattern, out.text):
                failures.append((name, seed, out.text, out.finish_reason))
    assert not failures, failures[:5]


def test_hindi_alternatives_sharing_a_utf8_prefix(runtimes):
    # "हाँ" and "हाथी" share their first bytes; byte-level tokens must not confuse the mask.
    grammar = 'start: ("हाँ" | "हाथी" | "नहीं")'
    outputs = {runtimes["trained/torch"].generate("उत्तर:", SamplingParams(**PARAMS, seed=s),
                                                  grammar=grammar).text for s in SEEDS}
    assert outputs <= {"हाँ", "हाथी", "नहीं"} and len(outputs) >= 2


@pytest.mark.parametrize("backend", ["llama.cpp", "onnx"])
def test_greedy_schema_output_is_the_same_as_torch(runtimes, backend):
    params = SamplingParams(max_new_tokens=60, temperature=0)
    schema = SCHEMAS["hindi strings"]
    prompt = [{"role": "user", "content": "अपना नाम और शहर बताइए"}]
    ours = runtimes["trained/torch"].chat(prompt, params, json_schema=schema)
    theirs = runtimes[f"trained/{backend}"].chat(prompt, params, json_schema=schema)
    assert ours.token_ids == theirs.token_ids and json.loads(ours.text)


@pytest.mark.parametrize("constraint, message", [
    ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 1}}, "minimum"),
    ({"json_schema": "{not json"}, "invalid json schema"),
    ({"regex": "[a-"}, "unclosed character class"),
    ({"grammar": "start: undefined_rule"}, "unknown name"),
    ({"regex": "a", "grammar": "start: 'a'"}, "exactly one"),
])
def test_bad_constraints_are_refused_before_generating(runtimes, constraint, message):
    with pytest.raises(GuideError, match=message):
        runtimes["trained/torch"].generate("x", SamplingParams(max_new_tokens=5), **constraint)
