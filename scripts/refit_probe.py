"""Train a stored SPM fit again from its provenance (optionally longer), log its losses, and judge its whole membrane.

    python scripts/refit_probe.py FIT [--iterations N] [--model toy3-base] [--judge toy3] [--out DIR]

Why: one of toy3-concept's three spm-hardened fits (seed 2) erased nothing (target 98 %). This answers whether a
fit is reproducible (same settings -> the same factors), whether it is a training failure or a generalisation one
(the whole membrane on the training prompt itself), and whether more iterations cross the erasure onset.
Prints the largest factor difference from FIT (when the iterations are FIT's own), the median erase loss per tenth
of training (it jumps once the membrane erases: its rollouts no longer show the target), and the judge's count of
the target in 16 images of each prompt with the membrane fully open (no Facilitated Transport).
Results: reports/toy3-concept/hardened_spm_ft.md (2026-12-03).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors import safe_open

import spm
from spmbench.judges import build
from spmbench.models import load_models


PROMPTS = ("{}", "a photo of {}", "{} the dog, red background", "a drawing of {} on a blue background")


def stored_config(fit: Path, iterations: int | None) -> spm.TrainConfig:
    with safe_open(fit, "pt") as f:
        chosen = json.loads(f.metadata()["spm_provenance"])["train_config"]
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()}
    return spm.TrainConfig(**chosen | ({"iterations": iterations} if iterations else {}))


def largest_difference(fit: Path, trained: spm.SPM, out: Path) -> float:
    trained.save(out / "refit.safetensors")
    with safe_open(fit, "pt") as a, safe_open(out / "refit.safetensors", "pt") as b:
        return max(float((a.get_tensor(k) - b.get_tensor(k)).abs().max()) for k in a.keys())


def present_counts(attached, model, judge, target: str, n: int = 16) -> list[int]:
    counts = []
    for template in PROMPTS:
        captions = [model.caption_prefix + template.format(target) + model.caption_suffix] * n
        with torch.no_grad():
            images = attached(captions, num_inference_steps=model.num_inference_steps,
                              guidance_scale=model.guidance_scale, height=model.resolution, width=model.resolution,
                              generator=[torch.Generator().manual_seed(s) for s in range(n)], output_type="pt").images  # fmt: skip
        counts.append(sum(judge.present(images, [target] * n)))
    return counts


def main(fit: Path, iterations: int | None, model_name: str, judge_name: str, out: Path) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    config = stored_config(fit, iterations)
    model = load_models().get(model_name)
    pipe, judge = model.load("cpu"), build(judge_name, device="cpu")
    targets = spm.SPM.load(fit).targets
    logs, start = [], time.time()
    trained = spm.train(pipe, targets, "", config, progress=False, callback=lambda step, terms: logs.append(terms))
    print(f"{config.iterations} iterations, seed {config.seed}: {time.time() - start:.0f} s")
    if not iterations:
        print("largest factor difference from the stored fit:", largest_difference(fit, trained, out))
    tenth = max(1, config.iterations // 10)
    for first in range(0, config.iterations, tenth):
        erase = sorted(terms["erase"] for terms in logs[first : first + tenth])
        print(f"steps {first}-{first + tenth}: median erase loss {erase[len(erase) // 2]:.4f}")
    for name, chosen in (("stored", spm.SPM.load(fit)), ("refit", trained)):
        attached = spm.attach(pipe, [chosen], transport=False)
        print(f"{name}: target present, of 16 each, in {PROMPTS}:", present_counts(attached, model, judge, targets[0]))
        attached.detach()
    (out / "losses.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fit", type=Path)
    parser.add_argument("--iterations", type=int, default=None, help="train this long instead of the fit's own")
    parser.add_argument("--model", default="toy3-base")
    parser.add_argument("--judge", default="toy3")
    parser.add_argument("--out", type=Path, default=Path("/tmp/refit"))
    args = parser.parse_args()
    main(args.fit, args.iterations, args.model, args.judge, args.out)
