"""ONNX int4 options against the PyTorch model on held-out Hindi text, with GGUF q4 as the target.

For a trained model folder: exports the fp32 ONNX folder once, quantizes it with every int4
algorithm x block size (`hslm.quant.onnx.ALGORITHMS` x `BLOCK_SIZES`; GPTQ calibrated on the
first lines of the text file, the windows are cut from its last lines), and compares each
with PyTorch at every position of the windows (`hslm.parity.compare_logits`: top-1, mean and
p99 KL, perplexity ratio), with bytes per parameter (the file's size over the model's
parameters) and decode tokens/s (hslm's ONNX Runtime loop, 1 thread, median step). GGUF q4
(llama.cpp's IQ4_NL, no importance matrix) on the same windows is the issue's target line.

    python benchmarks/onnx_int4.py MODEL_FOLDER [--text FILE] [--windows 8]

Writes benchmarks/results/onnx_int4.{json,md}. `measure_onnx`, `measure_gguf` and
`reference_logits` are for other benchmarks (quant_quality) to call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hslm.export.gguf import write_gguf
from hslm.export.onnx import MODEL_FILE, export_onnx
from hslm.loader import load_torch_model
from hslm.parity import compare_logits, validation_windows
from hslm.quant.llama_cpp import quantize_gguf
from hslm.quant.onnx import (ALGORITHMS, BLOCK_SIZES, OnnxQuantizeError, QuantizeOptions,
                             calibration_windows, quantize_onnx_folder)
from hslm.runtime.llama_cpp import load_gguf
from hslm.runtime.onnx import load_onnx
from hslm.tokenizer import read_lines

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
DECODE_STEPS = 32


def reference_logits(model, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(PyTorch's logits at every position of the windows but each last, next-token targets)."""
    with torch.no_grad():
        logits = np.concatenate([model(torch.tensor([w]))[0, :-1].float().numpy()
                                 for w in windows])
    return logits, np.concatenate([w[1:] for w in windows])


def decode_tokens_per_s(source, prompt: list[int]) -> float:
    """Tokens/s of single-token steps after `prompt` (median step)."""
    source.reset()
    source.feed(prompt)
    steps = []
    for token in range(3, 3 + DECODE_STEPS):
        start = time.perf_counter()
        source.feed([token])
        steps.append(time.perf_counter() - start)
    return 1 / statistics.median(steps)


def measure_onnx(fp32_folder: Path, options: QuantizeOptions, output: Path,
                 windows: list[list[int]], reference: np.ndarray, targets: np.ndarray,
                 parameters: int) -> dict:
    """Quantize `fp32_folder` into `output` with `options` and measure it."""
    start = time.perf_counter()
    quantize_onnx_folder(fp32_folder, output, options)
    seconds = time.perf_counter() - start
    source, _ = load_onnx(output, threads=1)
    theirs = np.concatenate([source.all_logits(w)[:-1] for w in windows])
    return {**compare_logits(reference, theirs, targets),
            "bytes_per_parameter": (output / MODEL_FILE).stat().st_size / parameters,
            "tokens_per_s": decode_tokens_per_s(source, windows[0][:64]),
            "quantize_s": seconds}


def measure_gguf(model, tokenizer, out_type: str, work: Path, windows: list[list[int]],
                 reference: np.ndarray, targets: np.ndarray) -> dict:
    """Write and quantize the GGUF file of `out_type` under `work` and measure it."""
    f32 = write_gguf(model, tokenizer, work / "model-f32.gguf", "f32")
    report = quantize_gguf(f32, work / f"model-{out_type}.gguf", out_type, say=lambda _: None)
    source, _ = load_gguf(report.path, threads=1, all_logits=True)
    theirs = np.concatenate([source.all_logits(w)[:-1] for w in windows])
    source_decode, _ = load_gguf(report.path, threads=1)
    return {**compare_logits(reference, theirs, targets),
            "bytes_per_parameter": report.path.stat().st_size / model.num_parameters(),
            "bits_per_weight": report.bits_per_weight,
            "tokens_per_s": decode_tokens_per_s(source_decode, windows[0][:64])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="trained model folder, run folder or checkpoint")
    parser.add_argument("--text", type=Path, default=REPO.parent / "shared" / "data" / "hindi"
                        / "news_headlines_bbc_hindi.txt")
    parser.add_argument("--windows", type=int, default=8, help="text windows of full context")
    args = parser.parse_args()
    model, tokenizer = load_torch_model(args.model)
    config = model.config
    # The last lines of the file: text the model has seen least of; GPTQ calibrates on the
    # first lines (calibration_windows reads from the start).
    windows = validation_windows(tokenizer, list(read_lines(args.text))[-2000:],
                                 config.context_length, args.windows)
    calibration = calibration_windows(tokenizer, [args.text], config.context_length)
    reference, targets = reference_logits(model, windows)
    rows, refused = {}, {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        rows["gguf q4"] = measure_gguf(model, tokenizer, "q4", work, windows, reference, targets)
        print("gguf q4", rows["gguf q4"], flush=True)
        export_onnx(model, tokenizer, work / "fp32")
        for algorithm in ALGORITHMS:
            for block in BLOCK_SIZES:
                name = f"{algorithm} {block}"
                options = QuantizeOptions("int4", algorithm, block,
                                          calibration if algorithm == "gptq" else ())
                try:
                    options.check(config)
                except OnnxQuantizeError as err:
                    refused[name] = str(err)
                    continue
                rows[name] = measure_onnx(work / "fp32", options, work / name.replace(" ", "-"),
                                          windows, reference, targets, model.num_parameters())
                print(name, rows[name], flush=True)
    report = {"benchmark": "onnx_int4", "model": str(args.model), "config": config.to_dict(),
              "parameters": model.num_parameters(), "text": args.text.name,
              "positions": int(len(targets)), "calibration_windows": len(calibration),
              "results": rows, "refused": refused}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_int4.json").write_text(json.dumps(report, indent=2) + "\n")
    target = rows["gguf q4"]["kl_mean"]
    lines = [f"# ONNX int4 options vs PyTorch: {len(targets):,} positions of {args.text.name}",
             "", f"Model: {args.model} ({model.num_parameters():,} parameters, hidden "
             f"{config.hidden_size}, context {config.context_length}); PyTorch perplexity "
             f"{rows['gguf q4']['ppl_reference']:.2f}. GPTQ calibrated on "
             f"{len(calibration)} windows from the start of the file. Bytes per parameter: the "
             "file over the model's parameters (the ONNX graph stores the tied output head "
             "a second time, quantized). tokens/s: 1 thread, median of "
             f"{DECODE_STEPS} steps, on a shared machine.", "",
             "| export | bytes/param | top-1 | mean KL | KL / GGUF q4 | p99 KL | ppl ratio "
             "| tokens/s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['bytes_per_parameter']:.3f} | {100 * r['top1']:.2f}% "
              f"| {r['kl_mean']:.2e} | {r['kl_mean'] / target:.2f} | {r['kl_p99']:.2e} "
              f"| {r['ppl_ratio']:.4f} | {r['tokens_per_s']:.0f} |" for name, r in rows.items()]
    if refused:
        lines += ["", "Refused: " + "; ".join(f"{name} ({reason.split(':')[0]})"
                                               for name, reason in refused.items())]
    (RESULTS / "onnx_int4.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
