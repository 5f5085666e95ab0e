#!/usr/bin/env bash
# The main job on the embedded default: make sure the toy world exists, then run every erasing
# application on every toy model with every built-in eraser (SPM with and without Facilitated
# Transport, and each baseline, against the original), writing the tables, plots and grids
# committed in reports/<app>/. Rerun to resume. About 40 min on 2 CPU cores; SPM only
# (`bash scripts/main.sh --erasers none,spm,spm-rel,spm-noft`) about 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
if [ ! -f spmbench/toy/weights/judge/judge.json ] || [ ! -f spmbench/toy/weights/toy-base/model_index.json ]; then
    echo "toy world weights not in this checkout: training them (resumable; rerun to continue)"
    spmbench toy train
fi
spmbench run --app all --models toy --erasers all "$@"
