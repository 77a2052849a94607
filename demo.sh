#!/usr/bin/env bash
# The whole pipeline on a CPU with the bundled sample text (data/sample/). Each stage is one
# hslm command; outputs go under runs/demo/ (override with HSLM_RUN_DIR).
set -euo pipefail
cd "$(dirname "$0")"
run_dir="${HSLM_RUN_DIR:-runs/demo}"
mkdir -p "$run_dir"

echo "== 1. tokenizer: SentencePiece BPE on the bundled Hindi + Hinglish sample"
hslm-tokenizer train data/sample --output "$run_dir/tokenizer" --vocab-size 8000
hslm-tokenizer fertility "$run_dir/tokenizer" data/sample

echo "== 2. model: the tiny preset (both sliding and global layers), random weights"
# Training arrives with hslm-train; until then the demo shows the plumbing on random weights.
hslm-model init --preset tiny --tokenizer "$run_dir/tokenizer" --output "$run_dir/model"
hslm-model info "$run_dir/model"

echo "== 3. generate: stream text from the model folder"
hslm-generate "$run_dir/model" --prompt "भारत की राजधानी" --max-new-tokens 40 --seed 0

echo "== 4. export: 4-bit GGUF for llama.cpp, then generate with it"
hslm-export "$run_dir/model" --gguf q4 --output "$run_dir/model-q4.gguf" 2>"$run_dir/quantize.log"
hslm-generate --gguf "$run_dir/model-q4.gguf" --prompt "भारत की राजधानी" --max-new-tokens 40 --seed 0
