"""Importance matrices for GGUF quantization, computed by llama.cpp's own `llama-imatrix` on Hindi
calibration text (the programs `hslm-native build` makes).

llama-imatrix runs an f32 GGUF over the text in chunks of `context` tokens (each from an empty
cache, `<bos>` first) and records, for every input column of every layer matrix, the mean
squared activation it is multiplied by; `llama-quantize --imatrix` then weighs each weight's
rounding error by it. A chunk is the model's whole context (1,024 for hindi-270m): global layers
see every position a prompt can reach and sliding layers (window 512) full windows. The file is
llama.cpp's own imatrix format (GGUF). llama.cpp has no normaliser, so the text is normalised
as hslm's tokenizer does first, and special-token names in it stay text (no --parse-special).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hslm.quant.llama_cpp import QuantizeError

PROGRAMS = ("llama-imatrix", "llama-quantize")
# hslm's llama.cpp backend keeps the KV cache in F32 without flash attention; activations are
# collected under the same arithmetic.
AS_HSLM = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")


def calibration_text(paths: Sequence[str | Path]) -> str:
    """The files' text, each normalised as hslm's tokenizer normalises, joined by newlines. A
    missing, non-UTF-8 or empty file is a QuantizeError naming it."""
    from hslm.normalize import normalize
    from hslm.tokenizer import TokenizerError, read_lines

    texts = []
    for path in paths:
        try:
            text = normalize("\n".join(read_lines(path)))
        except TokenizerError as err:
            raise QuantizeError(f"calibration text: {err}") from None
        if not text.strip():
            raise QuantizeError(f"calibration text: {path} is empty")
        texts.append(text)
    if not texts:
        raise QuantizeError("calibration text: no files given")
    return "\n".join(texts)


def run_program(program: str, args: Sequence[str], say: Callable[[str], None],
                progress: Callable[[str], str | None]) -> None:
    """Run one of llama.cpp's programs; `progress` picks (and shortens) the output lines passed
    to `say`. A failure is a QuantizeError with the program's own reason."""
    from hslm.native import NativeBuildError, command, run_lines

    try:
        line_args = command(program, *args)
    except NativeBuildError as err:
        raise QuantizeError(str(err)) from None

    def on_line(line: str) -> None:
        shown = progress(line)
        if shown:
            say(shown)

    status, tail = run_lines(line_args, on_line)
    if status != 0:
        reasons = [t for t in tail if "error" in t.lower() or "failed" in t.lower()] \
            or tail[-1:] or [f"exit status {status}, no message"]
        raise QuantizeError(f"{program} failed: {' '.join(r.strip() for r in reasons)[-400:]}")


def _imatrix_progress(line: str) -> str | None:
    # "compute_imatrix: computing over 18 chunks, n_ctx=1024, ..." and the ETA after chunk 1
    _, found, message = line.partition("compute_imatrix: ")
    if found and ("computing over" in message or "seconds per pass" in message):
        return "llama-imatrix: " + message.strip()
    return None


def compute_imatrix(model_gguf: str | Path, text: str, tokenizer, output: str | Path,
                    context: int, threads: int = 0, say: Callable[[str], None] = print) -> Path:
    """llama-imatrix over `text` (already normalised: `calibration_text`) in chunks of
    `context` tokens, written to `output` in llama.cpp's imatrix format. The text must hold at
    least two chunks of the model's `tokenizer`'s tokens (llama.cpp's tokenizer gives the same
    ids, and llama-imatrix exits without a word when they are too few)."""
    output = Path(output)
    if not output.parent.is_dir():
        raise QuantizeError(f"folder for the importance matrix does not exist: {output.parent}")
    tokens = len(tokenizer.encode(text, add_bos=True))
    if tokens < 2 * context:
        raise QuantizeError(f"the calibration text is too short: {tokens} tokens, and "
                            f"llama-imatrix needs at least two chunks of the model's "
                            f"{context}-token context ({2 * context}); give more text")
    with tempfile.TemporaryDirectory(prefix="calibration-", dir=output.parent) as scratch:
        text_file = Path(scratch) / "calibration.txt"
        text_file.write_text(text, "utf-8")
        args = ["-m", str(model_gguf), "-f", str(text_file), "-o", str(output),
                "--output-format", "gguf", "-c", str(context), "-b", str(context), "--no-ppl",
                *AS_HSLM, *(["-t", str(threads)] if threads else [])]
        run_program("llama-imatrix", args, say, _imatrix_progress)
    if not output.is_file():
        raise QuantizeError(f"llama-imatrix wrote no importance matrix to {output}")
    return output
