"""Text generation with the PyTorch model: greedy and sampling, stop tokens/strings, streaming.

Sampling follows transformers' semantics and order: repetition penalty, temperature, top-k,
top-p, min-p; OpenAI's frequency and presence penalties apply with the repetition penalty, over
the generated tokens. `temperature=0` means greedy. A seed gives the same text every time.
Log-probabilities, when asked for, are the model's own (log-softmax of its logits, before
penalties, filters and guided masks), as OpenAI and vLLM report them.

Streaming works on the UTF-8 bytes each token contributes (byte-fallback tokens carry single
bytes), decoded incrementally, so a Devanagari character is never split across two pieces.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from hslm.model import Gemma3


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the sequence
    frequency_penalty: float = 0.0  # logit -= frequency_penalty * (times generated so far)
    presence_penalty: float = 0.0  # logit -= presence_penalty * (generated at least once)
    stop_token_ids: Sequence[int] = ()  # added to the tokenizer's eos / end_of_turn
    stop_strings: Sequence[str] = ()
    seed: int | None = None
    logprobs: int | None = None  # None = off; k = each token's log-probability and the k likeliest

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None  # None for a prompt's first token (nothing before it)
    top: list[tuple[int, float]] = field(default_factory=list)  # the likeliest, best first


@dataclass
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (stop token or string) or "length"
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with SamplingParams.logprobs


def token_logprob(logits: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    """`token_id`'s log-probability under `logits` [vocab] and the `top` likeliest tokens."""
    logprobs = logits.float().log_softmax(-1)
    best = torch.topk(logprobs, top) if top else None
    return TokenLogprob(token_id, float(logprobs[token_id]),
                        [] if best is None else list(zip(best.indices.tolist(),
                                                         best.values.tolist())))


def prompt_logprobs(model, prompt_ids: Sequence[int], top: int = 0) -> list[TokenLogprob]:
    """Each prompt token's log-probability given the tokens before it (None for the first), as
    OpenAI's completions with `echo` report them. Fed token by token: every logits source
    gives the last position's logits."""
    source = TorchLogits(model) if isinstance(model, Gemma3) else model
    source.reset()
    if len(prompt_ids) > source.context_length:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is "
                         f"{source.context_length}")
    result = [TokenLogprob(prompt_ids[0], None)] if prompt_ids else []
    for previous, token in zip(prompt_ids, prompt_ids[1:]):
        result.append(token_logprob(source.feed([previous]).float().cpu(), token, top))
    return result


def process_logits(logits: torch.Tensor, params: SamplingParams,
                   seen_ids: torch.Tensor | None = None,
                   generated_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the penalties and the sampling filters to logits [vocab] (fp32).

    `seen_ids` (prompt and generated) get the repetition penalty, `generated_ids` the frequency
    and presence penalties. Filtered-out tokens get -inf. Greedy decoding only applies the
    penalties.
    """
    logits = logits.float().clone()
    if params.repetition_penalty != 1.0 and seen_ids is not None and seen_ids.numel():
        seen = logits[seen_ids]
        logits[seen_ids] = torch.where(seen < 0, seen * params.repetition_penalty,
                                       seen / params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and generated_ids is not None \
            and generated_ids.numel():
        counts = torch.bincount(generated_ids, minlength=logits.numel())[:logits.numel()].float()
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits)  # ascending, as transformers
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cumulative <= 1 - params.top_p
        remove_sorted[-1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove_sorted.scatter(0, order, remove_sorted), float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def choose_token(logits: torch.Tensor, params: SamplingParams, rng: torch.Generator | None) -> int:
    if params.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(logits.softmax(-1), 1, generator=rng))


class TorchLogits:
    """Next-token logits from the PyTorch model, with its KV cache (a `LogitsSource`).

    A logits source is what the sampling loop needs from a backend: `context_length`, and
    `reset()`, which forgets everything fed, and `feed(ids)`, which processes ids after those
    fed so far and returns the last one's logits. Other runtimes (llama.cpp, ONNX Runtime)
    provide the same members.
    """

    def __init__(self, model: Gemma3):
        self.model = model
        self.context_length = model.config.context_length
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.new_cache(batch_size=1)

    @torch.inference_mode()
    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        device = self.model.embed.weight.device
        step_input = torch.tensor([list(ids)], dtype=torch.long, device=device)
        return self.model(step_input, cache=self.cache, last_only=True)[0, -1]

    @torch.inference_mode()
    def all_logits(self, ids: Sequence[int]):
        """Logits [len(ids), vocab] (numpy, fp32) of every position of `ids` alone, as the
        llama.cpp and ONNX sources give them (scoring); the KV cache is not used."""
        device = self.model.embed.weight.device
        step_input = torch.tensor([list(ids)], dtype=torch.long, device=device)
        return self.model(step_input)[0].float().cpu().numpy()


def generate_ids(model, prompt_ids: Sequence[int], params: SamplingParams,
                 stop_token_ids: Sequence[int] = (), guide=None,
                 logprobs: list[TokenLogprob] | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; a stop token ends the stream and is not yielded.

    `model` is a `Gemma3` or any logits source (see `TorchLogits`). A `guide`
    (`hslm.runtime.guided.Guide`) allows only tokens that keep the output in its grammar and
    ends the stream when the output is complete; its `fit` keeps the output completable within
    the tokens left. With `params.logprobs` set, each yielded token's `TokenLogprob` is appended
    to `logprobs`.
    """
    source = TorchLogits(model) if isinstance(model, Gemma3) else model
    source.reset()
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token (e.g. <bos>)")
    limit = source.context_length
    if len(prompt_ids) >= limit:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {limit}")
    rng = None
    if params.seed is not None:
        rng = torch.Generator().manual_seed(params.seed)
    stops = set(stop_token_ids) | set(params.stop_token_ids)
    seen = list(prompt_ids)  # for the repetition penalty
    new_ids = list(prompt_ids)
    budget = min(params.max_new_tokens, limit - len(prompt_ids))
    for step in range(budget):
        raw = source.feed(new_ids).float().cpu()
        logits = raw if guide is None else guide.mask_logits(raw)
        token = choose_token(process_logits(logits, params, torch.tensor(seen),
                                            torch.tensor(seen[len(prompt_ids):], dtype=torch.long)),
                             params, rng)
        if guide is not None:
            token = guide.fit(token, budget - step)
        if token in stops:
            return
        if logprobs is not None and params.logprobs is not None:
            logprobs.append(token_logprob(raw, token, params.logprobs))
        yield token
        if guide is not None:
            guide.advance(token)
            if guide.done:
                return
        seen.append(token)
        new_ids = [token]


class TextStream:
    """Turns token ids into text pieces: whole characters only, stop strings cut off."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""  # decoded text held back because it may begin a stop string
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Text that is now final after `token_id` ('' while a character or stop string is open)."""
        self.pending += self.decoder.decode(self.tokenizer.piece_bytes(token_id))
        return self._release(final=False)

    def finish(self) -> str:
        self.pending += self.decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        for stop in self.stop_strings:
            at = self.pending.find(stop)
            if at >= 0:
                self.stopped = True
                out, self.pending = self.pending[:at], ""
                return out
        hold = 0 if final else self._open_stop_prefix()
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out

    def _open_stop_prefix(self) -> int:
        """Length of the longest end of `pending` that is the start of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def stream(model: Gemma3, tokenizer, prompt: str | Sequence[int],
           params: SamplingParams | None = None, add_bos: bool = True,
           result: Generation | None = None, guide=None) -> Iterator[str]:
    """Yield generated text piece by piece. Pass `result` to receive ids and finish reason;
    `guide` constrains the output (see `generate_ids`)."""
    params = params or SamplingParams()
    prompt_ids = tokenizer.encode(prompt, add_bos=add_bos) if isinstance(prompt, str) else list(prompt)
    result = result if result is not None else Generation(text="")
    text_stream = TextStream(tokenizer, params.stop_strings)
    stops = (tokenizer.eos_id, tokenizer.end_of_turn_id)
    result.finish_reason = "stop"
    produced = 0
    for token in generate_ids(model, prompt_ids, params, stops, guide, result.logprobs):
        produced += 1
        result.token_ids.append(token)
        piece = text_stream.push(token)
        if piece:
            result.text += piece
            yield piece
        if text_stream.stopped:
            return
    piece = text_stream.finish()
    if piece:
        result.text += piece
        yield piece
    out_of_room = produced == params.max_new_tokens or \
        len(prompt_ids) + produced >= _context_length(model)
    if out_of_room and not (guide is not None and guide.done):
        result.finish_reason = "length"


def _context_length(model) -> int:
    return model.config.context_length if isinstance(model, Gemma3) else model.context_length


def generate(model: Gemma3, tokenizer, prompt: str | Sequence[int],
             params: SamplingParams | None = None, add_bos: bool = True,
             guide=None) -> Generation:
    """Generate a whole answer; see `stream` for the piece-by-piece form."""
    result = Generation(text="")
    for _ in stream(model, tokenizer, prompt, params, add_bos, result, guide):
        pass
    return result
