#!/usr/bin/env bash
# The main job on the embedded default, toy world v3: make sure its weights exist, then run the paper's
# evaluation (concept, artist, explicit and object erasing, the FT ablation) on toy3-base with the original, SPM
# with Facilitated Transport and SPM without it, each SPM fitted with 3 seeds, every rate with its n and 95 %
# interval, on the test split with the settings chosen on dev (reports/toy3-*/tuning.json, copied beside the
# tables). Tables go to reports/main/ (REPORTS/<app>/, REPORTS/paper/toy3/), beside the committed tables of record
# (reports/toy3-*/, reports/paper/toy3/: every eraser, all seven models, attacks; `bash scripts/toy3_record.sh`),
# whose rows for these erasers they reproduce. Rerun to resume. Arguments pass through to `spmbench paper`, e.g.
# `--erasers all` (every eraser: several hours), `--models all` (the transfer table), `--limit 2` (a smoke run: its
# tables replace reports/main's; add `--reports DIR` to keep them apart).
# One process per core, one torch thread each (SPMBENCH_PROCESSES=N for another count).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
PROCESSES=${SPMBENCH_PROCESSES:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}  # nproc honours those
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
if [ ! -f spmbench/toy/v3/weights/judge/judge.json ] || [ ! -f spmbench/toy/v3/weights/toy-base/model_index.json ]; then
    echo "toy world v3 weights not in this checkout: training them (resumable; rerun to continue)"
    spmbench toy train --world 3
fi
ARGS=(paper --world toy3 --apps toy3-concept,toy3-artist,toy3-explicit,toy3-object --models toy3-base
      --erasers none,spm,spm-noft --reports reports/main --tuning reports "$@")
started=$(date +%s)
if [[ " $* " == *" --dry-run "* ]]; then
    exec python -m spmbench "${ARGS[@]}"
elif [ "$PROCESSES" -gt 1 ]; then
    accelerate launch --multi_gpu --num_processes "$PROCESSES" -m spmbench "${ARGS[@]}"
else
    python -m spmbench "${ARGS[@]}"
fi
echo "main job: $(( ($(date +%s) - started) / 60 )) min in $PROCESSES process(es); tables in reports/main/"
