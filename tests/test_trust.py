"""Files hslm did not write itself, and runs that collide: a checkpoint carrying code, a
changed config on resume, two runs in one folder, a million steps, a full disk, weights named
outside their folder, a context length from a crafted file, an ONNX folder that fails hslm's
checks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from hslm.config import ModelConfig
from hslm.train import checkpoint as checkpoint_module
from hslm.train.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from hslm.train.config import SAFE_TO_CHANGE, TrainConfig
from hslm.train.lock import LOCK_FILE
from hslm.train.loop import TrainingError, train
from model_factory import make_config, make_model
from train_factory import small_run as small_values


def small_run(shard_dir, tokenizer_dir, out, **overrides) -> TrainConfig:
    return TrainConfig(**small_values(shard_dir, tokenizer_dir, out, **overrides))


class RunsCommand:
    """Unpickling this runs a shell command, as a crafted checkpoint would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_with_checksum(path, write) -> None:
    """A file and its `.sha256`, so that only the content can make it fail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        write(file)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(digest)


@pytest.fixture(params=["torch.save", "pickle"])
def malicious_checkpoint(request, tmp_path):
    """(run folder holding a crafted checkpoint, the file its code would create)."""
    marker = tmp_path / "code-ran"
    state = {"model": RunsCommand(f"touch {marker}"), "step": 1, "tokenizer_sha256": "x"}
    path = tmp_path / "run" / "checkpoints" / "step_000001.pt"
    if request.param == "torch.save":
        write_with_checksum(path, lambda f: torch.save(state, f))
    else:  # the legacy (non-zip) format torch.load also reads
        write_with_checksum(path, lambda f: pickle.dump(state, f))
    return tmp_path / "run", marker


def test_a_checkpoint_carrying_code_is_refused_and_never_runs(malicious_checkpoint, capsys):
    from hslm.apps.generate import main as generate_main
    from hslm.runtime import load
    from hslm.runtime.engine import RuntimeLoadError

    run, marker = malicious_checkpoint
    checkpoint = run / "checkpoints" / "step_000001.pt"
    for path in (checkpoint, run, run / "checkpoints"):
        with pytest.raises(RuntimeLoadError, match="refusing .*Python objects or code"):
            load(path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_latest(run / "checkpoints")
    with pytest.raises(SystemExit) as exit_info:
        generate_main([str(checkpoint), "--prompt", "नमस्ते"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: refusing")
    assert not marker.exists()


def test_training_refuses_a_checkpoint_carrying_code(malicious_checkpoint, shard_dir,
                                                     trained_tokenizer_dir, trained_tokenizer,
                                                     tmp_path):
    run, marker = malicious_checkpoint
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "new", init_from=str(run))
    with pytest.raises(TrainingError, match="init_from: refusing"):
        train(config, trained_tokenizer)
    with pytest.raises(TrainingError, match="refusing"):  # as a run folder to resume
        train(small_run(shard_dir, trained_tokenizer_dir, run), trained_tokenizer)
    assert not marker.exists()
    assert not (run / LOCK_FILE).exists()  # released on the way out


def test_hslm_checkpoints_hold_only_plain_values(shard_dir, trained_tokenizer_dir,
                                                 trained_tokenizer, tmp_path):
    train(small_run(shard_dir, trained_tokenizer_dir, tmp_path, precision="fp16"),
          trained_tokenizer)
    path = tmp_path / "checkpoints" / "step_000006.pt"
    state = torch.load(path, weights_only=True)  # no safe globals registered
    assert state["step"] == 6 and state["scaler"]["scale"] > 0
    assert isinstance(state["tokenizer_model"], bytes)
    assert torch.equal(load_checkpoint(path)["model"]["embed.weight"], state["model"]["embed.weight"])


# ---------------------------------------------------------------- resume
def test_resume_refuses_other_settings_unless_forced(shard_dir, trained_tokenizer_dir,
                                                     trained_tokenizer, tmp_path, capsys):
    from hslm.apps.train import main

    out = tmp_path / "run"
    train(small_run(shard_dir, trained_tokenizer_dir, out), trained_tokenizer, stop_at_step=3)
    changed = small_run(shard_dir, trained_tokenizer_dir, out, lr=1e-3, seed=5,
                        model_overrides={"n_layers": 6}, eval_every=2)
    with pytest.raises(TrainingError) as refused:
        train(changed, trained_tokenizer)
    lines = str(refused.value).splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:-1]] == ["model_overrides", "lr", "seed"]
    assert "lr: 0.003 in the checkpoint, 0.001 now" in str(refused.value)
    assert "resume=force" in lines[-1]
    assert load_latest(out / "checkpoints")["step"] == 3  # nothing was written

    # The command says the same, one line per key, without a traceback.
    with pytest.raises(SystemExit):
        main([f"{key}={value}" for key, value in small_values(
            shard_dir, trained_tokenizer_dir, out, lr=1e-3).items()])
    err = capsys.readouterr().err
    assert "lr: 0.003 in the checkpoint, 0.001 now" in err and "Traceback" not in err

    # Safe changes resume: more steps, another evaluation and checkpoint cadence, keep_last.
    safe = small_run(shard_dir, trained_tokenizer_dir, out, steps=8, eval_every=2,
                     checkpoint_every=4, keep_last=3, log_every=2)
    assert {"steps", "eval_every", "checkpoint_every", "keep_last", "log_every"} <= set(SAFE_TO_CHANGE)
    assert train(safe, trained_tokenizer).step == 8

    forced = small_run(shard_dir, trained_tokenizer_dir, out, steps=10, lr=1e-3,
                       model_overrides={"n_layers": 6}, resume="force")
    result = train(forced, trained_tokenizer)
    assert result.step == 10  # with the checkpoint's model
    assert result.model.config.n_layers == ModelConfig.preset("tiny").n_layers != 6
    assert "resume=force" in capsys.readouterr().err


def test_metrics_hold_every_step_once_after_a_resume(shard_dir, trained_tokenizer_dir,
                                                    trained_tokenizer, tmp_path):
    straight = tmp_path / "straight"
    train(small_run(shard_dir, trained_tokenizer_dir, straight), trained_tokenizer)
    out = tmp_path / "resumed"
    config = small_run(shard_dir, trained_tokenizer_dir, out)
    train(config, trained_tokenizer, stop_at_step=5)  # checkpoints at 3 and 5
    for name in ("step_000005.pt", "step_000005.pt.sha256"):  # as if killed before step 5's
        (out / "checkpoints" / name).unlink()
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as file:
        file.write('{"step": 6, "loss": 1')  # and in the middle of a record
    train(config, trained_tokenizer)  # resumes at 3: steps 4 and 5 are trained again

    def records(path):
        return [json.loads(line) for line in open(path, encoding="utf-8")]

    for name in ("metrics.jsonl", "logs/rank_0.jsonl"):
        steps = [record["step"] for record in records(out / name)]
        assert steps == [1, 2, 3, 4, 5, 6], name
    assert [r["loss"] for r in records(out / "metrics.jsonl")] == \
        [r["loss"] for r in records(straight / "metrics.jsonl")]


# ---------------------------------------------------------------- one run per folder
def test_a_second_run_on_the_same_folder_is_refused(shard_dir, trained_tokenizer_dir,
                                                    trained_tokenizer, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    config = small_run(shard_dir, trained_tokenizer_dir, out)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": socket.gethostname(), "since": 0}
        (out / LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(TrainingError, match=f"used by another run \\(process {other.pid}"):
            train(config, trained_tokenizer)
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    finally:
        other.kill()
        other.wait()
    # Its process is gone: the lock is stale and is taken over, with a warning.
    assert train(config, trained_tokenizer).step == 6
    assert f"taking over {out / LOCK_FILE} of process {other.pid}" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists()

    lock = {"pid": 1, "host": "another-host", "since": 0}  # cannot be checked from here
    (out / LOCK_FILE).write_text(json.dumps(lock))
    with pytest.raises(TrainingError, match="process 1 on host another-host"):
        train(small_run(shard_dir, trained_tokenizer_dir, out, steps=8), trained_tokenizer)


# ---------------------------------------------------------------- names, disk
def test_checkpoints_order_by_step_past_a_million(tmp_path):
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step_1000000.pt", "step_1000001.pt"]
    assert load_latest(tmp_path)["step"] == 1_000_001
    assert load_checkpoint(tmp_path)["step"] == 1_000_001


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(
        shard_dir, trained_tokenizer_dir, trained_tokenizer, tmp_path, monkeypatch, capsys):
    from hslm.apps.train import main

    real_save = torch.save

    def full_disk_at_step_6(state, file):
        if state["step"] < 6:
            return real_save(state, file)
        file.write(b"\0" * 4096)  # part of it fits
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk_at_step_6)
    with pytest.raises(SystemExit) as exit_info:
        main([f"{key}={value}" for key, value in
              small_values(shard_dir, trained_tokenizer_dir, tmp_path).items()])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint of step 6" in errors[0] and \
        "No space left on device" in errors[0]
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.json", "step_000003.pt",
                                                        "step_000003.pt.sha256"]
    assert load_latest(folder)["step"] == 3
    assert not (tmp_path / LOCK_FILE).exists() and not (tmp_path / "model").exists()

    def failing_checksum(path, write):  # the checkpoint fits, its checksum does not
        if path.name.endswith(".sha256"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, write)

    real_write = checkpoint_module.write_atomically
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    monkeypatch.setattr(checkpoint_module, "write_atomically", failing_checksum)
    with pytest.raises(OSError):
        save_checkpoint(folder, 7, {"step": 7}, keep_last=2)
    assert not (folder / "step_000007.pt").exists()  # no checksum-less leftovers


# ---------------------------------------------------------------- model files
def test_safetensors_index_names_only_files_in_the_folder(trained_tokenizer, tmp_path):
    from hslm.export.hf import HFFormatError, load_hf, save_hf

    model = make_model(make_config(vocab_size=trained_tokenizer.vocab_size))
    folder = save_hf(model, tmp_path / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(folder / "model.safetensors", elsewhere / "weights.safetensors")
    for name in (str(elsewhere / "weights.safetensors"), "../elsewhere/weights.safetensors"):
        index = {"weight_map": {"model.embed_tokens.weight": name}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(HFFormatError, match="outside"):
            load_hf(folder)
    # Inside the folder, by name, an index is followed.
    shutil.move(elsewhere / "weights.safetensors", folder / "weights.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "weights.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(load_hf(folder).embed.weight, model.embed.weight)


def test_gguf_context_is_capped_unless_asked(trained_tokenizer, tmp_path):
    pytest.importorskip("llama_cpp")
    from hslm.export.gguf import write_gguf
    from hslm.runtime.llama_cpp import DEFAULT_CONTEXT, GGUFLoadError, load_gguf

    model = make_model(make_config(vocab_size=trained_tokenizer.vocab_size,
                                   context_length=32_768))
    path = write_gguf(model, trained_tokenizer, tmp_path / "model.gguf", "f32")
    source, _ = load_gguf(path, threads=1)
    assert source.context_length == DEFAULT_CONTEXT == 4096
    assert load_gguf(path, threads=1, context_length=256)[0].context_length == 256
    with pytest.raises(GGUFLoadError, match="longer than the model's 32768"):
        load_gguf(path, threads=1, context_length=65_536)


def test_onnx_folder_is_checked_before_onnx_runtime_reads_it(trained_tokenizer, tmp_path,
                                                             monkeypatch):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    from hslm.export.onnx import MODEL_FILE, export_onnx
    from hslm.runtime.onnx import OnnxLoadError, load_onnx

    model = make_model(make_config(vocab_size=trained_tokenizer.vocab_size))
    folder = tmp_path / "onnx"
    export_onnx(model, trained_tokenizer, folder)
    real_session, sessions = onnxruntime.InferenceSession, []

    def recorded_session(*args, **kwargs):
        sessions.append(args)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recorded_session)
    load_onnx(folder, threads=1)
    assert len(sessions) == 1  # the folder as exported loads
    other_folder = tmp_path / "other"
    shutil.copytree(folder, other_folder)

    graph = onnx.load(str(folder / MODEL_FILE))  # as if exported with another tokenizer
    for prop in graph.metadata_props:
        if prop.key == "hslm.tokenizer_sha256":
            prop.value = "0" * 64
    onnx.save_model(graph, str(folder / MODEL_FILE))
    with pytest.raises(OnnxLoadError, match="tokenizer"):
        load_onnx(folder, threads=1)
    for prop in graph.metadata_props:
        if prop.key == "hslm.version":
            prop.value = "0.0.0"
    onnx.save_model(graph, str(folder / MODEL_FILE))
    with pytest.raises(OnnxLoadError, match="exported by hslm 0.0.0"):
        load_onnx(folder, threads=1)
    assert len(sessions) == 1  # neither reached ONNX Runtime

    # A graph whose weights live outside its folder is refused too.
    proto = onnx.load(str(other_folder / MODEL_FILE))
    onnx.save_model(proto, str(other_folder / MODEL_FILE), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    proto = onnx.load(str(other_folder / MODEL_FILE), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save_model(proto, str(other_folder / MODEL_FILE))
    shutil.move(other_folder / "weights.bin", tmp_path / "weights.bin")
    with pytest.raises(OnnxLoadError, match="outside its folder"):
        load_onnx(other_folder, threads=1)
    assert len(sessions) == 1
