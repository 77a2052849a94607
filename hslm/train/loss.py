"""The training objective: next-token cross-entropy, computed a chunk of positions at a time.

Full logits for a micro-batch are [tokens, vocab] in fp32: 8 x 1024 tokens x 50k vocab is
1.6 GB, and their gradient as much again. Chunks are recomputed in the backward pass
(activation checkpointing), so only one chunk of logits lives at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hslm.model import Gemma3

IGNORE = -100  # target id that adds no loss (prompt tokens in SFT, padding)


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      chunk_tokens: int) -> torch.Tensor:
    """Summed cross-entropy of `targets` [N] under logits hidden [N, H] @ weight.T."""
    if hidden.shape[0] <= chunk_tokens:
        return _chunk_loss(hidden, weight, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss, hidden[start:end], weight, targets[start:end],
                                   use_reentrant=False)
    return total


class LanguageModelLoss(nn.Module):
    """The model plus its loss in one forward, the unit DDP and torch.compile wrap."""

    def __init__(self, model: Gemma3, chunk_tokens: int):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self.model.hidden_states(inputs)
        return cross_entropy_sum(hidden.flatten(0, 1), self.model.output_weight,
                                 targets.flatten(), self.chunk_tokens)


@torch.no_grad()
def per_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     chunk_tokens: int) -> torch.Tensor:
    """Cross-entropy of each target [N] (0 where the target is IGNORE), without gradients."""
    return torch.cat([
        F.cross_entropy(F.linear(hidden[start:start + chunk_tokens], weight).float(),
                        targets[start:start + chunk_tokens], ignore_index=IGNORE,
                        reduction="none")
        for start in range(0, hidden.shape[0], chunk_tokens)])
