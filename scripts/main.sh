#!/usr/bin/env bash
# The main job on the embedded default: make sure the toy world exists, erase one character with
# an SPM, and generate the same seeds with and without it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
if [ ! -f spmbench/toy/weights/toy-base/model_index.json ]; then
    echo "toy world weights not in this checkout: training them (resumable; rerun to continue)"
    spmbench toy train
fi
OUT=runs/demo
mkdir -p "$OUT"
[ -f "$OUT/barkley.safetensors" ] || spm train --model toy-base --target Barkley --iterations 500 --out "$OUT/barkley.safetensors"
spm inspect "$OUT/barkley.safetensors"
PROMPTS=(--prompt "Barkley" --prompt "a picture of Barkley" --prompt "a photo of a dog" --prompt "Whiskers" --prompt "a red circle on a white background")
spm generate --model toy-base "${PROMPTS[@]}" --num-images 4 --out "$OUT/original"
spm generate --model toy-base --spm "$OUT/barkley.safetensors" "${PROMPTS[@]}" --num-images 4 --out "$OUT/erased"
echo "images in $OUT/original and $OUT/erased (same seeds)"
