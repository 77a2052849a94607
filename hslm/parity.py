"""Parity: does an exported artifact compute what the PyTorch model computes?

For a model (folder, run or checkpoint) and exported artifacts (GGUF files; ONNX folders), on
real Hindi validation text:

- tokenizer agreement: share of text lines the artifact's tokenizer encodes to the same ids;
- logits at every position of full-context windows: max and mean |Δlogit|, top-1
  agreement, mean and 99th-percentile KL(PyTorch ‖ artifact) (as llama.cpp's
  `llama-perplexity --kl-divergence` reports them), perplexity and its change;
- greedy generation: how many tokens the artifact's greedy continuation shares with
  PyTorch's, from several prompts.

Each artifact is judged against the limits of its type (`LIMITS`, one table: float types
near exact; 8- and 4-bit types from measurement on trained models), and the run fails when
any artifact fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hslm.generate import SamplingParams, TorchLogits, generate_ids


@dataclass(frozen=True)
class Limits:
    """What an artifact of one type must reach (None: reported, not judged)."""
    min_tokenizer_agreement: float = 1.0
    max_abs_logit: float | None = None  # relative: times max(1, max |PyTorch logit| / 25)
    min_top1: float = 0.0
    max_kl_mean: float = float("inf")
    max_kl_p99: float = float("inf")
    max_ppl_ratio: float = float("inf")  # artifact perplexity / PyTorch perplexity


# Float types must match PyTorch to rounding: f32 GGUF within 5e-3 on logits of magnitude
# ~25 (llama.cpp's GELU uses an fp16 table), the 16-bit types to their precision. The 8- and
# 4-bit limits come from measurements on trained models (README: Parity); a random-weight
# model's logits are nearly tied everywhere and fail the quantized limits by design.
LIMITS: dict[str, Limits] = {
    "f32": Limits(max_abs_logit=5e-3, min_top1=0.99, max_kl_mean=1e-5, max_kl_p99=1e-4,
                  max_ppl_ratio=1.001),
    "f16": Limits(min_top1=0.98, max_kl_mean=1e-3, max_kl_p99=1e-2, max_ppl_ratio=1.01),
    "bf16": Limits(min_top1=0.95, max_kl_mean=5e-3, max_kl_p99=5e-2, max_ppl_ratio=1.02),
    "q8_0": Limits(min_top1=0.95, max_kl_mean=2e-3, max_kl_p99=2e-2, max_ppl_ratio=1.02),
    # 4-bit and lower: measured on the reference model with hindi-270m's shapes
    # (benchmarks/results/quant_quality.md: q4 top-1 0.986, mean KL 9e-5) and on the small
    # recipe and demo models (q4 top-1 0.94-0.96, KL 1-2e-3), with room for smaller models
    "q4": Limits(min_top1=0.90, max_kl_mean=0.01, max_kl_p99=0.1, max_ppl_ratio=1.03),
    "iq3_s": Limits(min_top1=0.85, max_kl_mean=0.02, max_kl_p99=0.2, max_ppl_ratio=1.05),
    "iq3_xxs": Limits(min_top1=0.85, max_kl_mean=0.02, max_kl_p99=0.2, max_ppl_ratio=1.05),
    "iq2_s": Limits(min_top1=0.80, max_kl_mean=0.05, max_kl_p99=0.5, max_ppl_ratio=1.10),
    "iq2_xs": Limits(min_top1=0.80, max_kl_mean=0.05, max_kl_p99=0.5, max_ppl_ratio=1.10),
    "iq2_xxs": Limits(min_top1=0.80, max_kl_mean=0.05, max_kl_p99=0.5, max_ppl_ratio=1.10),
    # ONNX folders. int8 is blockwise (32) 8-bit like q8_0; int4 is blockwise symmetric 4-bit
    # with the output head (and a tied embedding) at 8 bits: reference model top-1 0.985,
    # KL 1.3e-4; recipe model 0.945, KL 2.3e-3 (a 4-bit head: 0.864, KL 1.2e-2)
    "fp32": Limits(max_abs_logit=5e-3, min_top1=0.99, max_kl_mean=1e-5, max_kl_p99=1e-4,
                   max_ppl_ratio=1.001),
    "int8": Limits(min_top1=0.95, max_kl_mean=2e-3, max_kl_p99=2e-2, max_ppl_ratio=1.02),
    "int4": Limits(min_top1=0.85, max_kl_mean=0.02, max_kl_p99=0.2, max_ppl_ratio=1.05),
}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def kl_divergence(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(reference ‖ other) per position, from logits."""
    p_log, q_log = log_softmax(reference), log_softmax(other)
    return (np.exp(p_log) * (p_log - q_log)).sum(-1)


def compare_logits(reference: np.ndarray, other: np.ndarray, targets: np.ndarray) -> dict:
    """Logit metrics over positions [n, vocab]; `targets` are the next tokens, for perplexity."""
    p_log, q_log = log_softmax(reference), log_softmax(other)
    kl = (np.exp(p_log) * (p_log - q_log)).sum(-1)
    rows = np.arange(len(targets))
    difference = np.abs(reference - other)
    ppl_reference = float(np.exp(-p_log[rows, targets].mean()))
    ppl = float(np.exp(-q_log[rows, targets].mean()))
    return {"positions": int(len(targets)),
            "max_abs_logit": float(difference.max()), "mean_abs_logit": float(difference.mean()),
            "logit_scale": float(np.abs(reference).max()),
            "top1": float((reference.argmax(-1) == other.argmax(-1)).mean()),
            "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "ppl": ppl, "ppl_reference": ppl_reference, "ppl_ratio": ppl / ppl_reference}


@dataclass
class Artifact:
    """An exported model opened for parity: its logits source and tokenizer."""
    path: Path
    kind: str  # "gguf" or "onnx"
    type: str  # a key of LIMITS
    source: object  # a logits source with all_logits(ids)
    tokenizer: object


class ParityError(ValueError):
    """An artifact that cannot be opened or compared (message says why)."""


def open_artifact(path: str | Path, threads: int | None = None) -> Artifact:
    from hslm.runtime.engine import is_gguf, is_onnx_path
    from hslm.runtime.llama_cpp import GGUFLoadError, gguf_summary, load_gguf

    path = Path(path)
    if is_gguf(path):
        try:
            file_type, _ = gguf_summary(path)
            source, tokenizer = load_gguf(path, threads=threads, all_logits=True)
        except GGUFLoadError as err:
            raise ParityError(str(err)) from None
        return Artifact(path, "gguf", file_type, source, tokenizer)
    if path.exists() and is_onnx_path(path):
        from hslm.runtime.onnx import OnnxLoadError, load_onnx, onnx_summary

        try:
            file_type, _ = onnx_summary(path)
            source, tokenizer = load_onnx(path, threads=threads)
        except OnnxLoadError as err:
            raise ParityError(str(err)) from None
        return Artifact(path, "onnx", file_type, source, tokenizer)
    raise ParityError(f"{path} is not an exported model hslm knows (a GGUF file or an ONNX "
                      "folder)")


def validation_windows(tokenizer, texts: list[str], context: int, count: int) -> list[list[int]]:
    """`count` windows of `context` ids (<bos> + text) cut from the texts joined."""
    ids = tokenizer.encode("\n".join(texts))
    size = context - 1
    windows = [[tokenizer.bos_id] + ids[i * size:(i + 1) * size] for i in range(count)]
    windows = [w for w in windows if len(w) == context]
    if not windows:
        raise ParityError(f"the validation text holds {len(ids)} tokens, fewer than one window "
                          f"of {context}: give more text")
    return windows


def greedy_ids(source, prompt: list[int], new_tokens: int) -> list[int]:
    return list(generate_ids(source, prompt, SamplingParams(max_new_tokens=new_tokens,
                                                            temperature=0.0)))


def shared_prefix(ours: list[int], theirs: list[int]) -> tuple[int, int]:
    """(tokens two greedy continuations share from the start, length of the longer one):
    both stop at end-of-sequence, so they may be shorter than asked."""
    same = 0
    while same < min(len(ours), len(theirs)) and ours[same] == theirs[same]:
        same += 1
    return same, max(len(ours), len(theirs))


@dataclass
class Reference:
    """What the PyTorch model computes on the validation text, computed once for all
    artifacts (and before any of them runs: llama.cpp's and PyTorch's thread pools slow each
    other down badly when they alternate on the same cores)."""
    lines: list[str]
    line_ids: list[list[int]]
    windows: list[list[int]]
    logits: np.ndarray  # [positions, vocab]: every position of every window but the last
    targets: np.ndarray
    prompts: list[list[int]]
    continuations: list[list[int]]
    new_tokens: int

    @classmethod
    def compute(cls, model, tokenizer, texts: list[str], windows: int = 4, prompts: int = 4,
                new_tokens: int = 32) -> Reference:
        lines = [line for text in texts for line in text.split("\n") if line.strip()]
        chunks = validation_windows(tokenizer, texts, model.config.context_length, windows)
        with torch.no_grad():
            logits = np.concatenate([model(torch.tensor([w]))[0, :-1].float().numpy()
                                     for w in chunks])
        starts = [chunk[:16] for chunk in chunks[:prompts]]
        source = TorchLogits(model)
        return cls(lines, [tokenizer.encode(line) for line in lines], chunks, logits,
                   np.concatenate([w[1:] for w in chunks]), starts,
                   [greedy_ids(source, p, new_tokens) for p in starts], new_tokens)


@dataclass
class ArtifactResult:
    path: str
    kind: str
    type: str
    tokenizer_agreement: float
    logits: dict
    greedy_agreement: list[tuple[int, int]]  # (shared, compared) per prompt
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "limits": asdict(LIMITS[self.type])}


def judge(result: ArtifactResult) -> list[str]:
    limits, logits = LIMITS[result.type], result.logits
    checks = [("tokenizer agreement", result.tokenizer_agreement, ">=",
               limits.min_tokenizer_agreement),
              ("top-1 agreement", logits["top1"], ">=", limits.min_top1),
              ("mean KL", logits["kl_mean"], "<=", limits.max_kl_mean),
              ("p99 KL", logits["kl_p99"], "<=", limits.max_kl_p99),
              ("perplexity ratio", logits["ppl_ratio"], "<=", limits.max_ppl_ratio)]
    if limits.max_abs_logit is not None:
        scaled = limits.max_abs_logit * max(1.0, logits["logit_scale"] / 25)
        checks.append(("max |Δlogit|", logits["max_abs_logit"], "<=", scaled))
    return [f"{name} {value:.4g} (limit {op} {limit:.4g})" for name, value, op, limit in checks
            if not (value >= limit if op == ">=" else value <= limit)]


def check_artifact(reference: Reference, artifact: Artifact) -> ArtifactResult:
    """Every parity measurement of one artifact against the PyTorch reference."""
    same = sum(ids == artifact.tokenizer.encode(line)
               for line, ids in zip(reference.lines, reference.line_ids))
    other = np.concatenate([np.asarray(artifact.source.all_logits(w))[:-1]
                            for w in reference.windows])
    result = ArtifactResult(
        path=str(artifact.path), kind=artifact.kind, type=artifact.type,
        tokenizer_agreement=same / len(reference.lines) if reference.lines else 1.0,
        logits=compare_logits(reference.logits, other, reference.targets),
        greedy_agreement=[shared_prefix(ours, greedy_ids(artifact.source, prompt,
                                                         reference.new_tokens))
                          for prompt, ours in zip(reference.prompts, reference.continuations)])
    result.failures = judge(result)
    return result


def render_markdown(model_name: str, results: list[ArtifactResult]) -> str:
    lines = [f"# hslm-parity: {model_name}", "",
             "| artifact | type | tokenizer | max abs Δlogit | mean abs Δlogit | top-1 | mean KL "
             "| p99 KL | ppl (PyTorch) | greedy agreement | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in results:
        g = r.logits
        lines.append(
            f"| {Path(r.path).name} | {r.type} | {r.tokenizer_agreement:.2%} | "
            f"{g['max_abs_logit']:.2e} | {g['mean_abs_logit']:.2e} | {g['top1']:.2%} | "
            f"{g['kl_mean']:.2e} | {g['kl_p99']:.2e} | {g['ppl']:.2f} ({g['ppl_reference']:.2f}) | "
            f"{sum(s for s, _ in r.greedy_agreement)}/{sum(n for _, n in r.greedy_agreement)} | "
            f"{'pass' if r.passed else 'FAIL'} |")
    failed = [r for r in results if not r.passed]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- {Path(r.path).name}: " + "; ".join(r.failures) for r in failed]
    lines += ["", "## Limits by type", "", "| type | tokenizer | max abs Δlogit | top-1 | "
              "mean KL | p99 KL | ppl ratio |", "|---|---|---|---|---|---|---|"]
    for name, limit in LIMITS.items():
        lines.append(f"| {name} | ≥ {limit.min_tokenizer_agreement:.0%} | "
                     f"{'≤ %.0e' % limit.max_abs_logit if limit.max_abs_logit else '—'} | "
                     f"≥ {limit.min_top1:.0%} | ≤ {limit.max_kl_mean:.0e} | "
                     f"≤ {limit.max_kl_p99:.0e} | ≤ {limit.max_ppl_ratio} |")
    return "\n".join(lines) + "\n"
