"""FSDP2 training (parallel=fsdp) on two gloo ranks: the loss curve of DDP, sharded checkpoints
that resume to the bit after a SIGKILL and onto one rank, a corrupted shard refused in one line,
and the model folder equal to the gathered shards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import sys
import time

import pytest
import torch

import test_train_processes as processes  # the launch helpers (imported whole: no test re-run)
from hslm.config import ModelConfig
from hslm.loader import load_torch_model
from hslm.model import Gemma3
from hslm.train import distributed
from hslm.train.checkpoint import CheckpointError, load_checkpoint, load_latest
from hslm.train.config import TrainConfig
from hslm.train.loop import TrainStep

STEPS = 10
# 3 validation batches on 2 ranks: the ranks run as many forwards (or FSDP's gathers would hang)
COMMON = {"steps": STEPS, "checkpoint_every": 1, "eval_every": 5, "eval_batches": 3,
          "keep_last": 2, "precision": "fp32"}


def train_two_ranks(args: list[str]) -> None:
    ranks = processes.start_ranks(processes.TRAIN + args)
    outputs = [process.communicate(timeout=300) for process in ranks]
    for process, (stdout, stderr) in zip(ranks, outputs):
        assert process.returncode == 0, f"{args}:\n{stdout}\n{stderr}"


def model_tensors(path) -> dict[str, torch.Tensor]:
    """The weights hslm.loader reads from a model folder, run folder or checkpoint."""
    return load_torch_model(path)[0].state_dict()


@pytest.fixture(scope="module")
def runs(shard_dir, trained_tokenizer_dir, tmp_path_factory):
    """An uninterrupted FSDP run and a DDP run of the same settings (two ranks each)."""
    folder = tmp_path_factory.mktemp("fsdp")
    train_two_ranks(processes.run_args(shard_dir, trained_tokenizer_dir, folder / "fsdp",
                                       parallel="fsdp", **COMMON))
    train_two_ranks(processes.run_args(shard_dir, trained_tokenizer_dir, folder / "ddp",
                                       **{**COMMON, "checkpoint_every": STEPS}))
    return folder


def test_fsdp_loss_curve_equals_ddp(runs):
    fsdp, ddp = processes.losses_by_step(runs / "fsdp"), processes.losses_by_step(runs / "ddp")
    assert sorted(fsdp) == list(range(1, STEPS + 1)) and sorted(ddp) == sorted(fsdp)
    # Stated tolerance 1e-5 (fp32; the sums of gradients and of the norm run in another order).
    for step, loss in ddp.items():
        assert fsdp[step] == pytest.approx(loss, abs=1e-5), step
    assert fsdp[STEPS] < fsdp[1] - 0.1  # it learns


def test_fsdp_checkpoints_are_sharded_and_the_model_folder_is_the_gathered_one(runs):
    checkpoints = runs / "fsdp" / "checkpoints"
    newest = checkpoints / f"step_{STEPS:06d}.dcp"
    assert sorted(p.name for p in newest.iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json", "state.pt"]
    assert sorted(p.name for p in checkpoints.glob("step_*")) == [  # keep_last=2
        f"step_{STEPS - 1:06d}.dcp", f"step_{STEPS:06d}.dcp"]
    # OUT/model (gathered on rank 0 at the end) equals, bit for bit, the last checkpoint's
    # shards put together in one process without a process group.
    folder, shards = model_tensors(runs / "fsdp" / "model"), model_tensors(newest)
    assert folder.keys() == shards.keys()
    for name, tensor in shards.items():
        assert torch.equal(folder[name], tensor), name
    ddp = model_tensors(runs / "ddp" / "model")
    assert max((ddp[name] - tensor).abs().max().item() for name, tensor in shards.items()) < 1e-4


def test_sigkill_then_resume_on_two_ranks_is_bit_exact_and_on_one_rank_close(
        runs, shard_dir, trained_tokenizer_dir, tmp_path):
    out = tmp_path / "killed"
    args = processes.run_args(shard_dir, trained_tokenizer_dir, out, parallel="fsdp", **COMMON)
    kill_after = random.Random().randint(3, STEPS - 3)
    ranks = processes.start_ranks(processes.TRAIN + args)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while all(p.poll() is None for p in ranks) and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.005)
    for process in ranks:  # both at once, possibly in the middle of a checkpoint write
        process.send_signal(signal.SIGKILL)
    for process in ranks:
        process.communicate()
    assert [p.returncode for p in ranks] == [-signal.SIGKILL] * 2, \
        f"the run ended before the kill at step {kill_after}"
    killed_at = load_latest(out / "checkpoints")["step"]
    assert killed_at < STEPS
    one = tmp_path / "one"
    shutil.copytree(out, one)

    train_two_ranks(args)  # the same command: resumes from the newest complete checkpoint
    straight = processes.losses_by_step(runs / "fsdp")
    assert processes.losses_by_step(out) == straight
    resumed, uninterrupted = model_tensors(out), model_tensors(runs / "fsdp")
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), f"{name} differs (killed after {killed_at})"

    # The same checkpoint on one rank: DCP reshards the two ranks' shards into one, which
    # takes the two micro-batches the ranks took. Stated tolerance: 1e-5.
    processes.run(processes.TRAIN + processes.run_args(shard_dir, trained_tokenizer_dir, one,
                                                       parallel="fsdp", **COMMON))
    on_one = processes.losses_by_step(one)
    assert sorted(on_one) == sorted(straight)
    for step, loss in straight.items():
        assert on_one[step] == pytest.approx(loss, abs=1e-5), (step, killed_at)


def test_a_corrupted_shard_is_refused_in_one_line(runs, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(runs / "fsdp" / "checkpoints", checkpoints)
    newest = checkpoints / f"step_{STEPS:06d}.dcp"
    shard = newest / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="__1_0.distcp does not match its checksum"):
        load_checkpoint(newest)
    done = processes.run([sys.executable, "-m", "hslm.apps.model", "info", str(newest)],
                         check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert processes.error_lines(done.stderr) == [done.stderr.strip()]
    assert "__1_0.distcp does not match its checksum in manifest.json" in done.stderr
    # A resume skips it, with a warning, for the one before.
    assert load_latest(checkpoints)["step"] == STEPS - 1
    (newest / "manifest.json").unlink()  # a folder without its manifest is no checkpoint
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_checkpoint(newest)


class RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_crafted_dcp_index_is_refused_before_it_runs(runs, tmp_path):
    """DCP unpickles its .metadata with plain pickle: hslm reads it first with an unpickler that
    knows DCP's metadata classes only. The manifest is rewritten to match, as an attacker would."""
    newest = runs / "fsdp" / "checkpoints" / f"step_{STEPS:06d}.dcp"
    index = pickle.loads((newest / ".metadata").read_bytes())
    key, info = next(iter(index.storage_data.items()))
    index.storage_data[key] = dataclasses.replace(info, relative_path="../../state.pt")
    crafted = {"code": pickle.dumps(RunsACommand(f"touch {tmp_path / 'ran'}")),
               "path": pickle.dumps(index)}
    refusals = {}
    for name, data in crafted.items():
        folder = tmp_path / name / newest.name
        shutil.copytree(newest, folder)
        (folder / ".metadata").write_bytes(data)
        manifest = {file.name: hashlib.sha256(file.read_bytes()).hexdigest()
                    for file in folder.iterdir() if file.name != "manifest.json"}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(folder)
        refusals[name] = str(refused.value)
        assert refusals[name].startswith(f"refusing {folder}: its .metadata")
    assert "(it names posix.system)" in refusals["code"]
    assert refusals["path"].endswith("names shards outside the folder: ['../../state.pt']")
    assert not (tmp_path / "ran").exists()


def test_bf16_gathers_bf16_parameters_from_fp32_shards():
    """One rank in this process: the mixed-precision policy casts what a block computes with,
    not the shards the optimizer updates; the loss is the autocast step's to bf16 precision."""
    torch.manual_seed(0)
    model = Gemma3(ModelConfig.preset("tiny", vocab_size=300))
    reference = Gemma3(model.config)
    reference.load_state_dict(model.state_dict())
    rows = torch.randint(3, 300, (4, 33), generator=torch.Generator().manual_seed(0))
    batch = [(rows[:, :-1], rows[:, 1:])]
    settings = {"precision": "bf16", "device": "cpu", "seq_len": 32, "micro_batch": 4}
    world = distributed.setup("cpu", parallel="fsdp")
    try:
        fsdp = TrainStep(model, TrainConfig(parallel="fsdp", **settings), world)
        computed_with = set()
        model.layers[0].register_forward_pre_hook(
            lambda block, args: computed_with.update(p.dtype for p in block.parameters()))
        sharded = fsdp(batch, lr=1e-3)
        plain = TrainStep(reference, TrainConfig(**settings), world)(batch, lr=1e-3)
    finally:
        distributed.teardown(world)
    assert computed_with == {torch.bfloat16}
    assert {(type(p).__name__, p.dtype) for p in model.parameters()} == {("DTensor", torch.float32)}
    assert sharded.applied and sharded.loss == pytest.approx(plain.loss, abs=2e-2)


@pytest.mark.parametrize("argv, message", [
    (["parallel=zero"], "parallel must be one of ('ddp', 'fsdp')"),
    (["parallel=fsdp", "precision=fp16"], "parallel=fsdp trains in bf16 or fp32"),
])
def test_fsdp_settings_refused_in_one_line(shard_dir, trained_tokenizer_dir, tmp_path, capsys,
                                           argv, message):
    from hslm.apps.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(processes.run_args(shard_dir, trained_tokenizer_dir, tmp_path) + argv)
    errors = processes.error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(errors) == 1 and message in errors[0]


def test_fsdp_does_not_continue_a_ddp_checkpoint(runs, shard_dir, trained_tokenizer_dir,
                                                 tmp_path, capsys):
    from hslm.apps.train import main

    shutil.copytree(runs / "ddp" / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(SystemExit) as exit_info:
        main(processes.run_args(shard_dir, trained_tokenizer_dir, tmp_path, parallel="fsdp",
                                resume="force", **COMMON))
    errors = processes.error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(errors) == 1
    assert "is a DDP one (.pt): parallel=fsdp continues sharded checkpoints (.dcp) only" in errors[0]
