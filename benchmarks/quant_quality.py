"""Quantization quality on a reference model with hindi-270m's tensor shapes, on held-out Hindi.

1. The reference models (trained once, cached outside the repository, default
   ~/.cache/hslm/quant_quality): every shared Hindi text file's lines are documents; every
   50th document is held out. An 8k tokenizer and configs/quant-reference-cpu.yaml's model
   (hidden 640, FFN 2,048, 4 x 256 query / 1 x 256 KV heads, 5 sliding + 1 global layers) are
   trained on the rest (~45 minutes on 2 cores). Four fine-tunings of it follow, the same but
   for `qat`: none (the control), q4_0 and iq4_nl (for GGUF q4_0 and q4) and onnx-int4 (for
   ONNX int4).
2. The measurement: every GGUF type with and without an importance matrix (calibrated on
   training documents), ONNX int8 and the int4 algorithms x block sizes x output-head bits
   (HQQ and GPTQ, slow here, at block 32 only), and the fine-tuned models' 4-bit exports,
   each compared with its PyTorch fp32 model at every position of full-context windows of
   held-out documents (hslm-parity's measurements: top-1, mean and p99 KL, perplexity ratio,
   greedy agreement), with bits per parameter (weights alone, and the whole file) and decode
   tokens/s (1 thread); then the decode speeds of the 4-bit defaults, taken in turns.

    python benchmarks/quant_quality.py [--cache DIR] [--windows 4] [--qat-steps 40]
    python benchmarks/quant_quality.py --speed-only    # the decode speeds again (idle machine)
    python benchmarks/quant_quality.py --render-only   # markdown + plot from the JSON

Writes benchmarks/results/quant_quality.{json,md} and quant_quality.png, the JSON after every
row (a run that stops continues where it stopped). Needs `hslm-native build` (llama-imatrix)
and the `onnx` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from hslm.export.gguf import write_gguf
from hslm.export.onnx import MODEL_FILE, export_onnx
from hslm.loader import load_torch_model
from hslm.parity import (Reference, check_artifact, log_softmax, open_artifact,
                         validation_windows)
from hslm.quant.imatrix import calibration_text, compute_imatrix
from hslm.quant.llama_cpp import LOW_BIT_TYPES, NEEDS_IMATRIX, quantize_gguf
from hslm.quant.onnx import (ALGORITHMS, BLOCK_SIZE, BLOCK_SIZES, HEAD_BIT_CHOICES,
                             OnnxQuantizeError, QuantizeOptions, calibration_windows,
                             quantize_onnx_folder)
from hslm.runtime.llama_cpp import gguf_summary, load_gguf
from hslm.runtime.onnx import initializer_bytes
from hslm.tokenizer import Tokenizer, read_lines
from onnx_int4 import decode_tokens_per_s  # this folder's benchmark

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "hindi"
RESULTS = Path(__file__).parent / "results"
CONFIG = REPO / "configs" / "quant-reference-cpu.yaml"
HELD_OUT_EVERY = 50  # every 50th document of each file is held out
VOCAB = 8000
# qat scheme -> (format, type, algorithm) of the export it is for; "none" is the control: the
# same fine-tuning without QAT
QAT_EXPORTS = {"none": None, "q4_0": ("gguf", "q4_0", None), "iq4_nl": ("gguf", "q4", None),
               "onnx-int4": ("onnx", "int4", "rtn")}
CALIBRATION_EVERY = 50  # every 50th training document calibrates (imatrix, GPTQ)
GGUF_TYPES = ("f16", "q8_0", "q4", "q4_0", *LOW_BIT_TYPES)
THREADS = 1  # llama.cpp's spinning thread pool is far slower with 2 on a shared 2-core machine
# HQQ and GPTQ take minutes to tens of minutes per export at these shapes (and HQQ's graphs
# decode 20-60x slower, benchmarks/results/onnx_int4.md): measured at one block size only
SLOW_ALGORITHMS = {"hqq": (32,), "gptq": (32,)}
# The 4-bit defaults whose decode speeds are compared in turns (the files measured above)
SPEED_EXPORTS = {"GGUF q4 (default)": "gguf/model-q4-0.gguf",
                 "ONNX int4 default (rtn /32, 8-bit head)": "onnx/int4-rtn-32-h8",
                 "ONNX int4 before (rtn /32, 4-bit head)": "onnx/int4-rtn-32-h4"}
SPEED_ROUNDS = 20
KEY_FIELDS = ("model", "format", "type", "imatrix", "algorithm", "block_size", "head_bits")


def documents(data: Path) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents): each file's lines, every HELD_OUT_EVERY-th
    held out, so both splits draw from every source."""
    files = sorted(data.glob("*.txt"))
    if not files:
        raise SystemExit(f"no *.txt files in {data}")
    train, held_out = [], []
    for path in files:
        for number, line in enumerate(read_lines(path)):
            if line.strip():
                (held_out if number % HELD_OUT_EVERY == 0 else train).append(line)
    return train, held_out


def train_run(config_overrides: list[str], tokenizer, out: Path) -> Path:
    """Train (or finish training) the run in `out` and save its model to out/model."""
    from hslm.export.hf import save_hf
    from hslm.train.config import TrainConfig
    from hslm.train.loop import train
    model_folder = out / "model"
    if (model_folder / "config.json").exists():
        return model_folder
    config = TrainConfig.load(CONFIG, [f"out={out}", *config_overrides])
    started = time.perf_counter()
    result = train(config, tokenizer, progress=lambda record: print(
        json.dumps(record, ensure_ascii=False), flush=True))
    save_hf(result.model, model_folder, tokenizer=tokenizer)
    (out / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return model_folder


def reference_models(cache: Path, data: Path, qat_steps: int) -> dict[str, Path]:
    """{"base": folder, "qat iq4_nl": folder, ...}, training what the cache lacks."""
    from hslm.data.shards import MANIFEST, write_shards_from_texts
    from hslm.tokenizer import MODEL_FILE
    from hslm.tokenizer_train import train_tokenizer_on_texts
    cache.mkdir(parents=True, exist_ok=True)
    train_documents, _ = documents(data)
    if not (cache / "tokenizer" / MODEL_FILE).exists():
        train_tokenizer_on_texts(train_documents, cache / "tokenizer", vocab_size=VOCAB)
    tokenizer = Tokenizer.load(cache / "tokenizer")
    if not (cache / "shards" / MANIFEST).exists():
        # the training run's own validation split comes out of the training documents
        write_shards_from_texts(train_documents, tokenizer, cache / "shards", val_fraction=0.01)
    data_overrides = [f"data={cache / 'shards'}", f"tokenizer={cache / 'tokenizer'}"]
    models = {"base": train_run(data_overrides, tokenizer, cache / "base")}
    for scheme in QAT_EXPORTS:
        models[f"qat {scheme}"] = train_run(
            data_overrides + [f"init_from={models['base']}", f"qat={scheme}",
                              f"steps={qat_steps}", "lr=2e-4", "warmup=4",
                              f"eval_every={qat_steps}", f"checkpoint_every={qat_steps}"],
            tokenizer, cache / f"qat-{scheme}")
    return models


class Report:
    """benchmarks/results/quant_quality.json, saved after every row; rows already in it are
    not measured again (a run that stops continues where it stopped)."""

    def __init__(self, path: Path, facts: dict):
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        self.data = {**facts, "rows": old.get("rows", []) if old.get("config") ==
                     facts["config"] else []}

    def has(self, **key) -> bool:
        return any(all(row.get(k) == key.get(k) for k in KEY_FIELDS) for row in self.data["rows"])

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")


def weight_bytes(path: Path) -> int:
    """Bytes of the weights alone: a GGUF file's tensors, or an ONNX graph's initializers but its
    RoPE cos/sin tables (llama.cpp computes those on the fly; the file sizes include both
    formats' metadata and the tokenizer in the GGUF file)."""
    if path.is_file():
        return gguf_summary(path)[1]
    graph = onnx.load(str(path / MODEL_FILE), load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    return sum(initializer_bytes(tensor) for tensor in graph.initializer
               if consumers.get(tensor.name) != {"RotaryEmbedding"})


def measure_artifact(reference: Reference, path: Path, parameters: int) -> dict:
    """hslm-parity's measurements of one export against `reference`, with its size and decode
    speed (1 thread)."""
    artifact = open_artifact(path, threads=THREADS)
    result = check_artifact(reference, artifact)
    decoder = load_gguf(path, threads=THREADS)[0] if artifact.kind == "gguf" else artifact.source
    size = path.stat().st_size if path.is_file() else (path / MODEL_FILE).stat().st_size
    return {"file_type": artifact.type, "bits_per_parameter": size * 8 / parameters,
            "weight_bits_per_parameter": weight_bytes(path) * 8 / parameters, "mb": size / 1e6,
            **{k: result.logits[k] for k in ("top1", "kl_mean", "kl_p99", "ppl",
                                             "ppl_reference", "ppl_ratio")},
            "greedy_agreement": [sum(s for s, _ in result.greedy_agreement),
                                 sum(n for _, n in result.greedy_agreement)],
            "tokens_per_s": decode_tokens_per_s(decoder, reference.windows[0][:64]),
            "parity_failures": result.failures}


def quiet(line: str) -> None:
    pass


def gguf_rows(report: Report, name: str, model, tokenizer, reference, work: Path,
              calibration: str, types=GGUF_TYPES) -> None:
    """Every GGUF type of `types`, without and with an importance matrix where llama.cpp
    allows."""
    work.mkdir(parents=True, exist_ok=True)
    parameters = model.num_parameters()
    f32 = write_gguf(model, tokenizer, work / "model-f32.gguf", "f32")
    imatrix = None
    for out_type in types:
        for calibrated in (False, True):
            key = {"model": name, "format": "gguf", "type": out_type, "imatrix": calibrated}
            if (out_type in ("f16", "q8_0") and calibrated or out_type in NEEDS_IMATRIX
                    and not calibrated or report.has(**key)):
                continue  # f16/q8_0 ignore an importance matrix; IQ2/IQ3_XXS need one
            if out_type == "f16":
                path, bits = write_gguf(model, tokenizer, work / "model-f16.gguf", "f16"), 16.0
            else:
                if calibrated and imatrix is None:
                    imatrix = compute_imatrix(f32, calibration, tokenizer, work / "imatrix.gguf",
                                              model.config.context_length, threads=THREADS,
                                              say=quiet)
                done = quantize_gguf(f32, work / f"model-{out_type}-{int(calibrated)}.gguf",
                                     out_type, threads=THREADS,
                                     imatrix=imatrix if calibrated else None, say=quiet)
                path, bits = done.path, done.bits_per_weight
            report.add({**key, "gguf_bits_per_weight": bits,
                        **measure_artifact(reference, path, parameters)})


def onnx_rows(report: Report, name: str, model, tokenizer, reference, work: Path,
              calibration_file: Path, slow: bool) -> None:
    """int8 and every int4 algorithm x block size x head bits that ONNX Runtime can do here
    (the slow algorithms at their block sizes only when `slow`)."""
    parameters, config = model.num_parameters(), model.config
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "fp32" / MODEL_FILE).exists():
        export_onnx(model, tokenizer, work / "fp32")
    calibration = calibration_windows(tokenizer, [calibration_file], config.context_length)
    plans = [QuantizeOptions("int8")]
    for head_bits in reversed(HEAD_BIT_CHOICES):
        for algorithm in ALGORITHMS:
            # the 4-bit head (the earlier default) at the default block size, for comparison
            blocks = SLOW_ALGORITHMS.get(algorithm, BLOCK_SIZES if head_bits == 8
                                         else (BLOCK_SIZE,))
            if (algorithm in SLOW_ALGORITHMS) != slow or algorithm in SLOW_ALGORITHMS \
                    and head_bits != HEAD_BIT_CHOICES[-1]:
                continue
            plans += [QuantizeOptions("int4", algorithm, block,
                                      calibration if algorithm == "gptq" else (), head_bits)
                      for block in blocks]
    for options in plans:
        key = {"model": name, "format": "onnx", "type": options.kind}
        if options.kind == "int4":
            key |= {"algorithm": options.algorithm, "block_size": options.block_size,
                    "head_bits": options.head_bits}
        if report.has(**key):
            continue
        try:
            options.check(config)
        except OnnxQuantizeError as err:
            report.add({**key, "refused": str(err)})
            continue
        folder = work / (f"{options.kind}-{options.algorithm}-{options.block_size}"
                         f"-h{options.head_bits}")
        started = time.perf_counter()
        quantize_onnx_folder(work / "fp32", folder, options)
        seconds = time.perf_counter() - started
        report.add({**key, "quantize_s": round(seconds, 1),
                    **measure_artifact(reference, folder, parameters)})


def qat_rows(report: Report, models: dict[str, Path], held_out: list[str], windows: int,
             work: Path) -> None:
    """Each fine-tuned model's 4-bit exports against its own PyTorch model (the control, the
    same fine-tuning without QAT, gets both)."""
    for name, folder in models.items():
        if not name.startswith("qat "):
            continue
        scheme = name.removeprefix("qat ")
        exports = [QAT_EXPORTS[scheme]] if QAT_EXPORTS[scheme] else \
            [e for e in QAT_EXPORTS.values() if e]
        keys = [{"model": name, "format": kind, "type": kind_type,
                 "imatrix": False if kind == "gguf" else None, "algorithm": method,
                 "block_size": None if kind == "gguf" else 32,
                 "head_bits": None if kind == "gguf" else HEAD_BIT_CHOICES[-1]}
                for kind, kind_type, method in exports]
        if all(report.has(**key) for key in keys):
            continue
        model, tokenizer = load_torch_model(folder)
        reference = Reference.compute(model, tokenizer, held_out, windows=windows)
        out = work / scheme
        out.mkdir(parents=True, exist_ok=True)
        for key in keys:
            if report.has(**key):
                continue
            if key["format"] == "gguf":
                f32 = out / "model-f32.gguf"
                if not f32.exists():
                    write_gguf(model, tokenizer, f32, "f32")
                path = quantize_gguf(f32, out / f"model-{key['type']}.gguf", key["type"],
                                     threads=THREADS, say=quiet).path
            else:
                export_onnx(model, tokenizer, out / "fp32")
                path = out / "int4"
                quantize_onnx_folder(out / "fp32", path, QuantizeOptions("int4"))
            report.add({**{k: v for k, v in key.items() if v is not None},
                        **measure_artifact(reference, path, model.num_parameters())})


def measure(models: dict[str, Path], data: Path, windows: int, qat_steps: int,
            work: Path) -> Report:
    train_documents, held_out = documents(data)
    work.mkdir(parents=True, exist_ok=True)
    calibration_file = work / "calibration.txt"
    calibration_file.write_text("\n".join(train_documents[::CALIBRATION_EVERY]) + "\n",
                                encoding="utf-8")
    calibration = calibration_text([calibration_file])
    model, tokenizer = load_torch_model(models["base"])
    reference = Reference.compute(model, tokenizer, held_out, windows=windows)
    training = {name: json.loads((Path(folder).parent / "seconds.json").read_text())["seconds"]
                for name, folder in models.items()}
    RESULTS.mkdir(exist_ok=True)
    report = Report(RESULTS / "quant_quality.json", {
        "benchmark": "quant_quality", "config": model.config.to_dict(),
        "parameters": model.num_parameters(), "held_out_documents": len(held_out),
        "positions": int(len(reference.targets)), "windows": windows, "qat_steps": qat_steps,
        "ppl_reference": float(np.exp(-log_softmax(reference.logits)[
            np.arange(len(reference.targets)), reference.targets].mean())),
        "calibration_characters": len(calibration), "training_seconds": training,
        "greedy_samples": [{"prompt": tokenizer.decode(prompt), "continuation":
                            tokenizer.decode(ids)}
                           for prompt, ids in zip(reference.prompts[:2],
                                                  reference.continuations)]})
    gguf_rows(report, "base", model, tokenizer, reference, work / "gguf", calibration)
    onnx_rows(report, "base", model, tokenizer, reference, work / "onnx", calibration_file,
              slow=False)
    qat_rows(report, models, held_out, windows, work / "qat")
    onnx_rows(report, "base", model, tokenizer, reference, work / "onnx", calibration_file,
              slow=True)
    report.data["decode_speed"] = decode_speed(work, reference.windows[0][:64])
    report.save()
    return report


def decode_speed(work: Path, prompt: list[int], rounds: int = SPEED_ROUNDS) -> dict:
    """Decode tokens/s of the 4-bit defaults, today's and before, taken in turns (each round
    decodes 32 steps with each export), so that other work on the machine slows all alike."""
    sources = {name: (load_gguf(work / path, threads=THREADS)[0] if path.endswith(".gguf")
                      else open_artifact(work / path, threads=THREADS).source)
               for name, path in SPEED_EXPORTS.items()}
    speeds: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, source in sources.items():
            speeds[name].append(decode_tokens_per_s(source, prompt))
    return {"threads": THREADS, "rounds": rounds, "tokens_per_s": {
        name: {"median": statistics.median(s), "min": min(s), "max": max(s)}
        for name, s in speeds.items()}}


def row_name(row: dict) -> str:
    if row["format"] == "gguf":
        return f"GGUF {row['type']}" + (" + imatrix" if row.get("imatrix") else "")
    if row["type"] != "int4":
        return f"ONNX {row['type']}"
    return (f"ONNX int4 {row['algorithm']} /{row['block_size']}"
            + (", 8-bit head" if row["head_bits"] == 8 else ""))


def render(data: dict) -> str:
    """The markdown report, and quant_quality.png beside it (with matplotlib)."""
    config = data["config"]
    rows = [r for r in data["rows"] if "refused" not in r]
    base = [r for r in rows if r["model"] == "base"]
    gguf_q4 = next(r for r in base if r["format"] == "gguf" and r["type"] == "q4"
                   and not r["imatrix"])
    header = ("| export | weight bits/param | file bits/param | top-1 | mean KL | KL / GGUF q4 | "
              "p99 KL | ppl ratio | greedy | tokens/s |")
    rule = "|---|---|---|---|---|---|---|---|---|---|"

    def line(r, name):
        return (f"| {name} | {r['weight_bits_per_parameter']:.2f} | "
                f"{r['bits_per_parameter']:.2f} | {100 * r['top1']:.2f}% | "
                f"{r['kl_mean']:.2e} | {r['kl_mean'] / gguf_q4['kl_mean']:.2f} | "
                f"{r['kl_p99']:.2e} | {r['ppl_ratio']:.4f} | {r['greedy_agreement'][0]}/"
                f"{r['greedy_agreement'][1]} | {r['tokens_per_s']:.0f} |")

    minutes = data["training_seconds"]
    lines = [
        "# Quantization quality on the reference model (held-out Hindi)", "",
        f"**The model** (`configs/quant-reference-cpu.yaml`, trained by this benchmark): "
        f"{data['parameters']:,} parameters, every matrix of hindi-270m's shape (hidden "
        f"{config['hidden_size']}, FFN {config['ffn_size']}, {config['n_heads']} query heads / "
        f"{config['n_kv_heads']} KV head of {config['head_dim']}, window "
        f"{config['sliding_window']}, context {config['context_length']}), "
        f"{config['n_layers']} layers ({config['layer_types'].count('sliding_attention')} "
        f"sliding, {config['layer_types'].count('full_attention')} global), vocabulary "
        f"{config['vocab_size']:,}; {minutes['base'] / 60:.0f} minutes of CPU training "
        f"(2 cores, ~1M tokens). Held out: every {HELD_OUT_EVERY}th line of each shared "
        f"Hindi file ({data['held_out_documents']:,} documents); {data['positions']:,} "
        f"positions in {data['windows']} windows of the full context, cut from the start of "
        "the held-out documents (files in alphabetical order: encyclopedic paragraphs, then "
        "essays). PyTorch fp32 "
        f"perplexity there: **{data['ppl_reference']:.1f}**. Greedy text from held-out "
        "prompts (so a reader knows what it is):", ""]
    lines += [f"> {s['prompt']} → {s['continuation']}" for s in data["greedy_samples"]]
    lines += [
        "", "Each export against the PyTorch fp32 model at every position (hslm-parity's "
        "measurements): top-1 agreement, mean and p99 KL, perplexity ratio, greedy tokens "
        "shared over 4 prompts x 32; weight bits/param = bytes of the weight tensors x 8 / "
        "parameters (the tied matrix once; ONNX's RoPE cos/sin tables, which llama.cpp "
        "computes on the fly, left out); file bits/param the same for the whole file; tokens/s = decode, 1 thread, median of 32 steps, on a 2-core machine running "
        "other work (compare within a column only roughly). Importance matrix and GPTQ "
        f"calibrated on {data['calibration_characters']:,} characters of training documents.",
        "", "## Post-training quantization", "", header, rule]
    lines += [line(r, row_name(r)) for r in base]
    refused = [r for r in data["rows"] if "refused" in r]
    if refused:
        lines += ["", "Refused: " + "; ".join(f"{row_name(r)} ({r['refused'].split(':')[0]})"
                                               for r in refused)]
    qat = [r for r in rows if r["model"].startswith("qat ")]
    if qat:
        runs = sorted({r["model"].removeprefix("qat ") for r in qat})
        lines += ["", "## Quantization-aware training vs post-training quantization", "",
                  f"Fine-tunings of {data['qat_steps']} steps (4,096 tokens each, lr 2e-4) "
                  "from the reference model, the same but for `qat`: "
                  + ", ".join(f"`{run}`" for run in runs) + " (`none` is the control, "
                  "exported by post-training quantization). KL against each model's own "
                  "PyTorch weights; the perplexity ratio that matters is the 4-bit export's "
                  "over the control's fp32 perplexity.", "",
                  "| fine-tuning | export | KL vs own fp32 | top-1 | ppl | ppl / control fp32 |",
                  "|---|---|---|---|---|---|"]
        control_ppl = next((r["ppl_reference"] for r in qat if r["model"] == "qat none"), None)
        for r in sorted(qat, key=lambda r: (row_name(r), r["model"] != "qat none")):
            ratio = f"{r['ppl'] / control_ppl:.4f}" if control_ppl else ""
            lines.append(f"| {r['model']} | {row_name(r)} | {r['kl_mean']:.2e} | "
                         f"{100 * r['top1']:.2f}% | {r['ppl']:.2f} | {ratio} |")
        if control_ppl:
            lines.append(f"\nControl fp32 perplexity: {control_ppl:.2f}.")
    if "decode_speed" in data:
        speed = data["decode_speed"]
        lines += ["", "## Decode speed of the 4-bit defaults", "",
                  f"Taken in turns: {speed['rounds']} rounds, each decoding 32 steps after a "
                  f"64-token prompt with every export ({speed['threads']} thread), so that "
                  "other work on the machine slows all alike.", "",
                  "| export | tokens/s (median of rounds) | slowest round | fastest round |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {t['median']:.0f} | {t['min']:.0f} | {t['max']:.0f} |"
                  for name, t in speed["tokens_per_s"].items()]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "\n".join(lines + ["", "(install matplotlib for the plot)"]) + "\n"
    figure, (kl_axis, ppl_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    families = {"GGUF": lambda r: r["format"] == "gguf" and not r.get("imatrix"),
                "GGUF + imatrix": lambda r: r["format"] == "gguf" and r.get("imatrix"),
                "ONNX int8": lambda r: r["format"] == "onnx" and r["type"] == "int8",
                "ONNX int4, 4-bit head": lambda r: r.get("head_bits") == 4,
                "ONNX int4, 8-bit head": lambda r: r.get("head_bits") == 8}
    for label, keep in families.items():
        chosen = [r for r in base if keep(r) and r["type"] != "f16"]
        for axis, field in ((kl_axis, "kl_mean"), (ppl_axis, "ppl_ratio")):
            axis.scatter([r["weight_bits_per_parameter"] for r in chosen],
                         [r[field] for r in chosen], label=label, s=18)
    kl_axis.set_yscale("log")
    kl_axis.set_ylabel("mean KL vs PyTorch fp32")
    ppl_axis.set_ylabel("perplexity / PyTorch fp32 perplexity")
    for axis in (kl_axis, ppl_axis):
        axis.set_xlabel("bits per parameter (weights)")
        axis.grid(alpha=0.3)
    kl_axis.legend(fontsize=7)
    figure.suptitle(f"hslm reference model ({data['parameters'] / 1e6:.1f}M parameters), "
                    "held-out Hindi")
    figure.tight_layout()
    figure.savefig(RESULTS / "quant_quality.png", dpi=110)
    return "\n".join(lines + ["", "![KL and perplexity ratio against bits per parameter]"
                                  "(quant_quality.png)"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hslm"
                        / "quant_quality", help="where the reference models are kept")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of Hindi *.txt files")
    parser.add_argument("--qat-steps", type=int, default=40,
                        help="steps of each fine-tuning from the reference model")
    parser.add_argument("--windows", type=int, default=4,
                        help="held-out windows of the full context (1,024 tokens)")
    parser.add_argument("--train-only", action="store_true",
                        help="train what the cache lacks and stop")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the models the cache has, without training")
    parser.add_argument("--speed-only", action="store_true",
                        help="measure again the decode speeds of the 4-bit defaults, in turns, "
                             "from the cached exports (best on an otherwise idle machine)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the markdown and the plot from the saved JSON")
    args = parser.parse_args()
    results = RESULTS / "quant_quality.json"
    if (args.render_only or args.speed_only) and not results.exists():
        raise SystemExit(f"no results to render: {results} does not exist (run the benchmark)")
    needed = ([args.cache / "exports" / path for path in SPEED_EXPORTS.values()]
              if args.speed_only else [args.cache / "base" / "model" / "config.json"]
              if args.measure_only else [])
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise SystemExit(f"not in the cache {args.cache}: {', '.join(missing)} (run the "
                         "benchmark without --speed-only/--measure-only to make them)")
    if args.speed_only:
        data = json.loads(results.read_text())
        tokenizer = Tokenizer.load(args.cache / "tokenizer")
        prompt = validation_windows(tokenizer, documents(args.data)[1],
                                    data["config"]["context_length"], 1)[0][:64]
        data["decode_speed"] = decode_speed(args.cache / "exports", prompt)
        results.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if args.render_only or args.speed_only:
        (RESULTS / "quant_quality.md").write_text(render(json.loads(results.read_text())))
        return
    if args.measure_only:
        models = {"base": args.cache / "base" / "model"} | {
            f"qat {scheme}": args.cache / f"qat-{scheme}" / "model" for scheme in QAT_EXPORTS
            if (args.cache / f"qat-{scheme}" / "model" / "config.json").exists()}
    else:
        models = reference_models(args.cache, args.data, args.qat_steps)
    if args.train_only:
        return
    report = measure(models, args.data, args.windows, args.qat_steps, args.cache / "exports")
    (RESULTS / "quant_quality.md").write_text(render(report.data))


if __name__ == "__main__":
    main()
