#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with the project installed.
# torch is pinned to the local CPU build where no torch is present (an unpinned torch pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
    pip install -q "torch==2.13.0"
fi
pip install -q -e ".[dev]"
