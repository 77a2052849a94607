"""Supervised fine-tuning data: conversations in Gemma's chat format, loss on the model's turns.

Accepted JSONL records (one per line):
    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}
    {"instruction": ..., "input": ... (optional), "response": ...}
    {"question": ..., "context": ... (optional), "answer": ...}

A conversation is tokenized as inference tokenizes a prompt (`encode_chat`): the template's
structure gives the control ids, every message is text, so a "<end_of_turn>" written in a
message cannot end its turn or forge another. Each model turn's text is tokenized on its own,
after the generation prompt "<start_of_turn>model\n", so training sees the token boundaries
that generation will see. Targets are IGNORE on every prompt token and on padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hslm.chat import chat_parts, encode_chat_parts
from hslm.tokenizer import Tokenizer, TokenizerError
from hslm.train.loss import IGNORE


class SFTDataError(ValueError):
    """Conversation data that cannot be used (message says which file and line)."""


def to_messages(record: dict) -> list[dict]:
    """The conversation of one JSONL record in any of the accepted shapes."""
    if "messages" in record:
        return record["messages"]
    if "instruction" in record and "response" in record:
        prompt = record["instruction"]
        if record.get("input"):
            prompt += "\n\n" + record["input"]
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": record["response"]}]
    if "question" in record and "answer" in record:
        prompt = record["question"]
        if record.get("context"):
            prompt = record["context"] + "\n\n" + prompt
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": record["answer"]}]
    raise KeyError("needs 'messages', 'instruction'+'response' or 'question'+'answer'")


def tokenize_conversation(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """(ids, trained) where trained[i] says whether ids[i] is part of a model turn."""
    parts = chat_parts(messages, add_generation_prompt=False)
    answers = [index for index, part in enumerate(parts) if part.answer]
    if not answers:
        raise TokenizerError("the conversation has no assistant turn to learn from")
    parts = parts[:answers[-1] + 1]  # turns after the last answer teach nothing
    ids: list[int] = []
    trained: list[bool] = []
    for part, piece in zip(parts, encode_chat_parts(tokenizer, parts)):
        ids += piece
        trained += [part.answer] * len(piece)
    return ids, trained


def read_conversations(path: str | Path) -> list[list[dict]]:
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise SFTDataError(f"no JSONL conversation file(s) at {path}")
    conversations = []
    for file in files:
        with open(file, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    conversations.append(to_messages(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise SFTDataError(f"{file}:{number}: not a conversation record ({err})") from None
    if not conversations:
        raise SFTDataError(f"{path} holds no conversations")
    return conversations


class ConversationSet:
    """Tokenized conversations of one split; batches are right-padded to seq_len, longer
    conversations are cut, and which conversations make a batch depends only on
    (seed, step, index) — the same contract as TokenShards."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, split: str = "train",
                 val_every: int = 20):
        conversations = read_conversations(path)
        # Every val_every-th conversation is held out; tiny sets keep at least one of each.
        chosen = [c for i, c in enumerate(conversations)
                  if (i % val_every == val_every - 1) == (split == "val")] or conversations[:1]
        self.pad_id = tokenizer.pad_id
        self.examples = []
        for number, messages in enumerate(chosen):
            try:
                self.examples.append(tokenize_conversation(tokenizer, messages))
            except TokenizerError as err:
                raise SFTDataError(f"{path}: conversation {number}: {err}") from None
        self.num_tokens = sum(sum(trained) for _, trained in self.examples)

    def example(self, number: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, trained = self.examples[number]
        ids, trained = ids[:seq_len + 1], trained[:seq_len + 1]
        targets = [t if keep else IGNORE for t, keep in zip(ids[1:], trained[1:])]
        pad = seq_len + 1 - len(ids)
        return (torch.tensor(ids[:-1] + [self.pad_id] * pad),
                torch.tensor(targets + [IGNORE] * pad))

    def batch(self, step: int, index: int, batch_size: int, seq_len: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, step, index])
        rows = [self.example(int(n), seq_len)
                for n in rng.integers(0, len(self.examples), size=batch_size)]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
