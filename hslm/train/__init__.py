"""Training: config, checkpoints and the loop (single process; DDP is the next step)."""
