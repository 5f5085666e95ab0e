#!/usr/bin/env bash
# Set up (idempotent), lint, and run the default (fast, offline) test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
ruff check spm spmbench tests bench
ruff format --check spm spmbench tests bench
python -m pytest -q "$@"
