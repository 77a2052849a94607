"""Quality of quantized GGUF files against the PyTorch model they came from, on real Hindi text.

For a trained model folder: writes the F32 GGUF, quantizes it with llama.cpp (q8_0, q4_0,
iq4_nl), and compares llama.cpp's logits with PyTorch's at every position of held-out text
windows: top-1 agreement, mean and 99th-percentile KL divergence (as llama-perplexity
--kl-divergence reports them), and perplexity.

    python benchmarks/gguf_quality.py MODEL_FOLDER [--text FILE] [--windows 16]

Writes benchmarks/results/gguf_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from hslm.export.gguf import write_gguf
from hslm.parity import compare_logits
from hslm.quant.llama_cpp import quantize_gguf
from hslm.runtime.llama_cpp import load_gguf
from hslm.loader import load_torch_model
from hslm.tokenizer import read_lines

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
TYPES = ("q8_0", "q4_0", "iq4_nl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="trained model folder, run folder or checkpoint")
    parser.add_argument("--text", type=Path, default=REPO.parent / "shared" / "data" / "hindi"
                        / "news_headlines_bbc_hindi.txt")
    parser.add_argument("--windows", type=int, default=16, help="text windows of full context")
    args = parser.parse_args()
    model, tokenizer = load_torch_model(args.model)
    context = model.config.context_length
    # The last lines of the file: text the model has seen least of.
    ids = tokenizer.encode(" ".join(list(read_lines(args.text))[-4000:]))
    windows = [[tokenizer.bos_id] + ids[i * (context - 1):(i + 1) * (context - 1)]
               for i in range(args.windows)]
    windows = [w for w in windows if len(w) == context]
    with torch.no_grad():
        ours = [model(torch.tensor([w]))[0].float().numpy() for w in windows]
    targets = np.concatenate([w[1:] for w in windows])
    reference = np.concatenate([o[:-1] for o in ours])
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        f32 = write_gguf(model, tokenizer, Path(work) / "model-f32.gguf", "f32")
        for out_type in ("f32", *TYPES):
            path = f32 if out_type == "f32" else quantize_gguf(
                f32, Path(work) / f"model-{out_type}.gguf", out_type).path
            source, _ = load_gguf(path, all_logits=True)
            theirs = np.concatenate([source.all_logits(w)[:-1] for w in windows])
            rows[out_type] = {**compare_logits(reference, theirs, targets),
                              "mb": path.stat().st_size / 1e6}
            print(out_type, rows[out_type], flush=True)
    report = {"benchmark": "gguf_quality", "model": str(args.model),
              "config": model.config.to_dict(), "text": args.text.name,
              "positions": int(len(targets)), "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gguf_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# GGUF quality vs PyTorch: {len(targets):,} positions of {args.text.name}",
             "", f"Model: {args.model} ({model.num_parameters():,} parameters, context "
             f"{context}); PyTorch perplexity {rows['f32']['ppl_reference']:.2f}.", "",
             "| type | MB | top-1 agreement | mean KL | p99 KL | perplexity |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t} | {r['mb']:.1f} | {100 * r['top1']:.2f}% | {r['kl_mean']:.2e} "
              f"| {r['kl_p99']:.2e} | {r['ppl']:.2f} |" for t, r in rows.items()]
    (RESULTS / "gguf_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
