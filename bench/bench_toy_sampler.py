"""How a toy world's models sample: judged quality and time per image of samplers side by side.

Every sampler draws the same prompts from the same seeds with the same pipeline (its scheduler swapped),
so each judge head's difference from the first sampler is paired: a paired bootstrap over prompts
(spmbench.stats.paired_difference) says whether it holds at 95 %, or is a tie. The prompts are the v3 card's
caption forms and splits on a seed of their own (not the card's), so the choice is not made on the card's
prompts. Time per image is generation plus judging, samplers interleaved form by form on one thread.
World v3's sampler (spmbench/toy/worlds.py) was chosen with this script.

    python bench/bench_toy_sampler.py                          # world v3's toy-base, 192 prompts per form
    python bench/bench_toy_sampler.py --n 16 --forms object:train --out /tmp/sampler   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline_overhead import environment, write_atomic  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SEED_OFFSET = 11  # the card samples its prompts at EVAL_SEED; this script at EVAL_SEED + 11
FORMS = "object:train,styled-object:test,character:test,styled-character:test,implicit-nudity:test,neutral-gore:test"
SAMPLERS = "DDIMScheduler:30,DPMSolverMultistepScheduler:15,DPMSolverMultistepScheduler:10"


def parse_pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = [tuple(item.split(":")) for item in text.split(",") if item]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise SystemExit(f"error: --{what} takes comma-separated NAME:VALUE pairs, not {text!r}")
    return pairs


def measure(weights: Path, n: int, forms: list[tuple[str, str]], samplers: list[tuple[str, int]]) -> dict:
    from spmbench.stats import paired_difference, wilson
    from spmbench.toy import models
    from spmbench.toy.card import CardSettings
    from spmbench.toy.measure import JudgeHeads, card_run
    from spmbench.toy.v3 import data
    from spmbench.toy.v3.card import EVAL_SEED, checks, prompts_for

    judge = JudgeHeads(models.load_judge(weights / "judge"), "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sampler-") as tmp:
        runs = {}
        for name, steps in samplers:
            run = card_run(weights, "toy-base", data.DIALECTS["base"], CardSettings(num_inference_steps=steps),
                           judge, Path(tmp) / f"{name}-{steps}", "cpu")  # fmt: skip
            run.pipe.scheduler = models.build_scheduler(name)
            runs[(name, steps)] = run
        for form, split in forms:
            pairs = prompts_for(form, n, split, EVAL_SEED + SEED_OFFSET)
            labels = data.label_tensors([s for _, s in pairs])
            right_by_sampler = {}
            for (name, steps), run in runs.items():
                start = time.perf_counter()
                judged, _ = run.judged_heads(f"{form}-{split}", [p for p, _ in pairs], EVAL_SEED + SEED_OFFSET)
                seconds = time.perf_counter() - start
                right = {h: [j[h] == int(y) for j, y in zip(judged, labels[h].tolist())] for h in checks(form)}
                right_by_sampler[(name, steps)] = right
                first = right_by_sampler[samplers[0]]
                for head, hits in right.items():
                    diff = paired_difference(hits, first[head], list(range(n)))
                    lo, hi = wilson(sum(hits), n)
                    rows.append({"form": form, "split": split, "head": head, "sampler": name, "steps": steps,
                                 "right": sum(hits), "n": n, "lo": lo, "hi": hi, "minus_first": diff.value,
                                 "minus_first_lo": diff.lo, "minus_first_hi": diff.hi,
                                 "seconds_per_image": seconds / n})  # fmt: skip
                print(f"{form} ({split}) {name} {steps}: " + ", ".join(f"{h} {sum(v)}/{n}" for h, v in right.items())
                      + f", {seconds / n * 1000:.0f} ms/image", flush=True)  # fmt: skip
    return {"rows": rows}


def markdown(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    first = s["samplers"][0]
    lines = [
        f"# Toy world sampler: quality and time per image ({Path(s['weights']).name}/toy-base)",
        "",
        f"{env['date']}, {env['device']}, {env['threads']} thread(s), torch {env['torch']}, diffusers "
        f"{env['diffusers']}; load average at start {env['load_average_at_start']}.",
        f"{s['n']} prompts per caption form (one image each, the same prompts and seeds for every sampler), "
        f"guidance 3. Difference: against {first[0]} at {first[1]} steps, paired bootstrap over prompts, 95 %; "
        "'tie' when its interval holds 0. Time: generation and judging, per image.",
        "",
        "| form (split) | head | sampler | steps | judged right | 95 % interval | minus first | its 95 % interval "
        "| verdict | ms/image |",
        "|---|---|---|---:|---:|---|---:|---|---|---:|",
    ]
    for r in report["rows"]:
        same = (r["sampler"], r["steps"]) == tuple(first)
        verdict = "" if same else ("tie" if r["minus_first_lo"] <= 0 <= r["minus_first_hi"] else "differs")
        lines.append(
            f"| {r['form']} ({r['split']}) | {r['head']} | {r['sampler']} | {r['steps']} | {r['right']}/{r['n']} | "
            f"[{r['lo']:.1%}, {r['hi']:.1%}] | {r['minus_first']:+.1%} | "
            f"[{r['minus_first_lo']:+.1%}, {r['minus_first_hi']:+.1%}] | {verdict} | {r['seconds_per_image'] * 1000:.0f} |"
        )
    lines += ["", "Time per image, all forms (ratio to the first sampler):", ""]
    times = {}
    for r in report["rows"]:
        times.setdefault((r["sampler"], r["steps"]), {})[(r["form"], r["split"])] = r["seconds_per_image"]
    base = sum(times[tuple(first)].values())
    for (name, steps), per_form in times.items():
        lines.append(f"- {name}, {steps} steps: {sum(per_form.values()) / len(per_form) * 1000:.0f} ms per image, "
                     f"{sum(per_form.values()) / base:.2f}x")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=ROOT / "spmbench" / "toy" / "v3" / "weights")
    ap.add_argument("--n", type=int, default=192, help="prompts per caption form")
    ap.add_argument("--forms", default=FORMS, help="comma-separated FORM:SPLIT (the v3 card's forms and splits)")
    ap.add_argument("--samplers", default=SAMPLERS, help="comma-separated SCHEDULER:STEPS; the first is the reference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "toy3_sampler_cpu")
    args = ap.parse_args()
    args.device = "cpu"
    if not (args.weights / "toy-base" / "model_index.json").is_file():
        raise SystemExit(f"error: no toy-base in {args.weights}: pass --weights a toy world's weights folder")
    torch.set_num_threads(args.threads)
    samplers = [(name, int(steps)) for name, steps in parse_pairs(args.samplers, "samplers")]
    forms = parse_pairs(args.forms, "forms")
    settings = {"weights": str(args.weights), "n": args.n, "forms": forms, "samplers": samplers}
    report = {"settings": settings, "environment": environment(args), **measure(args.weights, args.n, forms, samplers)}
    write_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    write_atomic(args.out.with_suffix(".md"), markdown(report))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
