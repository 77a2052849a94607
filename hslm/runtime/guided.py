"""Guided (constrained) decoding: JSON schema, regular expression or Lark grammar.

llguidance computes, before every token, which tokens keep the output inside the grammar; the
others get -inf logits, so sampling can only pick allowed ones. The mask works on the bytes of
the token pieces, so a Devanagari character split over several byte tokens is handled, and
it is the same for every backend: they share hslm's vocabulary and sampling loop.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch

# Strict JSON layout: a weak model given flexible whitespace may emit spaces forever.
JSON_OPTIONS = {"whitespace_flexible": False}


class GuideError(ValueError):
    """A schema, regex or grammar that cannot guide generation (message says why)."""


def grammar_for(json_schema: dict | str | None = None, regex: str | None = None,
                grammar: str | None = None) -> str:
    """The llguidance grammar for exactly one of the three constraint kinds."""
    try:
        import llguidance
    except ModuleNotFoundError:  # an optional package: a user mistake, not a crash
        raise GuideError("guided decoding needs llguidance: pip install 'hslm[guided]'") from None

    given = [kind for kind, value in (("json_schema", json_schema), ("regex", regex),
                                      ("grammar", grammar)) if value is not None]
    if len(given) != 1:
        raise GuideError(f"give exactly one of json_schema, regex, grammar (got {given or 'none'})")
    try:
        if json_schema is not None:
            schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        if regex is not None:
            return llguidance.LLMatcher.grammar_from_regex(regex)
        return llguidance.grammar_from("grammar", grammar)
    except (ValueError, TypeError) as err:
        raise GuideError(f"invalid {given[0].replace('_', ' ')}: {err}") from None


class _TokenTable:
    """What llguidance needs from a tokenizer: every token's bytes (control tokens marked with
    a leading 0xFF, llguidance's convention), the stop tokens, and a function that tokenizes
    bytes exactly (forced output is fed back through it)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.tokens = [tokenizer.piece_bytes(i) or b"\xff" + tokenizer.id_to_piece(i).encode()
                       for i in range(tokenizer.vocab_size)]
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i, t in enumerate(self.tokens) if t[:1] == b"\xff"]

    def __call__(self, data: bytes) -> list[int]:
        return self._tokenizer.encode_bytes(data)


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer):
    import llguidance

    table = _TokenTable(tokenizer)
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(table),
                                  eos_token=[tokenizer.eos_id, tokenizer.end_of_turn_id])


class Guide:
    """The grammar state of one generation: masks logits, then follows the chosen tokens."""

    def __init__(self, tokenizer, grammar: str):
        import llguidance

        self.vocab_size = tokenizer.vocab_size
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise GuideError(self.matcher.get_error())
        if not self.allowed().any():
            raise GuideError("the constraint cannot be satisfied: no token can start the output")

    def allowed(self) -> torch.Tensor:
        """Bool [vocab]: the tokens allowed next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool))

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [model vocab] with every disallowed token at -inf (tokens past the
        tokenizer's vocabulary are never allowed)."""
        allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
        allowed[:self.vocab_size] = self.allowed()
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise GuideError(f"token {token_id} broke the constraint: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The output is complete: nothing but a stop token may follow."""
        return self.matcher.is_stopped()

    @property
    def satisfied(self) -> bool:
        return self.matcher.is_accepting()
