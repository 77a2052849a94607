"""GGUF quantization with and without an importance matrix, on real Hindi text.

For each trained model folder: writes the f32 GGUF, computes an importance matrix with
llama.cpp's llama-imatrix on calibration text (chunks of the model's context), quantizes to q4
(IQ4_NL), q4_0 and the 3- and 2-bit IQ types with and without it (the types llama.cpp refuses
without one are marked so), and compares llama.cpp's logits with PyTorch's fp32 logits on
held-out text windows: top-1 agreement, mean and p99 KL, perplexity ratio, bits per weight.

A second table gives what the 3- and 2-bit types really are at hindi-270m's shapes (hidden 640,
attention 4 x 256, FFN 2,048; random weights, so sizes and types only): their blocks of 256 fit
only the matrices whose inputs are 1,024 or 2,048 wide.

    python benchmarks/gguf_imatrix.py MODEL_FOLDER... [--calibration FILE...] [--text FILE]

Writes benchmarks/results/gguf_imatrix.{json,md}. Needs `hslm-native build`.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch

from hslm.config import ModelConfig
from hslm.export.gguf import write_gguf
from hslm.loader import load_torch_model
from hslm.model import Gemma3
from hslm.parity import Reference, compare_logits
from hslm.quant.imatrix import calibration_text, compute_imatrix
from hslm.quant.llama_cpp import LOW_BIT_TYPES, NEEDS_IMATRIX, quantize_gguf
from hslm.runtime.llama_cpp import load_gguf
from hslm.tokenizer import read_lines

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hindi"
TYPES = ("q4", "q4_0", *LOW_BIT_TYPES)
SHAPE_CALIBRATION_CHARS = 15_000  # about 3 chunks of 1,024 tokens
THREADS = 1  # llama.cpp's spinning thread pool is far slower with 2 on a shared 2-core machine


def quiet(line: str) -> None:
    pass


def measure_types(f32: Path, imatrix: Path, reference: Reference, work: Path,
                  types=TYPES) -> dict[str, dict]:
    """{type: {"plain": metrics | None, "imatrix": metrics}} of llama.cpp's logits against the
    reference's on its windows; metrics are compare_logits' plus bits per weight and MB."""
    def metrics(report) -> dict:
        source, _ = load_gguf(report.path, threads=THREADS, all_logits=True)
        logits = np.concatenate([source.all_logits(w)[:-1] for w in reference.windows])
        return {**compare_logits(reference.logits, logits, reference.targets),
                "bits_per_weight": report.bits_per_weight,
                "mb": report.path.stat().st_size / 1e6}

    rows = {}
    for out_type in types:
        plain = None if out_type in NEEDS_IMATRIX else metrics(
            quantize_gguf(f32, work / f"{out_type}-plain.gguf", out_type, threads=THREADS))
        calibrated = metrics(quantize_gguf(f32, work / f"{out_type}-imatrix.gguf", out_type,
                                           threads=THREADS, imatrix=imatrix, say=quiet))
        rows[out_type] = {"plain": plain, "imatrix": calibrated}
        print(out_type, json.dumps(rows[out_type]), flush=True)
    return rows


def measure_model(folder: Path, calibration: str, held_out: list[str], windows: int) -> dict:
    model, tokenizer = load_torch_model(folder)
    context = model.config.context_length
    reference = Reference.compute(model, tokenizer, ["\n".join(held_out)], windows=windows,
                                  prompts=0)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        f32 = write_gguf(model, tokenizer, work / "model-f32.gguf", "f32")
        start = time.perf_counter()
        imatrix = compute_imatrix(f32, calibration, tokenizer, work / "imatrix.gguf", context,
                                  threads=THREADS, say=quiet)
        seconds = time.perf_counter() - start
        chunks = gguf.GGUFReader(imatrix).fields["imatrix.chunk_count"].contents()
        rows = measure_types(f32, imatrix, reference, work)
    return {"model": str(folder), "parameters": model.num_parameters(),
            "config": model.config.to_dict(), "positions": int(len(reference.targets)),
            "ppl_reference": rows["q4"]["imatrix"]["ppl_reference"],
            "imatrix": {"chunks": int(chunks), "chunk_tokens": context,
                        "seconds": round(seconds, 1)},
            "results": rows}


def shape_facts(tokenizer, calibration: str, layers: int) -> dict:
    """Tensor types and bits per weight of each type on a random-weight model of hindi-270m's
    shapes (`layers` layers, the tokenizer's vocabulary)."""
    torch.manual_seed(0)
    config = ModelConfig.preset("hindi-270m", n_layers=layers, vocab_size=tokenizer.vocab_size)
    facts = {"layers": layers, "vocab": tokenizer.vocab_size, "types": {}}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        f32 = write_gguf(Gemma3(config).eval(), tokenizer, work / "shape-f32.gguf", "f32")
        # a few chunks: the weights are random, only the types and sizes are measured
        imatrix = compute_imatrix(f32, calibration[:SHAPE_CALIBRATION_CHARS], tokenizer,
                                  work / "imatrix.gguf", config.context_length,
                                  threads=THREADS, say=quiet)
        for out_type in TYPES:
            report = quantize_gguf(f32, work / f"{out_type}.gguf", out_type, threads=THREADS,
                                   imatrix=imatrix, say=quiet)
            kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            layer_bits = layer_weights = 0
            for tensor in gguf.GGUFReader(report.path).tensors:
                if len(tensor.shape) < 2:
                    continue
                kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") \
                    else tensor.name.split(".")[0]
                kinds[kind][tensor.tensor_type.name] += 1
                if tensor.name.startswith("blk."):
                    layer_bits += int(tensor.n_bytes) * 8
                    layer_weights += int(tensor.n_elements)
            facts["types"][out_type] = {
                "bits_per_weight": report.bits_per_weight,
                "layer_bits_per_weight": layer_bits / layer_weights,
                "tensor_types": {k: dict(v) for k, v in kinds.items()}}
            print(out_type, json.dumps(facts["types"][out_type]), flush=True)
    return facts


def report_markdown(report: dict) -> str:
    lines = ["# GGUF with an importance matrix (llama-imatrix + llama-quantize --imatrix)", "",
             f"Calibration: {', '.join(report['calibration'])} ({report['calibration_chars']:,} "
             f"characters, normalised as hslm does); held out: {report['text']}. Reference: "
             "the PyTorch fp32 model's logits at every position of full-context windows; "
             f"llama.cpp on {THREADS} thread, F32 KV cache.", ""]
    for measured in report["models"]:
        im = measured["imatrix"]
        lines += [f"## {measured['model']}", "",
                  f"{measured['parameters']:,} parameters, hidden "
                  f"{measured['config']['hidden_size']}, context "
                  f"{measured['config']['context_length']}; {measured['positions']:,} held-out "
                  f"positions, PyTorch perplexity {measured['ppl_reference']:.2f}. Importance "
                  f"matrix: {im['chunks']} chunks of {im['chunk_tokens']} tokens in "
                  f"{im['seconds']} s.", "",
                  "| type | imatrix | bits/weight | top-1 | mean KL | p99 KL | ppl ratio | "
                  "KL with / without |", "|---|---|---|---|---|---|---|---|"]
        for out_type, row in measured["results"].items():
            for kind in ("plain", "imatrix"):
                r = row[kind]
                if r is None:
                    lines.append(f"| {out_type} | no | refused by llama.cpp | | | | | |")
                    continue
                ratio = (f"{row['imatrix']['kl_mean'] / row['plain']['kl_mean']:.2f}"
                         if kind == "imatrix" and row["plain"] else "")
                lines.append(f"| {out_type} | {'yes' if kind == 'imatrix' else 'no'} | "
                             f"{r['bits_per_weight']:.2f} | {100 * r['top1']:.2f}% | "
                             f"{r['kl_mean']:.2e} | {r['kl_p99']:.2e} | {r['ppl_ratio']:.4f} | "
                             f"{ratio} |")
        lines.append("")
    shape = report["shape"]
    lines += [f"## The types at hindi-270m's shapes ({shape['layers']} layers, vocabulary "
              f"{shape['vocab']:,}, random weights)", "",
              "Bits per weight over every tensor and over the layer matrices alone; the types "
              "llama.cpp chose for each matrix kind (count of layers).", "",
              "| type | bits/weight | layer bits/weight | tensor types |", "|---|---|---|---|"]
    for out_type, facts in shape["types"].items():
        kinds = "; ".join(f"{kind} " + ", ".join(f"{t}×{n}" for t, n in types.items())
                          for kind, types in facts["tensor_types"].items())
        lines.append(f"| {out_type} | {facts['bits_per_weight']:.2f} | "
                     f"{facts['layer_bits_per_weight']:.2f} | {kinds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="trained model folders")
    parser.add_argument("--calibration", type=Path, nargs="+",
                        default=[DATA / "news_headlines_bbc_hindi.txt"])
    parser.add_argument("--calibration-lines", type=int, default=6000,
                        help="first lines of the calibration text used")
    parser.add_argument("--text", type=Path, default=DATA / "stories_bhaav_sentences.txt",
                        help="held-out text (its first 3,000 lines)")
    parser.add_argument("--windows", type=int, default=16, help="held-out windows of full context")
    parser.add_argument("--shape-layers", type=int, default=8,
                        help="layers of the hindi-270m-shaped model for the type table")
    args = parser.parse_args()
    calibration = "\n".join(calibration_text(args.calibration).splitlines()
                            [:args.calibration_lines])
    held_out = list(read_lines(args.text))[:3000]
    report = {"benchmark": "gguf_imatrix",
              "calibration": [p.name for p in args.calibration],
              "calibration_chars": len(calibration), "text": args.text.name,
              "models": [measure_model(m, calibration, held_out, args.windows)
                         for m in args.models]}
    report["shape"] = shape_facts(load_torch_model(args.models[0])[1], calibration,
                                  args.shape_layers)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gguf_imatrix.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = report_markdown(report)
    (RESULTS / "gguf_imatrix.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
