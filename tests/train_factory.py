"""Training settings shared by the training tests."""

from __future__ import annotations


def small_run(shard_dir, tokenizer_dir, out, **overrides) -> dict:
    """Config values for a run of the tiny model that takes about a second."""
    return {"data": str(shard_dir), "tokenizer": str(tokenizer_dir), "out": str(out),
            "steps": 6, "seq_len": 32, "micro_batch": 4, "batch_tokens": 256, "warmup": 2,
            "eval_every": 3, "eval_batches": 2, "eval_samples": 0, "checkpoint_every": 3,
            "log_every": 1, "precision": "fp32", "device": "cpu", "peak_tflops": 1.0,
            **overrides}
