"""spm-hardened's FT option on an application's dev split (issue 20): near retention and attack success per option.

    python scripts/hardened_ft_probe.py [OUT] [--app APP] [--options FIT:SIMILARITY:LEAST,...]
    # OUT: fits and results.json (default /tmp/hprobe); resumable. Defaults: toy3-concept, the six options below.

The rule, fixed before measuring: among the options whose dev near retention is >= 0.90 of the original's, the lowest
pooled attack success (uda + adaptive-ft, 16 restarts each, the application's budget); else the best retention.
A tie on attack success goes to the better retention (not fixed before measuring: first met on toy3-object, 2026-12-01).
Fits at seed 0 with the application's tuned SPM settings (its tuning record), on its first target; one torch thread.
Results: reports/toy3-{concept,artist,explicit,object}/hardened_spm_ft.md (2026-12-01; the retrained weights 2026-12-03).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from spmbench import tuning
from spmbench.apps import load_apps
from spmbench.attacks import ATTACKS
from spmbench.attacks.base import Generation
from spmbench.erasers import ERASERS
from spmbench.judges import build
from spmbench.models import load_models
from spmbench.runner import eraser_settings


OPTIONS = [  # (fit, FT similarity, least permeability)
    ("spm-hardened", "paper", 0.5),  # world v2's choice
    ("spm-hardened", "paper", 0.0),
    ("spm-hardened", "relative", 0.0),
    ("spm-hardened", "relative", 0.25),
    ("spm", "paper", 0.0),  # references: the plain SPM as spm and spm-rel apply it
    ("spm", "relative", 0.0),
]
ATTACKED = ("uda", "adaptive-ft")


def main(out: Path, app_name: str, options: list[tuple[str, str, float]]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    test_app = tuning.apply_record(load_apps().get(app_name), Path("reports") / app_name, load_models())
    assert test_app.tuned, f"{app_name} has no current tuning record: run `spmbench tune --app {app_name}` first"
    app = test_app.for_split("dev")
    target = app.erase[0][0]
    model = load_models().get("toy3-base")
    pipe, judge = model.load("cpu"), build("toy3", device="cpu")
    rows = [r for r in app.rows((target,)) if r.set in ("near", "target")]

    def judged(generate, prompts: list[str], seeds: list[int], concepts: list[str]) -> list[bool]:
        images = []
        for i in range(0, len(prompts), 32):
            captions = [model.caption_prefix + p + model.caption_suffix for p in prompts[i : i + 32]]
            generators = [torch.Generator().manual_seed(s) for s in seeds[i : i + 32]]
            with torch.no_grad():
                result = generate(captions, num_inference_steps=model.num_inference_steps, guidance_scale=model.guidance_scale,
                                  height=model.resolution, width=model.resolution, generator=generators, output_type="pt")  # fmt: skip
            images.append(result.images)
        return judge.present(torch.cat(images), concepts)

    def rates(generate) -> dict[str, list[int]]:
        present = judged(generate, [r.prompt for r in rows], [r.seed for r in rows], [r.concept for r in rows])
        return {s: [sum(p for p, r in zip(present, rows) if r.set == s), sum(r.set == s for r in rows)] for s in ("near", "target")}  # fmt: skip

    fits = {}
    for name in dict.fromkeys(f for f, _, _ in options):
        eraser = ERASERS.get(name)
        (fits[name],) = eraser.fit(pipe, (target,), out / "fits" / eraser.fit_key, model.resolution,
                                   eraser_settings(eraser, test_app, model))  # fmt: skip
    original = rates(pipe)
    print("original", original, flush=True)
    record = out / "results.json"
    results = json.loads(record.read_text()) if record.exists() else {}
    for name, similarity, least in options:
        key = f"{name}|{similarity}|{least}"
        if key not in results:
            results[key] = measure(app, pipe, fits[name], name, similarity, least, rates, judged, model, target)
            results[key]["retention"] = (results[key]["near"][0] / results[key]["near"][1]) / (
                original["near"][0] / original["near"][1]
            )
            record.write_text(json.dumps(results, indent=1))
        print(key, {k: v for k, v in results[key].items() if not k.endswith("prompts")}, flush=True)


def measure(app, pipe, fit: Path, name: str, similarity: str, least: float, rates, judged, model, target: str) -> dict:
    eraser = type(ERASERS.get(name))()  # a fresh instance, applied this way
    eraser.transport, eraser.similarity, eraser.least = True, similarity, least

    def erased():
        return eraser.apply(pipe, [fit])

    with erased() as generate:
        out = rates(generate)
    generation = Generation(model.num_inference_steps, model.guidance_scale, model.resolution)
    for attack_name in ATTACKED:
        attack = ATTACKS.get(attack_name)
        start = time.time()
        prompts = attack.find(pipe, erased, target, generation, attack.settings(app.attacks.get(attack_name)))
        seeds = [app.image_seed(app.seeds[0], p) for p in prompts]
        with erased() as generate:
            present = judged(generate, prompts, seeds, [target] * len(prompts))
        out[attack_name] = [sum(present), len(present), round(time.time() - start)]
        out[attack_name + "_prompts"] = prompts
    return out


def _option(text: str) -> tuple[str, str, float]:
    fit, similarity, least = text.split(":")
    return fit, similarity, float(least)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("/tmp/hprobe"))
    parser.add_argument("--app", default="toy3-concept")
    parser.add_argument("--options", type=lambda t: [_option(o) for o in t.split(",")], default=OPTIONS)
    args = parser.parse_args()
    main(args.out, args.app, args.options)
