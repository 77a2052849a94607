"""ONNX export: the graph computes what the PyTorch model computes (prompt and decoding, past the
sliding window, left padding), the folder describes itself, the command reports mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch

from hslm.export.hf import save_hf
from hslm.export.onnx import GENAI_CONFIG_FILE, MODEL_FILE, export_onnx, io_names
from hslm.generate import SamplingParams, TorchLogits, generate, generate_ids
from hslm.parity import kl_divergence, validation_windows
from hslm.quant.onnx import OnnxQuantizeError, quantize_onnx_folder
from hslm.runtime import Runtime, RuntimeLoadError, load
from hslm.runtime.onnx import OnnxLoadError, load_onnx
from hslm.chat import CHAT_TEMPLATE, render_chat
from hslm.tokenizer import HF_CONFIG_FILE, HF_TOKENIZER_FILE
from hslm.tokenizer import MODEL_FILE as TOKENIZER_MODEL_FILE
from model_factory import (WINDOW, briefly_trained_model, left_padded_batch, make_config,
                           make_model)

ort = pytest.importorskip("onnxruntime")
TOL = 1e-4


@pytest.fixture(scope="module", params=["mixed", "custom"])
def exported(request, trained_tokenizer, tmp_path_factory):
    """(model, folder): a tiny model (window 16; "custom": untied head, one KV head, other
    RoPE bases) exported in fp32."""
    model = make_model(make_config(request.param, vocab_size=trained_tokenizer.vocab_size))
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    export_onnx(model, trained_tokenizer, folder)
    return model, folder


def run_graph(session, config, ids, mask, positions, past):
    """One call of the graph: (logits, presents in input order)."""
    inputs, _ = io_names(config.n_layers)
    feeds = dict(zip(inputs, [ids, mask, positions, *past]))
    logits, *presents = session.run(None, feeds)
    return logits, presents


def run_padded_prompt(model, folder):
    """A left-padded batch of 48 columns (3 windows) whose prompt (all but the last 16 columns,
    left to decode) has run through the graph. Returns (session, ids, mask, positions as numpy,
    prompt length, PyTorch's logits for every column, prompt logits, presents)."""
    config = model.config
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    ids, mask, positions = left_padded_batch(config.vocab_size)
    prompt = ids.shape[1] - 16
    assert prompt > WINDOW
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).numpy()
    ids, mask, positions = ids.numpy(), mask.numpy(), positions.numpy()
    empty = np.zeros((ids.shape[0], config.n_kv_heads, 0, config.head_dim), np.float32)
    logits, presents = run_graph(session, config, ids[:, :prompt], mask[:, :prompt],
                                 positions[:, :prompt], [empty] * (2 * config.n_layers))
    return session, ids, mask, positions, prompt, reference, logits, presents


def test_fp32_graph_matches_pytorch_for_prompt_and_decoding(exported):
    model, folder = exported
    config = model.config
    session, ids, mask, positions, prompt, reference, logits, past = run_padded_prompt(model,
                                                                                      folder)
    steps = [logits]
    for column in range(prompt, ids.shape[1]):
        logits, past = run_graph(session, config, ids[:, column:column + 1],
                                 mask[:, :column + 1], positions[:, column:column + 1], past)
        steps.append(logits)
    assert past[0].shape[2] == ids.shape[1]
    ours = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    assert np.abs(ours[:, :prompt][real[:, :prompt]] - reference[:, :prompt][real[:, :prompt]]).max() <= TOL
    assert np.abs(ours[real] - reference[real]).max() <= TOL


def test_fp32_graph_decodes_in_place_in_shared_buffers(exported):
    """onnxruntime-genai's and hslm's way to run the graph: one buffer per layer, longer than
    the sequence, bound as both past and present, and updated in place (left-padded batch)."""
    model, folder = exported
    config = model.config
    session, ids, mask, positions, prompt, reference, _, presents = run_padded_prompt(model,
                                                                                     folder)
    capacity = ids.shape[1] + 7
    buffers = []
    for present in presents:
        buffer = np.full((*present.shape[:2], capacity, present.shape[3]), np.nan, np.float32)
        buffer[:, :, :prompt] = present  # columns past the sequence must never be read
        buffers.append(ort.OrtValue.ortvalue_from_numpy(buffer))
    inputs, outputs = io_names(config.n_layers)
    binding = session.io_binding()
    binding.bind_output("logits", "cpu")  # first: get_outputs() keeps binding order
    for past, present, buffer in zip(inputs[3:], outputs[1:], buffers):
        binding.bind_ortvalue_input(past, buffer)
        binding.bind_ortvalue_output(present, buffer)
    real = mask.astype(bool)
    for column in range(prompt, ids.shape[1]):
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids[:, column:column + 1]))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask[:, :column + 1]))
        binding.bind_cpu_input("position_ids",
                               np.ascontiguousarray(positions[:, column:column + 1]))
        binding.bind_output("logits", "cpu")  # a new tensor each step, same place in the list
        session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()[:, 0]
        rows = real[:, column]
        assert np.abs(logits[rows] - reference[rows, column]).max() <= TOL
    assert buffers[0].numpy().shape[2] == capacity


def test_folder_describes_the_model(exported, trained_tokenizer):
    model, folder = exported
    config = model.config
    props = {p.key: p.value for p in onnx.load(folder / MODEL_FILE, load_external_data=False).metadata_props}
    assert json.loads(props["hslm.layer_types"]) == config.layer_types
    assert int(props["hslm.sliding_window"]) == config.sliding_window
    assert float(props["hslm.rope_base_local"]) == config.rope_base_local
    assert float(props["hslm.rope_base_global"]) == config.rope_base_global
    assert int(props["hslm.vocab_size"]) == config.vocab_size
    assert int(props["hslm.bos_token_id"]) == trained_tokenizer.bos_id
    assert int(props["hslm.end_of_turn_token_id"]) == trained_tokenizer.end_of_turn_id
    assert props["hslm.chat_template"] == CHAT_TEMPLATE
    assert props["hslm.version"]
    for name in (TOKENIZER_MODEL_FILE, HF_TOKENIZER_FILE, HF_CONFIG_FILE):
        assert (folder / name).is_file()
    genai = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    assert genai["model"]["type"] == "gemma3_text"
    assert genai["model"]["decoder"]["num_hidden_layers"] == config.n_layers
    assert genai["search"]["past_present_share_buffer"] is True
    graph_ops = [node.op_type for node in onnx.load(folder / MODEL_FILE).graph.node]
    assert graph_ops.count("GroupQueryAttention") == config.n_layers


def test_hf_tokenizer_in_the_folder_prepends_bos(exported, trained_tokenizer):
    from tokenizers import Tokenizer as HFTokenizer

    _, folder = exported
    text = "भारत की राजधानी नई दिल्ली है।"
    hf = HFTokenizer.from_file(str(folder / HF_TOKENIZER_FILE))
    assert hf.encode(text).ids == trained_tokenizer.encode(text, add_bos=True)


# ---------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def trained(trained_tokenizer, hindi_data_dir, tmp_path_factory):
    """A briefly trained model, its model folder, and its fp32 ONNX folder."""
    model = briefly_trained_model(trained_tokenizer, hindi_data_dir)
    root = tmp_path_factory.mktemp("onnx-trained")
    save_hf(model, root / "model", tokenizer=trained_tokenizer)
    export_onnx(model, trained_tokenizer, root / "fp32")
    return model, root


@pytest.fixture(scope="module")
def int4_folder(trained):
    """The int4 folder, written by the command."""
    from hslm.apps.export import main

    _, root = trained
    main([str(root / "model"), "--onnx", "int4", "--output", str(root / "int4")])
    return root / "int4"


def test_export_command_writes_a_loadable_int4_folder(int4_folder, capsys):
    graph = onnx.load(int4_folder / MODEL_FILE)
    ops = {node.op_type for node in graph.graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "FusedMatMul" not in ops
    assert (int4_folder / GENAI_CONFIG_FILE).is_file() and (int4_folder / HF_TOKENIZER_FILE).is_file()
    assert not [p for p in int4_folder.iterdir() if p.is_dir()]  # no scratch left behind
    assert load(int4_folder).backend == "onnx"


@pytest.mark.parametrize("argv, message", [
    (["{model}", "--onnx", "int3"], "invalid choice"),
    (["{model}", "--onnx", "int4", "--head-bits", "6"], "invalid choice"),
    (["{model}", "--onnx", "fp32", "--output", "{file}/sub"], "not a writable folder"),
    (["{model}", "--onnx", "fp32", "--output", "{file}"], "is a file"),
    (["{no_tokenizer}", "--onnx", "fp32"], "tokenizer not found"),
])
def test_export_command_reports_mistakes(trained, tmp_path, capsys, argv, message):
    from hslm.apps.export import main

    _, root = trained
    (tmp_path / "file").write_text("x")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "model" / name, no_tokenizer / name)
    argv = [a.format(model=root / "model", file=tmp_path / "file", no_tokenizer=no_tokenizer)
            for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


# ---------------------------------------------------------------- ONNX Runtime backend
def test_greedy_tokens_equal_pytorch(trained, trained_tokenizer):
    model, root = trained
    prompt = trained_tokenizer.encode("एक दिन राजा ने अपने मंत्री से कहा कि", add_bos=True)
    params = SamplingParams(max_new_tokens=48, temperature=0)  # well past the window of 16
    ours = Runtime("torch", TorchLogits(model), trained_tokenizer, "torch").generate(prompt, params)
    theirs = load(root / "fp32", threads=1).generate(prompt, params)
    assert len(ours.token_ids) > 2 * WINDOW
    assert theirs.token_ids == ours.token_ids and theirs.text == ours.text


def test_guided_greedy_json_is_identical_on_torch_and_onnx(trained, trained_tokenizer):
    model, root = trained
    schema = {"type": "object", "additionalProperties": False, "required": ["नाम", "शहर"],
              "properties": {"नाम": {"type": "string", "maxLength": 12},
                             "शहर": {"type": "string", "minLength": 1, "maxLength": 10}}}
    prompt = [{"role": "user", "content": "अपना नाम और शहर बताइए"}]
    params = SamplingParams(max_new_tokens=60, temperature=0)
    ours = Runtime("torch", TorchLogits(model), trained_tokenizer, "torch").chat(
        prompt, params, json_schema=schema)
    theirs = load(root / "fp32", threads=1).chat(prompt, params, json_schema=schema)
    assert theirs.token_ids == ours.token_ids
    jsonschema.validate(json.loads(theirs.text), schema)


def test_generate_command_runs_an_onnx_folder(trained, trained_tokenizer, capsys):
    from hslm.apps.generate import main

    model, root = trained
    main(["--onnx", str(root / "fp32"), "--prompt", "भारत की राजधानी", "--temperature", "0",
          "--max-new-tokens", "20"])
    expected = generate(model, trained_tokenizer, "भारत की राजधानी",
                        SamplingParams(max_new_tokens=20, temperature=0, repetition_penalty=1.1))
    assert capsys.readouterr().out == expected.text + "\n"


def test_generate_command_refuses_a_folder_without_a_graph(tmp_path, capsys):
    from hslm.apps.generate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--onnx", str(tmp_path), "--prompt", "भारत"])
    assert exit_info.value.code != 0
    assert "is not an ONNX folder (no model.onnx)" in capsys.readouterr().err


def _other_tokenizer(folder, hindi_data_dir, tmp_path):
    from hslm.tokenizer_train import train_tokenizer

    text = (hindi_data_dir / "news_headlines_bbc_hindi.txt").read_text("utf-8")[:100_000]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    train_tokenizer([tmp_path / "text.txt"], tmp_path / "other", vocab_size=600)
    shutil.copy(tmp_path / "other" / TOKENIZER_MODEL_FILE, folder / TOKENIZER_MODEL_FILE)


def _set_metadata(folder, key, value):
    graph = onnx.load(folder / MODEL_FILE)
    props = {p.key: p.value for p in graph.metadata_props}
    del graph.metadata_props[:]
    if value is not None:
        props[key] = value
    else:
        props = {}
    onnx.helper.set_model_props(graph, props)
    onnx.save_model(graph, folder / MODEL_FILE)


@pytest.mark.parametrize("damage, message", [
    ("no graph", "no model.onnx"),
    ("no tokenizer", "no usable tokenizer"),
    ("another model's tokenizer", "not the one"),
    ("another hslm version", "exported by hslm 0.0.1"),
    ("no hslm metadata", "not exported by hslm"),
])
def test_bad_folders_are_refused_clearly(trained, hindi_data_dir, tmp_path, damage, message):
    _, root = trained
    folder = tmp_path / "onnx"
    shutil.copytree(root / "fp32", folder)
    if damage == "no graph":
        (folder / MODEL_FILE).unlink()
    elif damage == "no tokenizer":
        (folder / TOKENIZER_MODEL_FILE).unlink()
    elif damage == "another model's tokenizer":
        _other_tokenizer(folder, hindi_data_dir, tmp_path)
    elif damage == "another hslm version":
        _set_metadata(folder, "hslm.version", "0.0.1")
    else:
        _set_metadata(folder, None, None)
    with pytest.raises(RuntimeLoadError, match=message):
        load(folder)


@pytest.mark.parametrize("damage, message", [
    ("another hslm version", "exported by hslm 0.0.1"),
    ("no hslm metadata", "not exported by hslm"),
])
def test_quantizing_a_foreign_graph_is_refused_clearly(trained, tmp_path, damage, message):
    _, root = trained
    folder = tmp_path / "onnx"
    shutil.copytree(root / "fp32", folder)
    if damage == "another hslm version":
        _set_metadata(folder, "hslm.version", "0.0.1")
    else:
        _set_metadata(folder, None, None)
    with pytest.raises(OnnxQuantizeError, match=message):
        quantize_onnx_folder(folder, tmp_path / "int4", "int4")
    assert not (tmp_path / "int4").exists()


def test_context_longer_than_the_models_is_refused(trained):
    model, root = trained
    folder = root / "fp32"
    with pytest.raises(OnnxLoadError, match="longer than the model's"):
        load_onnx(folder, context_length=model.config.context_length + 1)
    source, _ = load_onnx(folder, context_length=8)
    with pytest.raises(ValueError, match="longer than the context"):
        source.feed(list(range(3, 12)))


# ---------------------------------------------------------------- quantization
@pytest.fixture(scope="module")
def hindi_windows(trained_tokenizer, hindi_data_dir):
    """Windows of real Hindi the model was not trained on, each longer than 8 sliding windows."""
    lines = (hindi_data_dir / "essays_blogs_hindi_authors.txt").read_text("utf-8").splitlines()
    return validation_windows(trained_tokenizer, lines[:400], context=128, count=4)


def test_quantized_folders_stay_close_to_pytorch(trained, int4_folder, hindi_windows):
    model, root = trained
    quantize_onnx_folder(root / "fp32", root / "int8", "int8")
    with torch.no_grad():
        ours = np.concatenate([model(torch.tensor([w]))[0].numpy() for w in hindi_windows])
    quality = {}
    for kind, folder in (("int8", root / "int8"), ("int4", int4_folder)):
        source, _ = load_onnx(folder, threads=1)
        theirs = np.concatenate([source.all_logits(w) for w in hindi_windows])
        quality[kind] = {"top1": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
                         "kl": float(kl_divergence(ours, theirs).mean())}
    print(quality)
    # Thresholds from measurement on this briefly trained model, 512 positions (int8: top-1
    # 0.990, KL 5.5e-5; int4: top-1 0.84, KL 8.6e-3), with margin. Its predictions are nearly
    # tied at many positions, so top-1 is lower than a fully trained model's would be.
    assert quality["int8"]["top1"] >= 0.97 and quality["int8"]["kl"] < 5e-4
    assert quality["int4"]["top1"] >= 0.75 and quality["int4"]["kl"] < 0.04
    assert quality["int4"]["kl"] > quality["int8"]["kl"]


def _bits(node) -> int:
    return next((a.i for a in node.attribute if a.name == "bits"), 4)


def test_default_int4_stores_the_tied_head_once_at_8_bits(trained, int4_folder, hindi_windows):
    """The head is an 8-bit MatMulNBits, the embedding an 8-bit GatherBlockQuantized reading
    the head's own bytes and scales; smaller than and closer to PyTorch than a 4-bit head and
    a 4-bit embedding stored apart."""
    from hslm.quant.onnx import QuantizeOptions

    model, root = trained
    config = model.config
    quantize_onnx_folder(root / "fp32", root / "int4-head4", QuantizeOptions("int4",
                                                                             head_bits=4))
    graph = onnx.load(int4_folder / MODEL_FILE).graph
    nodes, initializers = _quantized_nodes(int4_folder)
    (head,) = [n for n in nodes if n.op_type == "MatMulNBits" and _bits(n) == 8]
    (gather,) = [n for n in nodes if n.op_type == "GatherBlockQuantized"]
    assert _bits(gather) == 8 and len(gather.input) == len(head.input) == 3  # zero point 128
    producers = {out: node for node in graph.node for out in node.output}
    reshape = producers[gather.input[0]]
    assert reshape.op_type == "Reshape" and reshape.input[0] == head.input[1]
    assert gather.input[2] == head.input[2]
    assert {_bits(n) for n in nodes if n is not head and n is not gather} == {4}
    assert not [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                and list(i.dims) == [config.vocab_size, config.hidden_size]]
    head4 = _quantized_nodes(root / "int4-head4")[0]
    assert {_bits(n) for n in head4} == {4}
    assert (int4_folder / MODEL_FILE).stat().st_size < \
        (root / "int4-head4" / MODEL_FILE).stat().st_size
    with torch.no_grad():
        ours = np.concatenate([model(torch.tensor([w]))[0].numpy() for w in hindi_windows])
    kl = {}
    for folder in (int4_folder, root / "int4-head4"):
        source, _ = load_onnx(folder, threads=1)
        theirs = np.concatenate([source.all_logits(w) for w in hindi_windows])
        kl[folder.name] = float(kl_divergence(ours, theirs).mean())
    print(kl)
    assert kl[int4_folder.name] < 0.8 * kl["int4-head4"]


def test_untied_head_is_8_bit_and_its_embedding_4_bit(trained_tokenizer, tmp_path):
    from hslm.quant.onnx import QuantizeOptions

    model = make_model(make_config("custom", vocab_size=trained_tokenizer.vocab_size))
    assert not model.config.tie_embeddings
    export_onnx(model, trained_tokenizer, tmp_path / "fp32")
    quantize_onnx_folder(tmp_path / "fp32", tmp_path / "int4", QuantizeOptions("int4"))
    nodes, _ = _quantized_nodes(tmp_path / "int4")
    heads = [n for n in nodes if n.op_type == "MatMulNBits" and _bits(n) == 8]
    assert len(heads) == 1 and heads[0].output[0] == "logits"
    (gather,) = [n for n in nodes if n.op_type == "GatherBlockQuantized"]
    assert _bits(gather) == 4
    quantize_onnx_folder(tmp_path / "fp32", tmp_path / "head4", QuantizeOptions("int4",
                                                                                head_bits=4))
    ids = trained_tokenizer.encode("भारत की राजधानी नई दिल्ली है", add_bos=True)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    kl = {name: float(kl_divergence(ours, load_onnx(tmp_path / name, threads=1)[0]
                                    .all_logits(ids)).mean()) for name in ("int4", "head4")}
    assert kl["int4"] < kl["head4"], kl  # random weights: large errors either way (0.12, 0.14)


# ---------------------------------------------------------------- onnxruntime-genai
def test_onnxruntime_genai_runs_the_int4_folder_like_our_loop(int4_folder, trained_tokenizer):
    og = pytest.importorskip("onnxruntime_genai",
                             reason="onnxruntime-genai is not installed (pip install hslm[onnx])")
    text = "एक दिन राजा ने अपने मंत्री से कहा कि"
    prompt = trained_tokenizer.encode(text, add_bos=True)
    new_tokens = 40
    model = og.Model(str(int4_folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    theirs = []
    while not generator.is_done():
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    stops = (trained_tokenizer.eos_id, trained_tokenizer.end_of_turn_id)
    if theirs and theirs[-1] in stops:
        theirs.pop()
    ours = list(generate_ids(load(int4_folder, threads=1).source, prompt,
                             SamplingParams(max_new_tokens=new_tokens, temperature=0), stops))
    assert len(ours) > 2 * WINDOW
    assert theirs == ours


# ------------------------------------------- onnxruntime-genai on its own: tokenizer, template
CHATS = [
    [{"role": "user", "content": "भारत की राजधानी क्या है?"}],
    [{"role": "system", "content": "तुम एक मददगार सहायक हो।"},
     {"role": "user", "content": "एक दिन राजा ने अपने मंत्री से कहा कि"}],
]


@pytest.fixture(scope="module")
def genai(int4_folder):
    """(onnxruntime_genai, its model of the int4 folder, its own tokenizer of that model)."""
    og = pytest.importorskip("onnxruntime_genai",
                             reason="onnxruntime-genai is not installed (pip install hslm[onnx])")
    model = og.Model(str(int4_folder))
    return og, model, og.Tokenizer(model)


def genai_greedy(og, model, prompt_ids, new_tokens, guidance=None) -> list[int]:
    """onnxruntime-genai's own generator, greedy, after `prompt_ids`."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + new_tokens, do_sample=False)
    if guidance:
        params.set_guidance(*guidance)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


@pytest.mark.parametrize("messages", CHATS)
def test_onnxruntime_genai_chats_on_its_own_like_our_loop(genai, int4_folder, messages):
    """Its chat template (tokenizer_config.json's, through its own Jinja engine), its
    tokenizer and its generator: the same greedy text as hslm's ONNX Runtime loop."""
    og, model, tokenizer = genai
    runtime = load(int4_folder, threads=1)
    prompt = tokenizer.apply_chat_template(json.dumps(messages, ensure_ascii=False),
                                           add_generation_prompt=True)
    assert prompt == render_chat(messages)
    prompt_ids = tokenizer.encode(prompt).tolist()
    assert prompt_ids == runtime.encode_chat(messages)
    theirs = genai_greedy(og, model, prompt_ids, 40)
    ours = runtime.chat(messages, SamplingParams(max_new_tokens=40, temperature=0))
    if theirs and theirs[-1] in (runtime.tokenizer.eos_id, runtime.tokenizer.end_of_turn_id):
        theirs.pop()
    assert len(ours.token_ids) > 10
    assert theirs == ours.token_ids
    if "\ufffd" not in ours.text:  # its decode cuts text at invalid UTF-8 (test_hf_tokenizer)
        assert tokenizer.decode(theirs) == ours.text


# ---------------------------------------------------------------- onnxruntime-genai's guidance
ANSWERS = ["हाँ", "नहीं", "हाथी"]  # every two Devanagari words share their first UTF-8 bytes
HINDI_ALTERNATIVES = {
    "json_schema": json.dumps({"type": "object", "additionalProperties": False,
                               "required": ["उत्तर"], "properties": {"उत्तर": {"enum": ANSWERS}},
                               "x-guidance": {"whitespace_flexible": False}},
                              ensure_ascii=False),
    "regex": "(" + "|".join(ANSWERS) + ")",
    "lark_grammar": "start: " + " | ".join(f'"{answer}"' for answer in ANSWERS),
}
GENAI_GUIDANCE_BUG = (
    "onnxruntime-genai 0.18 hands llguidance's forced bytes, which end inside a Devanagari "
    "letter (the bytes the alternatives share), to its string tokenizer; it turns them into "
    "U+FFFD and llguidance refuses that token: RuntimeError 'Error committing tokens: Parser "
    "Error: token \"\ufffd\" doesn't satisfy the grammar; forced bytes: got \"\u00e0\"'")


def genai_guided(genai, int4_folder, guidance) -> str:
    og, model, tokenizer = genai
    prompt_ids = load(int4_folder, threads=1).encode_chat(
        [{"role": "user", "content": "क्या हाथी बड़ा होता है? हाँ या नहीं?"}])
    return tokenizer.decode(genai_greedy(og, model, prompt_ids, 24, guidance))


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=GENAI_GUIDANCE_BUG)
@pytest.mark.parametrize("kind", list(HINDI_ALTERNATIVES))
def test_onnxruntime_genai_guidance_with_hindi_alternatives(genai, int4_folder, kind):
    text = genai_guided(genai, int4_folder, (kind, HINDI_ALTERNATIVES[kind]))
    assert (json.loads(text)["उत्तर"] if kind == "json_schema" else text) in ANSWERS


ROMANISED = {"haan": "हाँ", "nahin": "नहीं", "haathi": "हाथी"}


@pytest.mark.parametrize("kind, constraint, valid", [
    # The workaround for alternatives: ASCII names that the app maps to the Hindi words.
    ("json_schema", json.dumps({"type": "object", "additionalProperties": False,
                                "required": ["answer"],
                                "properties": {"answer": {"enum": list(ROMANISED)}},
                                "x-guidance": {"whitespace_flexible": False}}),
     lambda text: ROMANISED[json.loads(text)["answer"]] in ANSWERS),
    ("lark_grammar", "start: " + " | ".join(f'"{name}"' for name in ROMANISED),
     lambda text: ROMANISED[text] in ANSWERS),
    # One Hindi value, and free Hindi text, are fine.
    ("regex", ANSWERS[0], lambda text: text == ANSWERS[0]),
    ("json_schema", json.dumps({"type": "object", "additionalProperties": False,
                                "required": ["उत्तर"],
                                "properties": {"उत्तर": {"type": "string", "maxLength": 8}},
                                "x-guidance": {"whitespace_flexible": False}},
                               ensure_ascii=False),
     lambda text: len(json.loads(text)["उत्तर"]) <= 8),
])
def test_onnxruntime_genai_guidance_without_shared_partial_letters(genai, int4_folder, kind,
                                                                   constraint, valid):
    assert valid(genai_guided(genai, int4_folder, (kind, constraint)))


# ---------------------------------------------------------------- onnxruntime-web
ORT_WEB_VERSION = "1.30.0"
WEB_SCRIPT = Path(__file__).parent / "web" / "next_token.mjs"


@pytest.fixture(scope="module")
def onnxruntime_web(tmp_path_factory):
    """A folder with onnxruntime-web installed from npm and the Node script beside it (Node
    resolves the package from the script's folder)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run onnxruntime-web")
    folder = tmp_path_factory.mktemp("onnxruntime-web")
    done = subprocess.run(["npm", "install", "--prefix", str(folder),
                           f"onnxruntime-web@{ORT_WEB_VERSION}", "--no-audit", "--no-fund",
                           "--loglevel=error"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"npm could not install onnxruntime-web: {done.stderr[-500:]}"
    shutil.copy(WEB_SCRIPT, folder / WEB_SCRIPT.name)
    return folder / WEB_SCRIPT.name


def test_onnxruntime_web_predicts_the_same_next_token(onnxruntime_web, int4_folder):
    check_onnxruntime_web(onnxruntime_web, int4_folder)


def check_onnxruntime_web(onnxruntime_web, int4_folder):
    source, tokenizer = load_onnx(int4_folder, threads=1)
    ids = tokenizer.encode("भारत की राजधानी नई दिल्ली है और", add_bos=True)
    config = source.config
    spec = {"ids": ids, "layers": config.n_layers, "kvHeads": config.n_kv_heads,
            "headDim": config.head_dim}
    done = subprocess.run(["node", str(onnxruntime_web), str(int4_folder / MODEL_FILE),
                           json.dumps(spec)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    web = json.loads(done.stdout)
    ours = source.all_logits(ids)[-1]
    assert web["argmax"] == int(ours.argmax())
    # The WASM kernels round differently (measured 7e-3 on these logits).
    assert np.abs(np.array(web["logits"]) - ours[:8]).max() < 0.05


# ---------------------------------------------------------------- int4 algorithms and blocks
@pytest.fixture(scope="module")
def int4_algorithms(trained, hindi_data_dir):
    """{algorithm: int4 folder} at block 32, GPTQ calibrated on text the windows don't hold."""
    from hslm.quant.onnx import ALGORITHMS, QuantizeOptions, calibration_windows

    model, root = trained
    tokenizer = load(root / "fp32").tokenizer
    calibration = calibration_windows(tokenizer, [hindi_data_dir / "news_headlines_bbc_hindi.txt"],
                                      model.config.context_length, count=4)
    folders = {}
    for algorithm in ALGORITHMS:
        folders[algorithm] = root / f"int4-{algorithm}"
        quantize_onnx_folder(root / "fp32", folders[algorithm], QuantizeOptions(
            "int4", algorithm, 32, calibration if algorithm == "gptq" else ()))
    return folders


def _quantized_nodes(folder):
    graph = onnx.load(folder / MODEL_FILE)
    initializers = {init.name: init for init in graph.graph.initializer}
    return [node for node in graph.graph.node
            if node.op_type in ("MatMulNBits", "GatherBlockQuantized")], initializers


def test_every_int4_algorithm_stays_close_to_pytorch(trained, int4_algorithms, hindi_windows):
    from hslm.quant.onnx import ALGORITHMS

    model, _ = trained
    with torch.no_grad():
        ours = np.concatenate([model(torch.tensor([w]))[0].numpy() for w in hindi_windows])
    weights = {}
    for algorithm, folder in int4_algorithms.items():
        nodes, initializers = _quantized_nodes(folder)
        assert {n.op_type for n in nodes} == {"MatMulNBits", "GatherBlockQuantized"}
        assert {a.i for n in nodes for a in n.attribute if a.name == "block_size"} == {32}
        # Zero points are the 4th input of both 4-bit operators, present exactly when asked;
        # the 8-bit head and embedding are symmetric
        assert {len(n.input) == 4 for n in nodes if _bits(n) == 4} == {ALGORITHMS[algorithm][1]}
        assert {len(n.input) for n in nodes if _bits(n) == 8} == {3}
        weights[algorithm] = b"".join(  # packed values, scales and zero points
            onnx.numpy_helper.to_array(initializers[name]).tobytes()
            for n in nodes if n.op_type == "MatMulNBits" for name in n.input[1:])
        source, _ = load_onnx(folder, threads=1)
        theirs = np.concatenate([source.all_logits(w) for w in hindi_windows])
        top1 = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
        kl = float(kl_divergence(ours, theirs).mean())
        print(algorithm, top1, kl)
        # The default int4 measured top-1 0.84, KL 8.6e-3 on this model (see above); every
        # algorithm must be at least near that.
        assert top1 >= 0.75 and kl < 0.04, (algorithm, top1, kl)
    assert len(set(weights.values())) == len(weights)  # each algorithm chose other values


@pytest.mark.parametrize("algorithm", ["rtn-asym", "hqq", "k_quant", "gptq"])
def test_onnxruntime_genai_runs_every_int4_algorithm(int4_algorithms, trained_tokenizer,
                                                     algorithm):
    og = pytest.importorskip("onnxruntime_genai",
                             reason="onnxruntime-genai is not installed (pip install hslm[onnx])")
    folder = int4_algorithms[algorithm]
    prompt = trained_tokenizer.encode("एक दिन राजा ने अपने मंत्री से कहा कि", add_bos=True)
    theirs = genai_greedy(og, og.Model(str(folder)), prompt, 16)
    stops = (trained_tokenizer.eos_id, trained_tokenizer.end_of_turn_id)
    if theirs and theirs[-1] in stops:
        theirs.pop()
    ours = list(generate_ids(load(folder, threads=1).source, prompt,
                             SamplingParams(max_new_tokens=16, temperature=0), stops))
    assert len(ours) > 4 and theirs == ours


def test_block_size_is_the_one_asked_and_smaller_blocks_cost_bytes(trained):
    from hslm.quant.onnx import QuantizeOptions
    from hslm.runtime.onnx import onnx_summary

    _, root = trained
    read = {}
    for block in (16, 64, 128):
        folder = root / f"int4-rtn-asym-{block}"
        quantize_onnx_folder(root / "fp32", folder, QuantizeOptions("int4", "rtn-asym", block))
        nodes, _ = _quantized_nodes(folder)
        assert {a.i for n in nodes for a in n.attribute if a.name == "block_size"} == {block}
        read[block] = onnx_summary(folder)[1]
        assert load(folder, threads=1).generate([2, 5, 9], SamplingParams(max_new_tokens=3,
                                                                          temperature=0))
    # A scale and a zero point per block (blocks of 128 pad this model's 64-wide inputs).
    assert read[16] > read[64]


@pytest.mark.parametrize("argv, message", [
    (["--onnx", "int4", "--algorithm", "awq"], "unknown int4 algorithm 'awq'; choose one of rtn"),
    (["--onnx", "int4", "--block-size", "48"], "block size 48 is not one of 16, 32, 64, 128"),
    (["--onnx", "int4", "--algorithm", "gptq"], "gptq needs calibration text"),
    (["--onnx", "int4", "--algorithm", "k_quant", "--block-size", "64"],
     "64 inputs make 1 blocks of 64"),
    (["--onnx", "int4", "--algorithm", "gptq", "--calibration", "{missing}"], "file not found"),
    (["--onnx", "int4", "--algorithm", "hqq", "--calibration", "{text}"],
     "used by --algorithm gptq only"),
    (["--onnx", "int8", "--algorithm", "hqq"], "int8 is round-to-nearest only"),
    (["--onnx", "fp32", "--block-size", "32"], "fp32 is not quantized"),
    (["--gguf", "q4", "--algorithm", "hqq"], "are for --onnx int4/int8"),
    (["--gguf", "q4", "--head-bits", "8"], "are for --onnx int4/int8"),
    (["--onnx", "int8", "--head-bits", "4"], "only in an int4 graph"),
    (["--onnx", "fp32", "--head-bits", "8"], "fp32 is not quantized"),
])
def test_export_command_refuses_bad_int4_options(trained, hindi_data_dir, tmp_path, capsys,
                                                 argv, message):
    from hslm.apps.export import main

    _, root = trained
    argv = [a.format(missing=tmp_path / "missing.txt",
                     text=hindi_data_dir / "news_headlines_bbc_hindi.txt") for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main([str(root / "model"), *argv, "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_export_command_calibrates_gptq(trained, hindi_data_dir, tmp_path, capsys):
    from hslm.apps.export import main

    _, root = trained
    main([str(root / "model"), "--onnx", "int4", "--algorithm", "gptq", "--block-size", "16",
          "--calibration", str(hindi_data_dir / "news_headlines_bbc_hindi.txt"),
          "--output", str(tmp_path / "gptq")])
    assert "gptq, block 16, 8-bit output head" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(tmp_path / "gptq" / MODEL_FILE,
                                                load_external_data=False).metadata_props}
    assert props["hslm.quantization"] == "int4"
    assert props["hslm.quantization_method"] == "gptq, block 16, 8-bit output head"
    assert load(tmp_path / "gptq").backend == "onnx"


@pytest.mark.parametrize("algorithm", ["rtn-asym", "hqq", "k_quant", "gptq"])
def test_onnxruntime_web_runs_every_int4_algorithm(onnxruntime_web, int4_algorithms, algorithm):
    check_onnxruntime_web(onnxruntime_web, int4_algorithms[algorithm])
