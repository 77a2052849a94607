#!/usr/bin/env bash
# The whole pipeline on a CPU with the bundled sample text (data/sample/), in about five
# minutes on 2 cores. Each stage is one hslm command; outputs go under runs/demo/ (override
# with HSLM_RUN_DIR).
set -euo pipefail
cd "$(dirname "$0")"
run_dir="${HSLM_RUN_DIR:-runs/demo}"

# Every stage's packages, checked before any work starts (README, Install).
if ! command -v hslm-data >/dev/null; then
  echo "error: hslm is not installed: CMAKE_ARGS=\"-DLLAVA_BUILD=OFF\" pip install '.[all]'" >&2
  exit 2
fi
# From a neutral folder: this checkout's hslm/ (without apps/) would shadow the installed package.
(cd / && python3 - <<'PY') || exit 2
import importlib.util, sys
from hslm.apps.common import EXTRA_OF_MODULE
missing = sorted({extra for module, extra in EXTRA_OF_MODULE.items()
                  if importlib.util.find_spec(module) is None})
if missing:
    sys.exit(f"error: demo.sh needs the extras {', '.join(missing)}: "
             "CMAKE_ARGS=\"-DLLAVA_BUILD=OFF\" pip install '.[all]'")
PY
mkdir -p "$run_dir"

echo "== 1. data: clean, filter, scrub and deduplicate the raw sample (datatrove)"
hslm-data prepare --config configs/prepare-sample.yaml --output "$run_dir/prepared" --fresh

echo "== 2. tokenizer: SentencePiece BPE on the prepared documents, then tokenize them"
hslm-data tokenizer "$run_dir/prepared/documents" --output "$run_dir/tokenizer" --vocab-size 8000
hslm-tokenizer fertility "$run_dir/tokenizer" data/sample
hslm-data tokenize "$run_dir/prepared/documents" --tokenizer "$run_dir/tokenizer" \
  --output "$run_dir/shards"

echo "== 3. train: the tiny model (both sliding and global layers) on the CPU"
rm -rf "$run_dir/train"  # a fresh run each time (the same command otherwise resumes)
hslm-train --config configs/tiny-cpu.yaml data="$run_dir/shards" \
  tokenizer="$run_dir/tokenizer" out="$run_dir/train"
hslm-model info "$run_dir/train/model"

echo "== 4. generate: stream text from the trained model"
hslm-generate "$run_dir/train/model" --prompt "भारत की राजधानी" --max-new-tokens 40 --seed 0

echo "== 5. export: GGUF for llama.cpp in f16, q8_0 and 4-bit (+ Ollama Modelfile for 4-bit)"
for type in f16 q8_0; do
  hslm-export "$run_dir/train/model" --gguf "$type" --output "$run_dir/model-$type.gguf" \
    2>>"$run_dir/quantize.log"
done
hslm-export "$run_dir/train/model" --gguf q4 --output "$run_dir/model-q4.gguf" --ollama \
  2>>"$run_dir/quantize.log"
hslm-generate --gguf "$run_dir/model-q4.gguf" --prompt "भारत की राजधानी" --max-new-tokens 40 --seed 0

echo "== 6. export: ONNX folders for ONNX Runtime (fp32, int8, int4), then generate with int4"
for type in fp32 int8 int4; do
  rm -rf "$run_dir/onnx-$type"
  hslm-export "$run_dir/train/model" --onnx "$type" --output "$run_dir/onnx-$type" \
    2>>"$run_dir/onnx-export.log"
done
hslm-generate --onnx "$run_dir/onnx-int4" --prompt "भारत की राजधानी" --max-new-tokens 40 --seed 0

echo "== 7. parity: every export against the PyTorch model on real Hindi text"
exports=("$run_dir"/model-{f16,q8_0,q4}.gguf "$run_dir"/onnx-{fp32,int8,int4})
hslm-parity "$run_dir/train/model" "${exports[@]}" --text data/sample \
  --output "$run_dir/report/parity"

echo "== 8. bench: speed, latency, memory (and energy where measurable) of every backend"
hslm-bench "$run_dir/train/model" "${exports[@]}" --repeat 3 --n-prompt 128 --n-gen 64 \
  --output "$run_dir/report/bench"

echo "== 9. eval: task accuracy of every artifact on the Hindi tasks, beside the bench's costs"
data_dir="${HSLM_DATA:-../shared/data/hindi}"  # read at run time, never shipped (README)
if [ -d "$data_dir" ]; then
  hslm-eval "$run_dir/train/model" "${exports[@]}" --tasks all --limit 10 --threads 1 \
    --data "$data_dir" --output "$run_dir/report/eval"
  python3 benchmarks/eval_report.py --eval "$run_dir/report/eval/results.json" \
    --bench "$run_dir/report/bench/bench.json" --output "$run_dir/report/eval"
else
  echo "skipped: no Hindi task data in $data_dir (set HSLM_DATA to the folder)"
fi
echo "== done: reports in $run_dir/report/ (parity/parity.md, bench/bench.md, eval/report.md)"
