"""Guided (constrained) decoding: JSON schema, regular expression or Lark grammar.

llguidance computes, before every token, which tokens keep the output inside the grammar; the
others get -inf logits, so sampling can only pick allowed ones. The mask works on the bytes of
the token pieces, so a Devanagari character split over several byte tokens is handled, and
it is the same for every backend: they share hslm's vocabulary and sampling loop.

Within a token budget (`Guide.fit`), the output is always complete: before each token is taken,
the guide checks that a way to finish the output still fits in the tokens left after it, and
otherwise takes the next token of the shortest way it knows. That way is found greedily
(`closing_path`): forced tokens first, else the allowed token of JSON punctuation that leaves
the fewest strings and containers open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

# Strict JSON layout (a weak model given flexible whitespace may emit spaces forever), with
# the separators of Python's json.dumps, which wrote the JSON answers hslm's SFT data teaches:
# a model fine-tuned on `{"a": 1, "b": 2}` goes off course when forced to `{"a":1,"b":2}`.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# The longest way to finish an output `closing_path` looks for (each step costs one mask).
MAX_CLOSING_TOKENS = 256
# Tokens made only of these bytes are the ones `closing_path` ranks (JSON's punctuation,
# numbers and the shortest values); other tokens are its fallback.
CLOSING_BYTES = frozenset(b'"{}[],:-.0123456789')


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


@dataclass(frozen=True)
class _OpenJson:
    """The strings and containers JSON text leaves open (`stack`: '{', '[' and '"')."""

    stack: str = ""
    escaped: bool = False

    def after(self, data: bytes) -> _OpenJson:
        stack, escaped = self.stack, self.escaped
        for byte in data:
            if stack.endswith('"'):
                if escaped:
                    escaped = False
                elif byte == 0x5C:  # backslash
                    escaped = True
                elif byte == 0x22:
                    stack = stack[:-1]
            elif byte in b'{["':
                stack += chr(byte)
            elif byte in b"}]":
                stack = stack[:-1]
        return _OpenJson(stack, escaped)


@dataclass
class _TokenBytes:
    """Every token's bytes (control tokens: none), their lengths, and the ids of the tokens
    made only of `CLOSING_BYTES`."""

    pieces: list[bytes]
    lengths: np.ndarray
    closing_ids: np.ndarray


@lru_cache(maxsize=4)
def _token_bytes(tokenizer) -> _TokenBytes:
    pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
    closing = [i for i, piece in enumerate(pieces) if piece and set(piece) <= CLOSING_BYTES]
    return _TokenBytes(pieces, np.array([len(p) for p in pieces]),
                       np.array(closing, dtype=np.int64))


class Guide:
    """The grammar state of one generation: masks logits, then follows the chosen tokens."""

    def __init__(self, tokenizer, grammar: str):
        import llguidance

        self.vocab_size = tokenizer.vocab_size
        self.eos_id = tokenizer.eos_id
        self.tokens = _token_bytes(tokenizer)
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise GuideError(self.matcher.get_error())
        if not self.allowed().any():
            raise GuideError("the constraint cannot be satisfied: no token can start the output")
        self.open = _OpenJson()
        self._path: list[int] | None = None  # a way to finish from here, once looked for
        self._searched = False
        self._unbounded = False  # no way to finish was found: budgets are not enforced

    def allowed(self, matcher=None) -> torch.Tensor:
        """Bool [vocab]: the tokens allowed next."""
        bits = np.frombuffer((matcher or self.matcher).compute_bitmask(), dtype=np.uint8)
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
        self.open = self.open.after(self.tokens.pieces[token_id])
        followed = self._path and self._path[0] == token_id
        self._path = self._path[1:] if followed else None
        self._searched = bool(followed)

    # ---------------------------------------------------------------- within a token budget
    def closing_path(self) -> list[int] | None:
        """The tokens of the shortest way to finish the output that the greedy search finds
        (ending with <eos> when the grammar needs a stop token to end), or None when it finds
        none within MAX_CLOSING_TOKENS."""
        if not self._searched:
            self._path, self._searched = self._search(self.matcher, self.open), True
        return self._path

    def fit(self, token_id: int, remaining: int) -> int:
        """`token_id` if the output can still be finished within the `remaining` tokens (this
        one included) after it; otherwise the next token of `closing_path`."""
        path = None if self._unbounded else self.closing_path()
        if not path:  # no known way to finish (budgets cannot be kept), or finished already
            self._unbounded = path is None
            return token_id
        if path and path[0] == token_id:
            return token_id
        after = self.matcher.deep_copy()
        if not after.consume_token(token_id):
            return path[0]
        open_after = self.open.after(self.tokens.pieces[token_id])
        # Most tokens (inside a string, a number) leave the old way to finish valid.
        rest = self._finishes(after.deep_copy(), path) or self._search(after, open_after)
        if rest is not None and 1 + len(rest) <= remaining:
            self._path, self._searched = [token_id] + rest, True
            return token_id
        return path[0]

    def _finishes(self, matcher, path: list[int]) -> list[int] | None:
        """`path` (with or without its <eos>) if it finishes the output from `matcher`'s state."""
        tokens = path[:-1] if path and path[-1] == self.eos_id else path
        if matcher.try_consume_tokens(tokens) != len(tokens):
            return None
        if matcher.is_stopped():
            return tokens
        return tokens + [self.eos_id] if matcher.is_accepting() else None

    def _search(self, matcher, open_json: _OpenJson) -> list[int] | None:
        matcher = matcher.deep_copy()
        path: list[int] = []
        while len(path) <= MAX_CLOSING_TOKENS:
            if matcher.is_stopped():
                return path
            if matcher.is_accepting():
                return path + [self.eos_id]
            chosen = matcher.compute_ff_tokens() or [self._closest(matcher, open_json)]
            for token in chosen:
                if token is None or not matcher.consume_token(token):
                    return None
                open_json = open_json.after(self.tokens.pieces[token])
                path.append(token)
        return None

    def _closest(self, matcher, open_json: _OpenJson) -> int | None:
        """The allowed token of JSON punctuation that leaves the fewest strings and containers
        open (then: ending in a closing quote or bracket, then a separator; then the shortest);
        without one, the allowed token with the most bytes."""
        allowed = self.allowed(matcher).numpy()
        candidates = self.tokens.closing_ids[allowed[self.tokens.closing_ids]]
        if len(candidates):
            def rank(token: int) -> tuple[int, int, int]:
                piece = self.tokens.pieces[token]
                last = piece[-1:]
                kind = 0 if last in (b'"', b"]", b"}") else 1 if last in (b",", b":") else 2
                return len(open_json.after(piece).stack), kind, len(piece)
            return int(min(candidates.tolist(), key=rank))
        allowed[self.eos_id] = False  # the grammar is not finished (checked before)
        ids = np.flatnonzero(allowed)
        return int(ids[np.argmax(self.tokens.lengths[ids])]) if len(ids) else None

    @property
    def done(self) -> bool:
        """The output is complete: nothing but a stop token may follow."""
        return self.matcher.is_stopped()

    @property
    def satisfied(self) -> bool:
        return self.matcher.is_accepting()
