"""Token shards, checkpoints and the training loop in one process: determinism, resume,\ncorruption, precision, loss, metrics, errors."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hslm.config import ConfigError, ModelConfig
from hslm.data.shards import ShardError, ShardWriter, TokenShards
from hslm.model import Gemma3
from hslm.train import loop
from hslm.train import loss as loss_module
from hslm.train.checkpoint import CheckpointError, best_checkpoint, load_checkpoint, load_latest
from hslm.train.config import TrainConfig
from hslm.train.distributed import World
from hslm.train.evaluate import evaluate, token_byte_lengths
from hslm.train.loop import TrainingError, learning_rate, train
from hslm.train.loss import IGNORE, cross_entropy_sum, per_token_losses
from hslm.train.metrics import flops_per_token, peak_tflops
from train_factory import small_run as small_values


def small_run(shard_dir, tokenizer_dir, out, **overrides) -> TrainConfig:
    return TrainConfig(**small_values(shard_dir, tokenizer_dir, out, **overrides))


# ---------------------------------------------------------------- shards
def test_shards_round_trip_and_dtype(tmp_path):
    writer = ShardWriter(tmp_path / "small", "abc", vocab_size=8000, shard_tokens=6)
    docs = [[5, 6, 7], [8, 9], [7999, 10, 11, 12, 13]]
    for doc in docs:
        writer.add_document(doc)
    writer.close()
    shards = TokenShards(tmp_path / "small")
    assert shards.dtype == np.uint16 and len(shards.files) >= 2
    expected = [t for doc in docs for t in [2, *doc, 1]]
    assert shards._window(0, len(expected)).tolist() == expected

    big = ShardWriter(tmp_path / "big", "abc", vocab_size=262_144)
    big.add_document([70_000, 200_000])  # would wrap around in uint16
    big.close()
    assert TokenShards(tmp_path / "big")._window(0, 4).tolist() == [2, 70_000, 200_000, 1]

    with pytest.raises(ShardError, match="outside the vocabulary"):
        ShardWriter(tmp_path / "bad", "abc", vocab_size=100).add_document([100])


def test_batches_depend_only_on_seed_step_and_rank(shard_dir):
    shards = TokenShards(shard_dir)
    a = shards.batch(step=3, index=1, batch_size=4, seq_len=16, seed=7)
    b = TokenShards(shard_dir).batch(step=3, index=1, batch_size=4, seq_len=16, seed=7)
    c = shards.batch(step=3, index=2, batch_size=4, seq_len=16, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are inputs shifted by one


def test_damaged_shards_are_refused(shard_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    first = min(broken.glob("train_*.bin"))
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(ShardError, match="wrong size"):
        TokenShards(broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        TokenShards(broken)
    with pytest.raises(ShardError, match="no manifest"):
        TokenShards(tmp_path)


# ---------------------------------------------------------------- training
def test_learning_rate_schedule():
    config = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 100) == pytest.approx(0.1)
    assert all(learning_rate(config, s) >= learning_rate(config, s + 1) for s in range(10, 99))




def test_global_batch_sets_accumulation():
    config = TrainConfig(batch_tokens=1024, micro_batch=4, seq_len=32)
    assert [config.fit_batch(ranks) for ranks in (1, 2, 8)] == [(8, 1024), (4, 1024), (1, 1024)]
    assert config.fit_batch(3) == (3, 1152)  # 1024 / 384 = 2.67 micro-steps: the nearest, 3
    assert config.fit_batch(5) == (2, 1280)  # 1.6
    assert config.fit_batch(16) == (1, 2048)  # never less than one micro-step
    # the shipped GPU config on 8, 12 and 14 GPUs
    gpu = TrainConfig.load("configs/hindi-270m-gpu.yaml")
    per_gpu = gpu.micro_batch * gpu.seq_len
    assert gpu.fit_batch(8) == (2, gpu.batch_tokens)
    assert gpu.fit_batch(12) == (1, 12 * per_gpu) and gpu.fit_batch(14) == (1, 14 * per_gpu)


def test_rounded_batch_and_many_epochs_warn(shard_dir, trained_tokenizer_dir, trained_tokenizer,
                                            tmp_path, capsys, monkeypatch):
    held = TokenShards(shard_dir, "train").num_tokens
    # the sample shards are small: a limit between 2 and 3 steps of 256 tokens
    monkeypatch.setattr(loop, "EPOCH_WARNING", 640 / held)
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path, batch_tokens=300, steps=3,
                       warmup=1)
    result = train(config, trained_tokenizer)
    err = capsys.readouterr().err
    assert "batch_tokens 300 is not a multiple of micro_batch x seq_len x ranks = 4 x 32 x 1: " \
           "training with the nearest, 256 (2 micro-steps)" in err
    assert result.tokens == 3 * 256
    assert f"3 steps of 256 tokens see the training data {3 * 256 / held:.1f} times" in err
    train(small_run(shard_dir, trained_tokenizer_dir, tmp_path / "quiet", steps=2, warmup=1),
          trained_tokenizer)
    assert "warning" not in capsys.readouterr().err  # a fitting batch, under the epoch limit


def test_attention_kernel_setting(shard_dir, trained_tokenizer_dir, trained_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="attention must be one of"):
        TrainConfig(attention="flash")
    with pytest.raises(ConfigError, match="attention=flex needs a GPU to train"):
        TrainConfig(attention="flex", device="cpu")
    if not torch.cuda.is_available():  # device=auto resolves to the CPU
        with pytest.raises(TrainingError, match="attention=flex needs a GPU to train"):
            train(small_run(shard_dir, trained_tokenizer_dir, tmp_path, attention="flex",
                            device="auto"), trained_tokenizer)


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, b.state_dict()[name]) for name, x in a.state_dict().items())


def metric_lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resumed_run_equals_uninterrupted_run(shard_dir, trained_tokenizer_dir, trained_tokenizer,
                                              tmp_path, precision):
    straight = train(small_run(shard_dir, trained_tokenizer_dir, tmp_path / "straight",
                               precision=precision), trained_tokenizer)
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "resumed", precision=precision)
    assert train(config, trained_tokenizer, stop_at_step=4).step == 4  # as if pre-empted
    resumed = train(config, trained_tokenizer)  # the same command again: resumes
    assert resumed.step == 6 and resumed.tokens == straight.tokens == 6 * 256
    assert weights_equal(straight.model, resumed.model)
    runs = {run: metric_lines(tmp_path / run / "metrics.jsonl") for run in ("straight", "resumed")}
    assert [r["loss"] for r in runs["straight"]] == [r["loss"] for r in runs["resumed"]]
    if precision == "fp16":  # the grad scaler's state came back with the checkpoint
        assert [r["loss_scale"] for r in runs["straight"]] == [r["loss_scale"] for r in runs["resumed"]]
        assert load_latest(tmp_path / "resumed" / "checkpoints")["scaler"]["scale"] > 0


def test_checkpoint_contents_and_retention(shard_dir, trained_tokenizer_dir, trained_tokenizer,
                                           tmp_path, monkeypatch):
    # Validation losses made to be best at step 2, so it must outlive keep_last=2.
    fake_losses = iter([5.0, 3.0, 4.0, 6.0, 7.0, 8.0])
    real_evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {**real_evaluate(*a, **k),
                                                           "val_loss": next(fake_losses)})
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path, eval_every=1,
                       checkpoint_every=1, keep_last=2)
    train(config, trained_tokenizer)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == [
        "step_000002.pt", "step_000005.pt", "step_000006.pt"]
    assert best_checkpoint(folder)["step"] == 2
    state = load_latest(folder)
    for key in ("model", "optimizer", "scaler", "step", "tokens", "rng", "data", "config",
                "model_config", "tokenizer_sha256", "tokenizer_model"):
        assert key in state, key
    assert state["tokenizer_sha256"] == trained_tokenizer.sha256
    assert not any(name.startswith("_orig_mod") for name in state["model"])


def test_corrupted_checkpoint_falls_back_to_previous(shard_dir, trained_tokenizer_dir,
                                                     trained_tokenizer, tmp_path, capsys):
    train(small_run(shard_dir, trained_tokenizer_dir, tmp_path, keep_last=3), trained_tokenizer)
    newest = tmp_path / "checkpoints" / "step_000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    assert load_latest(tmp_path / "checkpoints")["step"] == 3
    assert "step_000006.pt: incomplete or corrupted" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(newest)
    (tmp_path / "checkpoints" / "step_000003.pt.sha256").unlink()  # never marked complete
    assert load_latest(tmp_path / "checkpoints") is None


def test_non_finite_steps_are_skipped_then_abort(shard_dir, trained_tokenizer_dir,
                                                 trained_tokenizer, tmp_path, monkeypatch):
    real_loss = loss_module.cross_entropy_sum
    calls = {"n": 0}

    def sometimes_nan(*args):
        calls["n"] += 1
        value = real_loss(*args)
        return value * float("nan") if calls["n"] in (3, 4) else value  # step 2's micro-steps

    monkeypatch.setattr(loss_module, "cross_entropy_sum", sometimes_nan)
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path, max_nonfinite=3)
    result = train(config, trained_tokenizer)
    assert result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

    monkeypatch.setattr(loss_module, "cross_entropy_sum",
                        lambda *args: real_loss(*args) * float("nan"))
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "nan", max_nonfinite=3)
    with pytest.raises(TrainingError, match="3 steps in a row"):
        train(config, trained_tokenizer)


def test_chunked_cross_entropy_equals_full():
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (50,))
    targets[::7] = IGNORE
    full = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE,
                                             reduction="sum")
    full_grads = torch.autograd.grad(full, (hidden, weight))
    chunked = cross_entropy_sum(hidden, weight, targets, chunk_tokens=8)
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
    torch.testing.assert_close(chunked, full)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b)
    assert per_token_losses(hidden, weight, targets, 8)[::7].eq(0).all()


def test_validation_bits_per_byte(shard_dir, trained_tokenizer):
    import math

    model = Gemma3(ModelConfig.preset("tiny", vocab_size=trained_tokenizer.vocab_size))
    shards = TokenShards(shard_dir, "val")
    world = World(0, 1, 0, torch.device("cpu"))
    lengths = token_byte_lengths(trained_tokenizer)
    result = evaluate(model, shards, world, 2, 4, 32, 1, 64, lengths, contextlib.nullcontext())
    # By hand: per-token losses of the same two batches, text tokens only.
    nats = nbytes = 0.0
    for index in range(2):
        inputs, targets = shards.batch(0, index, 4, 32, 1)
        logits = model(inputs).flatten(0, 1)
        losses = torch.nn.functional.cross_entropy(logits, targets.flatten(), reduction="none")
        sizes = torch.tensor([len(trained_tokenizer.piece_bytes(int(t))) for t in targets.flatten()])
        nats += losses[sizes > 0].sum().item()
        nbytes += sizes.sum().item()
    assert result["val_bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    assert result["val_ppl"] == pytest.approx(math.exp(result["val_loss"]))
    assert lengths[trained_tokenizer.eos_id] == 0 and lengths[trained_tokenizer.bos_id] == 0


def test_flops_per_token_and_peaks(monkeypatch):
    config = ModelConfig.preset("hindi-270m")
    counts = config.param_counts()
    flops = flops_per_token(config, 1024)
    # 6 per matmul weight (embedding lookup excluded, output head included) + attention.
    assert flops > 6 * (counts["non_embedding"] + config.hidden_size * config.vocab_size)
    assert flops_per_token(config, 2048) - flops_per_token(config, 1024) == pytest.approx(
        3 * 12 * config.n_heads * config.head_dim * 1024)  # only the 3 global layers grow
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A30")
    assert peak_tflops(torch.device("cuda", 0), torch.bfloat16) == 165.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 PCIe")
    assert peak_tflops(torch.device("cuda", 0), torch.bfloat16) == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Unknown GPU 9000")
    assert peak_tflops(torch.device("cuda", 0), torch.bfloat16) is None
    assert peak_tflops(torch.device("cuda", 0), torch.bfloat16, configured=100.0) == 100.0
    assert 0 < peak_tflops(torch.device("cpu"), torch.float32) < 100  # measured on this CPU


def test_train_command_end_to_end(shard_dir, trained_tokenizer_dir, tmp_path, capsys):
    from hslm.apps.common import load_model_folder
    from hslm.apps.train import main

    main(["data=" + str(shard_dir), "tokenizer=" + str(trained_tokenizer_dir),
          "out=" + str(tmp_path), "steps=4", "seq_len=32", "micro_batch=4", "warmup=1",
          "batch_tokens=128", "eval_every=2", "eval_batches=1", "precision=bf16",
          "--samples", "1"])
    out = capsys.readouterr().out
    assert '"step": 4' in out and '"val_bpb"' in out and "→" in out
    folder_model, tokenizer = load_model_folder(tmp_path / "model")
    assert folder_model.config.vocab_size == tokenizer.vocab_size
    # The run folder and a checkpoint file load too, with the same weights.
    for path in (tmp_path, tmp_path / "checkpoints" / "step_000004.pt"):
        model, checkpoint_tokenizer = load_model_folder(path)
        assert weights_equal(model, folder_model) and checkpoint_tokenizer.sha256 == tokenizer.sha256
    records = metric_lines(tmp_path / "metrics.jsonl")
    assert records[-1]["step"] == 4 and records[-1]["mfu"] > 0
    assert metric_lines(tmp_path / "logs" / "rank_0.jsonl")[-1]["rank"] == 0


def test_compiled_training_saves_plain_weights(shard_dir, trained_tokenizer_dir,
                                               trained_tokenizer, tmp_path):
    pytest.importorskip("torch._inductor")
    config = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "compiled", compile=True,
                       steps=2, warmup=1, checkpoint_every=2, eval_every=2)
    compiled = train(config, trained_tokenizer)
    plain = train(small_run(shard_dir, trained_tokenizer_dir, tmp_path / "plain", steps=2,
                            warmup=1, checkpoint_every=2, eval_every=2), trained_tokenizer)
    state = load_latest(tmp_path / "compiled" / "checkpoints")["model"]
    assert set(state) == set(plain.model.state_dict())  # no _orig_mod. prefixes
    losses = [[r["loss"] for r in metric_lines(tmp_path / run / "metrics.jsonl")]
              for run in ("compiled", "plain")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # Adam turns tiny numeric differences of near-zero gradients into up to lr per step.
    for name, tensor in plain.model.state_dict().items():
        difference = (compiled.model.state_dict()[name] - tensor).abs()
        assert difference.mean() < 1e-5 and difference.max() <= 2 * config.lr * config.steps, name


@pytest.mark.parametrize("argv, message", [
    (["steps=0"], "steps must be a positive integer"),
    (["bogus=1"], "unknown training key"),
    (["precision=fp8"], "precision"),
    (["compile=maybe"], "compile must be true or false"),
    (["resume=maybe"], "resume must be one of"),
    (["collective_timeout=0"], "collective_timeout must be a positive integer"),
    (["attention=flex", "device=cpu"], "attention=flex needs a GPU to train"),
    (["seq_len=512", "batch_tokens=4096"], "exceeds the model's context"),
    (["init_from=/nonexistent"], "init_from: model not found"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
])
def test_train_command_errors(shard_dir, trained_tokenizer_dir, tmp_path, capsys, argv, message):
    from hslm.apps.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["data=" + str(shard_dir), "tokenizer=" + str(trained_tokenizer_dir),
                     "out=" + str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_benchmark_refuses_without_cuda():
    script = Path(__file__).parent.parent / "benchmarks" / "gpu_train.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_train.py needs a CUDA GPU and PyTorch sees none (CPU figures: "
        "benchmarks/train_speed.py --attention-paths)"]
