"""hslm's model class for lm-evaluation-harness (registered as `hslm`): any artifact
`hslm.runtime.load` opens — a PyTorch model folder, a GGUF file, an ONNX folder — scored and
sampled the same way.

    lm_eval --model hslm --model_args pretrained=runs/demo/model-q4.gguf --tasks ...

Prompts are encoded by the artifact's tokenizer (the same ids on every backend: hslm's
tokenizer is inside each export, tested elsewhere), with <bos> first as Gemma expects.
Log-likelihoods come from the backend's logits at every position of the sequence
(`source.all_logits(ids)`); generation runs hslm's own decode loop (`Runtime.generate`), greedy,
with the task's stop strings, and guided decoding when the task names a JSON schema.
"""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from hslm.eval.data import AGENT_SCHEMA
from hslm.generate import SamplingParams
from hslm.runtime import load

# Schemas a task's generation_kwargs may name (`json_schema: NAME`) instead of inlining one.
NAMED_SCHEMAS = {"hindi_agent": AGENT_SCHEMA}
DEFAULT_MAX_GEN_TOKS = 128


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@register_model("hslm")
class HslmLM(TemplateLM):
    def __init__(self, pretrained: str, threads: int | None = None,
                 max_length: int | None = None, **_lm_eval_options):
        # lm-eval also passes batch_size/device; hslm scores one sequence at a time on the CPU.
        super().__init__()
        self.runtime = load(pretrained, threads=threads and int(threads), all_logits=True,
                            context_length=max_length and int(max_length))
        self.tokenizer = self.runtime.tokenizer
        self.max_length = self.runtime.context_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_bos=add_special_tokens is not False)

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """Log-probabilities [len(ids) - 1, vocab] of each next token after ids[:i+1]."""
        return log_softmax(np.asarray(self.runtime.source.all_logits(ids[:-1])))

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        whole = (context + continuation)[-(self.max_length + 1):]
        logprobs = self.token_logprobs(whole)[-len(continuation):]
        chosen = logprobs[np.arange(len(continuation)), continuation]
        greedy = bool((logprobs.argmax(-1) == np.asarray(continuation)).all())
        return float(chosen.sum()), greedy

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        results = []
        with self.runtime.lock:
            for (_, context, continuation) in tqdm(requests, disable=disable_tqdm,
                                                   desc="loglikelihood"):
                results.append(self._score(context, continuation))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        with self.runtime.lock:
            for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm,
                                desc="loglikelihood_rolling"):
                windows = map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text, add_special_tokens=False), self.prefix_token_id,
                    self.max_length, context_len=1))
                results.append(sum(self._score(context, continuation)[0]
                                   for context, continuation in windows))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        with self.runtime.lock:
            for context, options in tqdm([r.args for r in requests], disable=disable_tqdm,
                                         desc="generate_until"):
                results.append(self.generate(context, dict(options)))
        return results

    def generate(self, context: str, options: dict) -> str:
        """One greedy answer to `context` under a task's generation_kwargs: `until`,
        `max_gen_toks`, and hslm's `chat` (context as a user turn of the chat format) and
        `json_schema` (a schema or a name in NAMED_SCHEMAS; guided decoding)."""
        until = options.pop("until", [])
        until = [until] if isinstance(until, str) else list(until)
        schema = options.pop("json_schema", None)
        schema = NAMED_SCHEMAS[schema] if isinstance(schema, str) else schema
        if options.pop("chat", False):
            prompt = self.runtime.encode_chat([{"role": "user", "content": context}])
        else:
            prompt = self.tok_encode(context)
        max_new = min(int(options.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                      self.max_length // 2)
        keep = self.max_length - max_new
        if len(prompt) > keep:  # the prompt's end matters most; <bos> stays first
            prompt = prompt[:1] + prompt[len(prompt) - keep + 1:]
        params = SamplingParams(max_new_tokens=max_new, temperature=0, stop_strings=until)
        return self.runtime.generate(prompt, params, json_schema=schema).text
