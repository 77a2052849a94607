"""Training as separate processes: two-rank DDP (gloo) against one rank, SIGKILL at a random
step and auto-resume, SIGTERM pre-emption, and a kill in the middle of a checkpoint write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from hslm.train.checkpoint import load_checkpoint, load_latest
from train_factory import small_run

# One thread per process: runs compared bit for bit must reduce in the same order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Outside the checkout: `python -m` puts the working directory first on sys.path, and the
# checkout's hslm/ folder (without apps/, which installs as hslm.apps) would shadow the package.
CWD = tempfile.gettempdir()
TRAIN = [sys.executable, "-m", "hslm.apps.train", "--samples", "0"]


def run_args(shard_dir, tokenizer_dir, out, **overrides) -> list[str]:
    return [f"{key}={value}" for key, value in
            small_run(shard_dir, tokenizer_dir, out, **overrides).items()]


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=ENV, cwd=CWD, capture_output=True, text=True, timeout=300,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out)["model"]


def losses_by_step(out) -> dict[int, float]:
    """The loss of each step (logged once: a resume drops the records after its checkpoint)."""
    records = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    steps = [record["step"] for record in records]
    assert steps == sorted(set(steps)), steps
    return {record["step"]: record["loss"] for record in records}


def test_two_rank_ddp_equals_one_rank(shard_dir, trained_tokenizer_dir, tmp_path):
    # bf16 autocast on CPU, as GPUs would run; the global batch (256 tokens) is 2 micro-steps
    # on one rank and 1 micro-step on each of two ranks, over the same sequences.
    common = {"precision": "bf16", "steps": 4, "eval_every": 2, "checkpoint_every": 4}
    run(TRAIN + run_args(shard_dir, trained_tokenizer_dir, tmp_path / "one", **common))
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "hslm.apps.train", "--samples", "0"]
        + run_args(shard_dir, trained_tokenizer_dir, tmp_path / "two", **common))
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    # Stated tolerance: 1e-6. Per-micro-batch work is identical; only the order of the
    # gradient sum differs (in practice the results are bit-identical).
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-6, rtol=0)
    for step, loss in losses_by_step(tmp_path / "one").items():
        assert losses_by_step(tmp_path / "two")[step] == pytest.approx(loss, abs=1e-6)
    ranks = [json.loads((tmp_path / "two" / "logs" / f"rank_{r}.jsonl").read_text().splitlines()[-1])
             for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["local_loss"] != ranks[1]["local_loss"]


def test_sigkill_at_random_step_then_resume_is_bit_identical(shard_dir, trained_tokenizer_dir,
                                                             tmp_path):
    steps = 40
    common = {"steps": steps, "checkpoint_every": 1, "eval_every": 10, "keep_last": 2}
    run(TRAIN + run_args(shard_dir, trained_tokenizer_dir, tmp_path / "straight", **common))

    kill_after = random.Random().randint(3, 25)
    out = tmp_path / "killed"
    process = subprocess.Popen(TRAIN + run_args(shard_dir, trained_tokenizer_dir, out, **common),
                               cwd=CWD, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_after}"
    killed_at = load_latest(out / "checkpoints")["step"]
    assert killed_at < steps

    resumed = run(TRAIN + run_args(shard_dir, trained_tokenizer_dir, out, **common))
    assert "taking over" in resumed.stderr  # the killed run's lock
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(out)
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), f"{name} differs (killed after step {killed_at})"
    assert losses_by_step(out) == losses_by_step(tmp_path / "straight")


def test_sigterm_checkpoints_and_exits(shard_dir, trained_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    args = TRAIN + run_args(shard_dir, trained_tokenizer_dir, out, steps=5000, warmup=10,
                            checkpoint_every=1000, eval_every=1000)
    process = subprocess.Popen(args, env=ENV, cwd=CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    second = run(args, check=False)  # the same folder while the first run is training
    assert second.returncode == 2 and "used by another run" in second.stderr, second.stderr
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert "stopped by SIGTERM" in stdout and "Traceback" not in stderr
    state = load_latest(out / "checkpoints")
    last_logged = max(losses_by_step(out))
    assert 3 <= state["step"] == last_logged < 1000


KILL_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
import torch
from hslm.train.checkpoint import save_checkpoint

folder = Path(sys.argv[1])
save_checkpoint(folder, 1, {"step": 1, "weights": torch.ones(1000)}, keep_last=2)

def dying_save(state, file):
    file.write(b"half a checkpoint")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
save_checkpoint(folder, 2, {"step": 2, "weights": torch.zeros(1000)}, keep_last=2)
"""


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    done = run([sys.executable, "-c", KILL_WHILE_SAVING, str(tmp_path)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert (tmp_path / "step_000002.pt.tmp").exists()  # the interrupted write
    assert not (tmp_path / "step_000002.pt").exists()
    state = load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(1000))


# Runs hslm-train with rank 0's checkpoint writes from step FAIL_AT on failing as on a full disk
# (FAIL_HOW=enospc) or never returning (FAIL_HOW=hang).
FAILING_DISK = """
import errno, os, sys, time
from hslm.train import checkpoint

real_write = checkpoint.write_atomically

def failing_write(path, write):
    if path.suffix == ".pt" and int(path.stem.split("_")[1]) >= int(os.environ["FAIL_AT"]):
        if os.environ["FAIL_HOW"] == "hang":
            time.sleep(600)

        def part_then_full(file):
            file.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real_write(path, part_then_full)
    return real_write(path, write)

checkpoint.write_atomically = failing_write
from hslm.apps.train import main
main(sys.argv[1:])
"""


def start_two_ranks(tmp_path, args: list[str], **env) -> list[subprocess.Popen]:
    """Two gloo ranks of FAILING_DISK (see start_ranks)."""
    script = tmp_path / "failing_disk.py"
    script.write_text(FAILING_DISK)
    return start_ranks([sys.executable, str(script), "--samples", "0"] + args, **env)


def start_ranks(command: list[str], **env) -> list[subprocess.Popen]:
    """Two gloo ranks of `command`, started as torchrun would but without it: torchrun ends
    every rank when one exits, which would hide whether the others stop by themselves, and
    starts them in sessions of their own, out of reach of a test's SIGKILL."""
    import socket

    with socket.socket() as probe:  # a free port for the ranks to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [subprocess.Popen(command, cwd=CWD,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**ENV, **env, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                  "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                  "MASTER_PORT": str(port)})
            for rank in (0, 1)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_full_disk_under_ddp_stops_every_rank(shard_dir, trained_tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    ranks = start_two_ranks(tmp_path, run_args(shard_dir, trained_tokenizer_dir, out, steps=6,
                                               checkpoint_every=2, collective_timeout=60),
                            FAIL_AT="4", FAIL_HOW="enospc")
    try:
        outputs = [process.communicate(timeout=120)[1] for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    for process, stderr in zip(ranks, outputs):
        # Both stop at once, by themselves (not after the 60 s timeout), with one line.
        assert process.returncode == 2 and "Traceback" not in stderr, stderr
        errors = error_lines(stderr)
        assert len(errors) == 1 and "checkpoint of step 4" in errors[0] and \
            "No space left on device" in errors[0], stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000002.pt", "step_000002.pt.sha256"]
    assert load_latest(out / "checkpoints")["step"] == 2


def test_a_hung_rank_stops_the_others_after_the_collective_timeout(shard_dir,
                                                                   trained_tokenizer_dir,
                                                                   tmp_path):
    out = tmp_path / "run"
    ranks = start_two_ranks(tmp_path, run_args(shard_dir, trained_tokenizer_dir, out, steps=6,
                                               checkpoint_every=2, collective_timeout=5),
                            FAIL_AT="4", FAIL_HOW="hang")
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 4):
            assert ranks[1].poll() is None and time.time() < deadline, ranks[1].communicate()
            time.sleep(0.05)
        hung_at = time.time()  # rank 0 is in its step-4 checkpoint write, for ten minutes
        _, stderr = ranks[1].communicate(timeout=60)
        waited = time.time() - hung_at
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    assert ranks[1].returncode == 2 and waited < 5 + 20, (waited, stderr)
    errors = error_lines(stderr)
    assert len(errors) == 1 and "collective_timeout=5" in errors[0] and \
        "Traceback" not in stderr, stderr
