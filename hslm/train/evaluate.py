"""Validation: loss, perplexity, bits per byte, and a few sampled generations.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so
it compares models with different tokenizers. Tokens that are no text (control tokens:
<eos>, <end_of_turn>, ...) count in neither sum, as in nanochat.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch

from hslm.generate import SamplingParams, generate
from hslm.model import Gemma3
from hslm.tokenizer import Tokenizer
from hslm.train.distributed import World, all_reduce_sum
from hslm.train.loss import IGNORE, per_token_losses

PRETRAIN_PROMPTS = ("भारत की राजधानी", "एक दिन", "Kal subah")
SFT_PROMPTS = ("भारत की राजधानी क्या है?", "गंगा नदी कहाँ से निकलती है?")


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    return torch.tensor([len(tokenizer.piece_bytes(i)) for i in range(tokenizer.vocab_size)])


@torch.no_grad()
def evaluate(model: Gemma3, data, world: World, batches: int, batch_size: int, seq_len: int,
             seed: int, chunk_tokens: int, byte_lengths: torch.Tensor,
             autocast: AbstractContextManager) -> dict:
    """Loss over the same `batches` validation batches every time, spread over the ranks. Every
    rank runs as many forwards (under FSDP each gathers the blocks' shards with the others): a
    rank short of one repeats batch 0 and does not count it."""
    was_training = model.training
    model.eval()
    loss_sum = tokens = text_loss_sum = text_bytes = 0.0
    for start in range(0, batches, world.world_size):
        index = start + world.rank
        inputs, targets = (t.to(world.device) for t in data.batch(
            0, index if index < batches else 0, batch_size, seq_len, seed))
        with autocast:
            hidden = model.hidden_states(inputs)
        if index >= batches:
            continue
        targets = targets.flatten()
        losses = per_token_losses(hidden.flatten(0, 1), model.output_weight, targets,
                                  chunk_tokens)
        counted = targets != IGNORE
        nbytes = byte_lengths.to(targets.device)[targets.clamp(min=0)] * counted
        loss_sum += losses.sum().item()
        tokens += counted.sum().item()
        text_loss_sum += losses[nbytes > 0].sum().item()
        text_bytes += nbytes.sum().item()
    loss_sum, tokens, text_loss_sum, text_bytes = all_reduce_sum(
        world, [loss_sum, tokens, text_loss_sum, text_bytes])
    model.train(was_training)
    loss = loss_sum / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": text_loss_sum / math.log(2) / max(text_bytes, 1)}


def sample_generations(model: Gemma3, tokenizer: Tokenizer, task: str, count: int,
                       max_new_tokens: int = 32) -> list[str]:
    """`count` prompt → continuation lines (fixed seeds, so runs are comparable)."""
    prompts = PRETRAIN_PROMPTS if task == "pretrain" else SFT_PROMPTS
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=0)
    samples = []
    for prompt in prompts[:count]:
        if task == "sft":
            ids = tokenizer.encode_chat([{"role": "user", "content": prompt}])
            text = generate(model, tokenizer, ids, params).text
        else:
            text = generate(model, tokenizer, prompt, params).text
        samples.append(f"{prompt} → {text}")
    return samples
