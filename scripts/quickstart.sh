#!/usr/bin/env bash
# One command from a fresh checkout: install, obtain the default model, export it to the edge
# artifact, then summarize and rewrite the sample text with the edge runtime, printing tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
B=.venv/bin
OUT=${OUT:-build/smollm2-135m-instruct}
RECIPE=${RECIPE:-8da4w}
$B/llama-export export smollm2-135m-instruct -o "$OUT" --recipe "$RECIPE" --force
echo
$B/llama-edge info "$OUT/edge" --no-verify
echo
echo "== summary =="
$B/llama-edge summarize -m "$OUT/edge" edge/data/sample.txt
echo
echo "== rewrite (simple) =="
$B/llama-edge rewrite -m "$OUT/edge" edge/data/sample.txt --style simple
