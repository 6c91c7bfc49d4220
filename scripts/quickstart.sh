#!/usr/bin/env bash
# One command from a fresh checkout: install, obtain the default model, export it, then
# summarize and rewrite the sample text, printing tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
B=.venv/bin
OUT=${OUT:-build/smollm2-135m-instruct}
$B/llama-export export smollm2-135m-instruct -o "$OUT" --force
echo
echo "== summary =="
$B/llama-edge summarize -m "$OUT/hf" edge/data/sample.txt
echo
echo "== rewrite (simple) =="
$B/llama-edge rewrite -m "$OUT/hf" edge/data/sample.txt --style simple
