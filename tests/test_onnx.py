"""ONNX export: the graph computes what the PyTorch model computes (prompt and decoding, past the
sliding window, left padding), the folder describes itself, the command reports mistakes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from hslm.export.onnx import GENAI_CONFIG_FILE, MODEL_FILE, export_onnx, io_names
from hslm.tokenizer import CHAT_TEMPLATE, HF_CONFIG_FILE, HF_TOKENIZER_FILE
from hslm.tokenizer import MODEL_FILE as TOKENIZER_MODEL_FILE
from model_factory import WINDOW, left_padded_batch, make_config, make_model

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


def test_fp32_graph_matches_pytorch_for_prompt_and_decoding(exported):
    model, folder = exported
    config = model.config
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    ids, mask, positions = left_padded_batch(config.vocab_size)  # 48 columns, 3 windows
    prompt = ids.shape[1] - 16  # then 16 decoding steps
    assert prompt > WINDOW
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).numpy()
    ids, mask, positions = ids.numpy(), mask.numpy(), positions.numpy()
    empty = np.zeros((ids.shape[0], config.n_kv_heads, 0, config.head_dim), np.float32)
    logits, past = run_graph(session, config, ids[:, :prompt], mask[:, :prompt],
                             positions[:, :prompt], [empty] * (2 * config.n_layers))
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
    assert genai["search"]["past_present_share_buffer"] is False


def test_hf_tokenizer_in_the_folder_prepends_bos(exported, trained_tokenizer):
    from tokenizers import Tokenizer as HFTokenizer

    _, folder = exported
    text = "भारत की राजधानी नई दिल्ली है।"
    hf = HFTokenizer.from_file(str(folder / HF_TOKENIZER_FILE))
    assert hf.encode(text).ids == trained_tokenizer.encode(text, add_bos=True)
