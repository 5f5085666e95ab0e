#!/usr/bin/env bash
# The main job on the embedded default: make sure the toy world exists, then run every erasing
# application on every toy model (SPM with and without Facilitated Transport, against the
# original), writing tables, plots and grids to reports/<app>/. Rerun to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
if [ ! -f spmbench/toy/weights/judge/judge.json ] || [ ! -f spmbench/toy/weights/toy-base/model_index.json ]; then
    echo "toy world weights not in this checkout: training them (resumable; rerun to continue)"
    spmbench toy train
fi
spmbench run --app all --models toy "$@"
