#!/usr/bin/env bash
# The toy world v3 tables of record (protocol v3: issues 17-20), step by step, most needed first. Every step is
# `spmbench tune`/`run`/`paper`, resumable through its run folder: rerun this script after any stop and it
# continues where it stopped (a finished step costs a few seconds of planning). Two processes share each step
# (accelerate launch, one torch thread each); `--processes 1` for one. `--dry-run` prints every step's plan and
# estimated cost (for one process) and runs nothing. Several sessions of 2 CPU cores in all: see each step's dry run.
#
#   bash scripts/toy3_record.sh              # everything, in order
#   bash scripts/toy3_record.sh --from 3     # from step 3 (steps are numbered as below)
#   bash scripts/toy3_record.sh --only 2     # one step
#   bash scripts/toy3_record.sh --commit-state 30   # and commit the run's state every 30 minutes and after each step
#
# Sessions end without warning and their machines keep nothing: the run's small stage files (results, scores,
# alteration features, SPM fits; not images or baselines' weights) are packed into records/toy3-state/, one archive
# per run folder with its SPM fits mirrored as plain files beside it (scripts/run_state.py), and unpacked into runs/
# when the script starts, so a cell finished in any session is not made again. With --commit-state the steps'
# reports (tuning records, tables) are committed as they come, with the fits and the archives of at most 4 MiB: a
# run folder's alteration features (~340 KB a cell) make most archives larger, and those stay on the machine (a
# tuning run is redone in ~30 min; its record is what later steps read).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

FROM=1 ONLY="" PROCESSES=2 DRY="" COMMIT_EVERY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from) FROM=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --processes) PROCESSES=$2; shift 2 ;;
        --dry-run) DRY="--dry-run"; shift ;;
        --commit-state) COMMIT_EVERY=$2; shift 2 ;;
        *) echo "error: unknown option $1 (use --from N, --only N, --processes N, --dry-run, --commit-state MIN)" >&2
           exit 2 ;;
    esac
done

STATE=records/toy3-state
STATE_MAX=$((4 * 1048576))  # an archive above this stays on this machine: a cell's alteration features are ~340 KB
save_state() {  # one save at a time: the periodic saver's may still be packing when a step's or the exit's starts
    mkdir -p runs
    ( flock 9 && save_state_now "$1" ) 9>runs/.save-state.lock
}
save_state_now() {  # pack the run's small files; with --commit-state, commit the steps' reports and the small archives
    python scripts/run_state.py pack runs "$STATE" >/dev/null
    [ -n "$COMMIT_EVERY" ] || return 0
    local paths=() f
    for f in reports/toy3-* reports/paper/toy3; do [ -e "$f" ] && paths+=("$f"); done
    for f in "$STATE"/*.tar.gz; do
        [ -e "$f" ] || continue
        if [ "$(stat -c %s "$f")" -gt "$STATE_MAX" ]; then echo "note: $f is over 4 MiB: kept here, not committed" >&2; continue; fi
        paths+=("$f")
        [ -d "${f%.tar.gz}" ] && paths+=("${f%.tar.gz}")  # its fits, mirrored beside it
    done
    [ ${#paths[@]} -gt 0 ] && [ -n "$(git status --porcelain -- "${paths[@]}")" ] || return 0
    git add -- "${paths[@]}" && git commit -q -m "toy3 record: reports and run state at $(date -u '+%Y-%m-%d %H:%M UTC') ($1)" -- "${paths[@]}" ||
        echo "warning: could not commit the record's files (kept on disk; the next save tries again)" >&2
}
if [ -z "$DRY" ]; then
    [ -d "$STATE" ] && python scripts/run_state.py unpack "$STATE" runs
    if [ -n "$COMMIT_EVERY" ]; then
        ( while sleep $((COMMIT_EVERY * 60)); do save_state "periodic"; done ) &
        SAVER=$!
        trap 'kill $SAVER 2>/dev/null; save_state "at exit"' EXIT
    fi
fi

APPS="toy3-concept toy3-artist toy3-explicit toy3-object"
PAPER_APPS="toy3-concept,toy3-artist,toy3-explicit,toy3-object"  # the paper's tables; toy3-many is step 5's
# Every built-in eraser and ours (spm-hardened runs only when named), and the Latent Anchoring ablation.
ALL="none,negprompt,sld-weak,sld-medium,sld-strong,sld-max,esd-x,esd-u,ca,uce,rece,spm,spm-rel,spm-noft,spm-hardened"
MULTI="none,spm,spm-rel,spm-noft,uce,rece,esd-x,esd-u,ca"  # toy3-many: the erasers that take several targets
ATTACKS="uda,adaptive-ft,p4d,rab"

spmbench_() {  # one spmbench command, in PROCESSES processes
    if [ "$PROCESSES" -gt 1 ] && [ -z "$DRY" ]; then
        accelerate launch --multi_gpu --num_processes "$PROCESSES" -m spmbench "$@"
    else
        python -m spmbench "$@"
    fi
}

step() {  # N DESCRIPTION COMMAND...
    local n=$1 what=$2
    shift 2
    if { [ -n "$ONLY" ] && [ "$n" != "$ONLY" ]; } || [ "$n" -lt "$FROM" ]; then return; fi
    echo "== step $n: $what ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    "$@"
    [ -n "$DRY" ] || save_state "after step $n"
}

tuned() {  # whether the application's committed tuning record is current (its version, grids and weights): then not tuned again
    python - "$1" <<'PY' 2>/dev/null
import sys
from pathlib import Path

from spmbench import tuning
from spmbench.apps import load_apps
from spmbench.models import load_models

app = load_apps().get(sys.argv[1])
sys.exit(0 if tuning.apply_record(app, Path("reports") / app.name, load_models()).tuned else 1)
PY
}
tune_each() {
    for a in $APPS; do
        if [ -z "$DRY" ] && tuned "$a"; then echo "$a: its tuning record is current (reports/$a/tuning.json): kept"; continue; fi
        spmbench_ tune --app "$a" --models toy3-base --erasers all $DRY
    done
}
step 1 "tune every eraser on the dev split of the four applications (toy3-base)" tune_each
# Every eraser on the root first: the tables most conclusions come from (and the comparison with world v2's).
step 2 "every eraser on toy3-base, with the Latent Anchoring ablation" \
    spmbench_ paper --world toy3 --apps "$PAPER_APPS" --models toy3-base --erasers "$ALL,spm-noanchor" $DRY
step 3 "original, SPM with and without FT on all seven models; then the paper's tables from every run so far" \
    spmbench_ paper --world toy3 --apps "$PAPER_APPS" --models all --erasers none,spm,spm-rel,spm-noft $DRY
attack_each() { for a in $APPS; do spmbench_ run --app "$a" --models toy3-base --erasers "$ALL" --attack "$ATTACKS" $DRY; done; }
step 4 "attacks on every eraser (toy3-base)" attack_each
# toy3-many is not tuned itself: every eraser takes toy3-concept's choice (step 1), the same budget for all.
step 5 "many-concept erasure, k = 1 to 40 (toy3-base)" \
    spmbench_ run --app toy3-many --models toy3-base --erasers "$MULTI" $DRY
