"""Token shards, checkpoints and the training loop: determinism, resume, corruption, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hslm.config import ModelConfig
from hslm.data.shards import ShardError, ShardWriter, TokenShards, write_shards_from_texts
from hslm.train import loop
from hslm.train.checkpoint import load_latest
from hslm.train.config import TrainConfig
from hslm.train.loop import TrainingError, learning_rate, train


@pytest.fixture(scope="module")
def shard_dir(trained_tokenizer, hindi_data_dir, tmp_path_factory):
    lines = (hindi_data_dir / "stories_bhaav_sentences.txt").read_text("utf-8").splitlines()[:800]
    folder = tmp_path_factory.mktemp("shards")
    write_shards_from_texts(lines, trained_tokenizer, folder, val_fraction=0.1)
    return folder


def small_run(shard_dir, tokenizer_dir, out, **overrides) -> tuple[TrainConfig, ModelConfig]:
    values = {"data": str(shard_dir), "tokenizer": str(tokenizer_dir), "out": str(out),
              "steps": 6, "seq_len": 32, "micro_batch": 4, "grad_accum": 2, "warmup": 2,
              "eval_every": 3, "eval_batches": 1, "checkpoint_every": 3, "log_every": 1,
              "precision": "fp32", **overrides}
    config = TrainConfig(**values)
    return config, ModelConfig.preset("tiny", vocab_size=8000)


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
    a = shards.batch(step=3, micro_step=1, rank=0, batch_size=4, seq_len=16, seed=7)
    b = TokenShards(shard_dir).batch(step=3, micro_step=1, rank=0, batch_size=4, seq_len=16, seed=7)
    c = shards.batch(step=3, micro_step=1, rank=1, batch_size=4, seq_len=16, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are inputs shifted by one


def test_damaged_shards_are_refused(shard_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    first = sorted(broken.glob("train_*.bin"))[0]
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


def test_resumed_run_equals_uninterrupted_run(shard_dir, trained_tokenizer_dir, tmp_path):
    config, model_config = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "straight")
    straight = train(config, model_config)

    config, _ = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "resumed")
    assert train(config, model_config, stop_at_step=4).step == 4  # as if pre-empted after 4
    resumed = train(config, model_config)  # the same command again: resumes
    assert resumed.step == 6
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    losses = {run: [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").open()]
              for run in ("straight", "resumed")}
    assert losses["straight"] == losses["resumed"]


def test_corrupted_checkpoint_falls_back_to_previous(shard_dir, trained_tokenizer_dir, tmp_path):
    config, model_config = small_run(shard_dir, trained_tokenizer_dir, tmp_path, keep_last=3)
    train(config, model_config)
    newest = tmp_path / "checkpoints" / "step_000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    state = load_latest(tmp_path / "checkpoints")
    assert state["step"] == 3
    (tmp_path / "checkpoints" / "step_000003.pt.sha256").unlink()  # never marked complete
    assert load_latest(tmp_path / "checkpoints") is None


def test_non_finite_steps_are_skipped_then_abort(shard_dir, trained_tokenizer_dir, tmp_path,
                                                 monkeypatch):
    config, model_config = small_run(shard_dir, trained_tokenizer_dir, tmp_path, max_nonfinite=3)
    real_loss = loop.loss_of
    calls = {"n": 0}

    def sometimes_nan(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if calls["n"] in (3, 4) else loss  # step 2 is poisoned

    monkeypatch.setattr(loop, "loss_of", sometimes_nan)
    result = train(config, model_config)
    assert result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

    monkeypatch.setattr(loop, "loss_of", lambda *args: real_loss(*args) * float("nan"))
    config, _ = small_run(shard_dir, trained_tokenizer_dir, tmp_path / "nan", max_nonfinite=3)
    with pytest.raises(TrainingError, match="3 steps in a row"):
        train(config, model_config)


def test_train_command_end_to_end(shard_dir, trained_tokenizer_dir, tmp_path, capsys):
    from hslm.apps.common import load_model_folder
    from hslm.apps.train import main

    main(["data=" + str(shard_dir), "tokenizer=" + str(trained_tokenizer_dir),
          "out=" + str(tmp_path), "steps=4", "seq_len=32", "micro_batch=4", "warmup=1",
          "eval_every=2", "eval_batches=1", "precision=fp32", "--samples", "1"])
    out = capsys.readouterr().out
    assert '"step": 4' in out and "→" in out
    model, tokenizer = load_model_folder(tmp_path / "model")
    assert model.config.vocab_size == tokenizer.vocab_size


@pytest.mark.parametrize("argv, message", [
    (["steps=0"], "steps must be a positive integer"),
    (["bogus=1"], "unknown training key"),
    (["precision=fp8"], "precision"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
])
def test_train_command_errors(shard_dir, trained_tokenizer_dir, tmp_path, capsys, argv, message):
    from hslm.apps.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["data=" + str(shard_dir), "tokenizer=" + str(trained_tokenizer_dir)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
