"""spmbench's generation throughput and memory against a plain diffusers pipeline call, and one real application
run end to end through the CLI, with the wall time and peak memory of each stage.

1. Side by side (issue 21 item 3): the suite's generation path (`spmbench.runner.generate_cell`: the eraser
   `none` applied, batches of --batch rows, each image written as a PNG) against plain `pipe(prompts, ...)`
   calls on the same pipeline at the same batch, steps, size and seeds, in interleaved rounds; images/s,
   ratio plain / suite time (1.00x = as fast), and the peak memory of each at 1x and 10x (--scale) prompts.
   With --model toy: the shipped toy-base as its model spec gives it (32 px, 30 steps, guidance 3), prompts of
   the toy-object application, and the suite's side also scores its images with the toy judge
   (`spmbench.runner.score_cell`): generation and scoring against generation alone.
2. End to end (issue 17 item 5, issue 22's per-process rate): `spmbench run --app real-object --models
   <random SD 1.5> --erasers none,spm --limit N --device D`, in this process through the CLI's own entry
   point, with the random-weight SD 1.5 architecture saved to a local folder and registered as a `world: real`
   model in a SPMBENCH_MODELS folder (as tests/spmbench/conftest.py registers its tiny SD), and a
   random-weight ResNet-50 ImageNet classifier saved locally as the judge (--classifier). The stages (model
   loads, judge build, fits, generation, scoring, alteration features) are timed by wrapping spmbench's own
   functions; images/s is the run's images over its generation time.

The real application reads the published prompt file small_imagenet_prompts.csv (pinned by its sha256) from
--prompts-dir (default: $SPMBENCH_PROMPTS_DIR, $SPM_SHARED_DIR/data/benchmarks, ../shared/data/benchmarks, or
.bench-data/ in the repository: copy it there for a device machine, which has no ../shared).

    python bench/bench_suite_throughput.py --model sd15 --device cuda            # GPU: random SD 1.5, 512 px
    python bench/bench_suite_throughput.py --model sd15-tiny                     # the same code paths on CPU
    python bench/bench_suite_throughput.py --model toy --skip e2e --batch 32 --threads 1   # the toy world, CPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every model is built here
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline_overhead import allocator_option, environment, prompts_for, random_sd15, steady_heap, write_atomic  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "sd15-random"
TOY_MODEL, TOY_APP = "toy-base", "toy-object"  # --model toy: the shipped world's base and its object application
TARGET_RATIO = 0.95  # issue 21 item 3
# Peak memory counts as flat when the larger prompt count's peak is within this share (plus the resident-memory
# sampler's noise on CPU) of the one batch's.
FLAT_SHARE, FLAT_NOISE_MIB = 1.10, 16
# ImageNet-1k's labels of the Imagenette classes (the real-object application's concepts), at their indices;
# the other 990 classes get placeholder names: the judge needs the labels, not the weights.
IMAGENETTE = {
    0: "tench, Tinca tinca", 217: "English springer, English springer spaniel", 482: "cassette player",
    491: "chain saw, chainsaw", 497: "church, church building", 566: "French horn, horn",
    569: "garbage truck, dustcart", 571: "gas pump, gasoline pump, petrol pump, island dispenser",
    574: "golf ball", 701: "parachute, chute",
}  # fmt: skip


def save_classifier(path: Path, tiny: bool) -> Path:
    """A random-weight ImageNet classifier with microsoft/resnet-50's architecture and processor (tiny: a
    2-stage ResNet at 32 px), labels as ImageNet's for the Imagenette classes."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    id2label = {i: IMAGENETTE.get(i, f"placeholder class {i}") for i in range(1000)}
    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    if tiny:
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **labels)
        processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    else:  # ResNetConfig's defaults are ResNet-50's: bottleneck stages of depths 3, 4, 6, 3
        config = ResNetConfig(**labels)
        processor = ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)
    ResNetForImageClassification(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def find_prompts_dir(given: Path | None) -> Path:
    candidates = [given] if given else []
    candidates += [Path(os.environ[v]) for v in ("SPMBENCH_PROMPTS_DIR",) if os.environ.get(v)]
    if os.environ.get("SPM_SHARED_DIR"):
        candidates.append(Path(os.environ["SPM_SHARED_DIR"]) / "data" / "benchmarks")
    candidates += [ROOT.parent / "shared" / "data" / "benchmarks", ROOT / ".bench-data"]
    for folder in candidates:
        if (folder / "small_imagenet_prompts.csv").is_file():
            return folder
    raise SystemExit(
        "no small_imagenet_prompts.csv in " + ", ".join(str(c) for c in candidates)
        + ": give --prompts-dir, or copy ../shared/data/benchmarks/*.csv into .bench-data/"
    )  # fmt: skip


def synced(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# 1. Side by side: the suite's generation path against plain pipeline calls.


def suite_rows(n: int, toy: bool = False):
    """n rows, each its own id and seed; the toy's cycle the toy-object application's rows (concepts its judge
    knows, words its text encoder knows)."""
    from spmbench.apps import PromptRow, load_apps

    if not toy:
        return [PromptRow(f"p{i}", "target", "thing", prompt, 1000 + i) for i, prompt in enumerate(prompts_for(n))]
    app = load_apps().get(TOY_APP)
    base = app.rows(app.erase[0])
    return [
        PromptRow(f"p{i}", r.set, r.concept, r.prompt, 1000 + i)
        for i, r in enumerate(base[i % len(base)] for i in range(n))
    ]


def plain_generate(pipe, rows, spec, batch: int) -> list:
    """diffusers as a user calls it: batches of `batch` prompts, a generator per prompt seeded by its row."""
    images = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out = pipe(
            [r.prompt for r in chunk], num_inference_steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale,
            generator=[torch.Generator().manual_seed(r.seed) for r in chunk], height=spec.resolution,
            width=spec.resolution,
        )  # fmt: skip
        images += out.images
    return images


def timed(fn, device: str) -> tuple[float, float, object]:
    """(seconds, peak MiB above the start (spmbench.cost), what fn returned)."""
    from spmbench.cost import peak_memory

    synced(device)
    with peak_memory(device) as peak:
        start = time.perf_counter()
        value = fn()
        synced(device)
        seconds = time.perf_counter() - start
    return seconds, peak.mib, value


def side_by_side(pipe, spec, args, workdir: Path, judge=None) -> dict:
    """With a judge, the suite's side is generation and scoring; the scoring's own seconds are kept apart."""
    import numpy as np
    from PIL import Image

    from spmbench import runner
    from spmbench.erasers import ERASERS

    none = ERASERS.get("none")
    runs = []
    for scale, rounds in ((1, args.rounds), (args.scale, args.rounds_scaled)):
        rows = suite_rows(args.batch * scale, toy=args.model == "toy")
        plain, suite = [], []
        for r in range(rounds):
            cell = runner.Cell(spec, (), "none", workdir / f"side-{scale}x-{r}")
            plain.append(timed(lambda rows=rows: plain_generate(pipe, rows, spec, args.batch), args.device))
            generate = functools.partial(runner.generate_cell, pipe, none, [], rows, cell, args.batch)
            suite.append(
                timed(functools.partial(generate_and_score, generate, judge, rows, cell, args.batch), args.device)
            )
            if r == 0:  # the suite's PNGs against plain's images at the same seeds
                same = sum(
                    np.array_equal(np.asarray(Image.open(cell.image(row)).convert("RGB")), np.asarray(image))
                    for row, image in zip(rows, plain[-1][2])
                )
            shutil.rmtree(cell.run_dir, ignore_errors=True)
        ratios = [p[0] / s[0] for p, s in zip(plain, suite)]
        runs.append({
            "prompts": len(rows), "rounds": rounds,
            "plain_seconds": statistics.median(p[0] for p in plain),
            "suite_seconds": statistics.median(s[0] for s in suite),
            "plain_images_per_s": len(rows) / statistics.median(p[0] for p in plain),
            "suite_images_per_s": len(rows) / statistics.median(s[0] for s in suite),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "suite_score_seconds": statistics.median(s[2] for s in suite) if judge else None,
            "plain_peak_mib": max(p[1] for p in plain), "suite_peak_mib": max(s[1] for s in suite),
            "identical_images": int(same),
        })  # fmt: skip
        print(f"side by side, {len(rows)} prompts: ratio {runs[-1]['ratio']:.3f}x, suite "
              f"{runs[-1]['suite_images_per_s']:.2f} images/s, peak {runs[-1]['suite_peak_mib']:.0f} MiB", flush=True)  # fmt: skip
    return {"runs": runs, "judge": getattr(judge, "identity", None)}


def generate_and_score(generate, judge, rows, cell, batch: int) -> float | None:
    """The suite's side: generate, then (with a judge) score as the runner does; the scoring's seconds."""
    from spmbench import runner

    generate()
    if judge is None:
        return None
    start = time.perf_counter()
    runner.score_cell(judge, rows, cell, batch)  # in the generation's batches, as runner.run scores
    return time.perf_counter() - start


# 2. End to end through the CLI, each stage timed by wrapping spmbench's own functions.


class Stages:
    """Wall seconds, calls and the highest absolute peak memory of each wrapped function."""

    def __init__(self, device: str):
        self.device, self.table, self.depth = device, {}, 0
        self.undo: list = []

    def wrap(self, owner, attr: str, stage: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:  # renamed in spmbench: that stage is then not timed apart
            print(f"note: {owner.__name__}.{attr} not found; stage {stage!r} not timed apart", flush=True)
            return

        @functools.wraps(original)
        def timed_stage(*a, **kw):
            if self.depth:  # nested (fit_timed fits several targets one by one): the outer call counts
                return original(*a, **kw)
            self.depth += 1
            synced(self.device)
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                synced(self.device)
                row = self.table.setdefault(stage, {"seconds": 0.0, "calls": 0, "peak_gib": None})
                row["seconds"] += time.perf_counter() - start
                row["calls"] += 1
                if self.device.startswith("cuda"):  # fits reset the peak counter: read it per stage
                    peak = torch.cuda.max_memory_allocated() / 2**30
                    row["peak_gib"] = max(row["peak_gib"] or 0.0, peak)
                self.depth -= 1

        setattr(owner, attr, timed_stage)
        self.undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self.undo):
            setattr(owner, attr, original)


def write_model_spec(folder: Path, model_dir: Path, args) -> None:
    import yaml

    fit = {"iterations": args.fit_iterations, "warmup_steps": 1}
    if args.tiny:
        fit["rollout_steps"] = 4
    spec = dict(name=MODEL_NAME, source=str(model_dir), family="sd1", world="real", resolution=args.size,
                num_inference_steps=args.steps, guidance_scale=7.5, eraser_settings={"spm": fit})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODEL_NAME}.yaml").write_text(yaml.safe_dump(spec))


def end_to_end(model_dir: Path, classifier_dir: Path, prompts_dir: Path, args, workdir: Path) -> dict:
    import spmbench.judges
    import spmbench.models
    from spmbench import runner
    from spmbench.cli import app

    write_model_spec(workdir / "models", model_dir, args)
    os.environ["SPMBENCH_MODELS"] = str(workdir / "models")
    (workdir / "cache" / "prompts").mkdir(parents=True, exist_ok=True)
    for published in prompts_dir.glob("*.csv"):
        link = workdir / "cache" / "prompts" / published.name
        if not link.exists():
            link.symlink_to(published.resolve())
    os.environ["SPMBENCH_CACHE"] = str(workdir / "cache")
    runs, reports = workdir / "runs", workdir / "reports"
    argv = [
        "run", "--app", args.app, "--models", MODEL_NAME, "--erasers", args.erasers, "--limit", str(args.limit),
        "--device", args.device, "--batch-size", str(args.batch), "--classifier", str(classifier_dir),
        "--out", str(runs), "--reports", str(reports),
    ]  # fmt: skip
    stages = Stages(args.device)
    stages.wrap(spmbench.models.ModelSpec, "load", "load model")
    stages.wrap(spmbench.judges, "build", "build judge")
    stages.wrap(runner, "fit_timed", "fit")
    stages.wrap(runner, "generate_batches", "generate")
    stages.wrap(runner, "score_cell", "score")
    stages.wrap(runner, "measure_alteration", "alteration features")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start, code = time.perf_counter(), 0
    try:
        app(argv, standalone_mode=False)
    except SystemExit as e:  # the CLI's one-line errors exit
        code = e.code or 0
    finally:
        stages.restore()
    wall = time.perf_counter() - start
    images = sorted(runs.glob(f"{args.app}/cells/**/images/*.png"))
    generate = stages.table.get("generate", {}).get("seconds")
    import resource

    result = {
        "command": "spmbench " + " ".join(argv),
        "exit_code": code,
        "wall_seconds": wall,
        "stages": stages.table,
        "other_seconds": wall - sum(row["seconds"] for row in stages.table.values()),
        "images": len(images),
        "images_per_s_generation": len(images) / generate if generate else None,
        "images_per_s_overall": len(images) / wall,
        "cells": len(list(runs.glob(f"{args.app}/cells/**/result.json"))),
        "peak_gib": max((r["peak_gib"] or 0 for r in stages.table.values()), default=None)
        if args.device.startswith("cuda") else None,
        "process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # fmt: skip
    if code:
        print(f"spmbench run exited with {code}", flush=True)
    print(f"end to end: {len(images)} images in {wall:.1f} s", flush=True)
    return result


def markdown(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    if s["model"] == "toy":
        model = (
            f"Model: {TOY_MODEL} (spmbench/models/{TOY_MODEL}.yaml: the shipped toy world's trained weights), float32 "
            f"(as spmbench loads models), {s['size']} px, {s['steps']} steps, CFG {s['guidance']}, batch {s['batch']}; "
            f"prompts: the {TOY_APP} application's rows in turn, each its own id and seed."
        )
    else:
        model = (
            f"Model: SD 1.5 architecture{' (tiny)' if s['tiny'] else ''}, random weights, float32 (as spmbench loads "
            f"models), {s['size']} px, {s['steps']} steps, CFG {s['guidance']}, batch {s['batch']}."
        )
    lines = [
        f"# spmbench throughput: the suite against plain diffusers, and one real application end to end "
        f"({s['model']}, {s['device']})",
        "",
        f"Command: `{s['command']}`",
        f"Date: {env['date']}. Machine: {env['device']}, {env['threads']} torch threads, load average at start "
        f"{_loads(env.get('load_average_at_start'))}. torch {env['torch']}, diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}. TF32 matmul {s['tf32_matmul']}.",
        model,
        "",
    ]
    side = report.get("side_by_side")
    if side:
        lines += [
            "## Generation: spmbench (eraser none, PNGs written) against plain pipeline calls",
            "",
            "Same pipeline, batch, steps, size and seeds, interleaved rounds (plain, then the suite, per round); "
            "ratio = plain time / suite time per round, then the median (1.00x = as fast). Both sides see the same "
            "load in turn: on a loaded machine the interleaving is what makes the ratio fair, not the absolute "
            "rates. Peak memory: the increase above the start of each call (spmbench.cost: CUDA allocator peak; "
            "on CPU resident memory)."
            + (" The suite's side also scores its images with the application's judge, as the runner does "
               "(score_cell); its seconds are shown apart." if side.get("judge") else ""),
            "",
            "| prompts | rounds | plain images/s | suite images/s | ratio (min-max) | suite scoring (s) | plain peak (MiB)"
            " | suite peak (MiB) | suite PNG = plain image |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in side["runs"]:
            lines.append(
                f"| {r['prompts']} | {r['rounds']} | {r['plain_images_per_s']:.3f} | {r['suite_images_per_s']:.3f}"
                f" | {r['ratio']:.3f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {_fmt(r['suite_score_seconds'])}"
                f" | {r['plain_peak_mib']:.0f} | {r['suite_peak_mib']:.0f} | {r['identical_images']}/{r['prompts']} |"
            )
        lines += ["", verdict(side["runs"]), ""]
    e2e = report.get("end_to_end")
    if e2e:
        lines += [
            "## End to end through the CLI",
            "",
            f"`{e2e['command']}` (exit code {e2e['exit_code']}): {e2e['cells']} cells, {e2e['images']} images in "
            f"{e2e['wall_seconds']:.1f} s; generation {_fmt(e2e['images_per_s_generation'])} images/s, overall "
            f"{e2e['images_per_s_overall']:.3f} images/s. Peak GPU memory "
            f"{_fmt(e2e['peak_gib'], ' GiB')}; process peak RSS {e2e['process_peak_rss_gib']:.1f} GiB.",
            "",
            "| stage | calls | wall (s) | share | peak GPU memory (GiB) |",
            "|---|---:|---:|---:|---:|",
        ]
        total = e2e["wall_seconds"]
        for stage, row in [*e2e["stages"].items(), ("planning, reports, the rest", None)]:
            seconds = e2e["other_seconds"] if row is None else row["seconds"]
            calls = "-" if row is None else row["calls"]
            peak = "-" if row is None or row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
            lines.append(f"| {stage} | {calls} | {seconds:.1f} | {seconds / total:.0%} | {peak} |")
        lines.append("")
    setup = report.get("setup_seconds", {})
    lines.append("Setup (not in the tables): " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def verdict(runs: list[dict]) -> str:
    """Whether the targets hold: the ratio at every prompt count, and a flat peak from the first to the last."""
    ratio_met = all(r["ratio"] >= TARGET_RATIO for r in runs)
    first, last = runs[0], runs[-1]
    flat = last["suite_peak_mib"] <= FLAT_SHARE * first["suite_peak_mib"] + FLAT_NOISE_MIB
    ratios = ", ".join(f"{r['ratio']:.3f}x" for r in runs)
    return (
        f"Target (issue 21 item 3): at least {TARGET_RATIO}x at every prompt count: "
        f"{'met' if ratio_met else 'not met'} (median ratios {ratios}). "
        f"Peak memory flat as prompts grow: {'yes' if flat else 'no'}: the suite's {last['suite_peak_mib']:.0f} MiB at "
        f"{last['prompts']} prompts against {first['suite_peak_mib']:.0f} MiB at {first['prompts']} (flat: within "
        f"{FLAT_SHARE:.2f}x + {FLAT_NOISE_MIB} MiB)."
    )


def _loads(loads) -> str:
    return "-" if not loads else " / ".join(f"{x:.1f}" for x in loads) + " (1 / 5 / 15 min)"


def _fmt(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3f}{unit}"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15", choices=["sd15", "sd15-tiny", "toy"], help="toy: the shipped toy-base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=None, help="px (default: sd15 512, sd15-tiny 64, toy its spec's)")
    ap.add_argument("--steps", type=int, default=None, help="default: 20; toy: its spec's")
    ap.add_argument("--batch", type=int, default=4, help="prompts per pipeline call, both sides (--batch-size)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds at 1x prompts (1x = one batch)")
    ap.add_argument("--scale", type=int, default=10, help="the larger prompt count, in batches")
    ap.add_argument("--rounds-scaled", type=int, default=1, help="rounds at --scale x prompts")
    ap.add_argument("--app", default="real-object")
    ap.add_argument("--erasers", default="none,spm")
    ap.add_argument("--limit", type=int, default=1, help="spmbench run --limit: prompts per prompt set")
    ap.add_argument("--fit-iterations", type=int, default=2, help="SPM fit iterations of the registered model")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: side, e2e")
    ap.add_argument("--prompts-dir", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, deleted at the end")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: reports/bench/suite_throughput_<model>_<device>")
    allocator_option(ap)
    args = ap.parse_args(argv)
    args.tiny = args.model == "sd15-tiny"
    if args.model == "toy":
        if "e2e" not in args.skip:
            ap.error("--model toy: the end-to-end part runs a real application on a random SD 1.5; give --skip e2e")
        spec = toy_spec(args.size, args.steps)
        args.size, args.steps, args.guidance = spec.resolution, spec.num_inference_steps, spec.guidance_scale
    else:
        args.size, args.steps, args.guidance = args.size or (64 if args.tiny else 512), args.steps or 20, 7.5
    return args


def toy_spec(size: int | None = None, steps: int | None = None):
    """toy-base as the suite registers it, at --size / --steps where given."""
    from dataclasses import replace

    from spmbench.models import load_models

    spec = load_models().get(TOY_MODEL)
    return replace(spec, resolution=size or spec.resolution, num_inference_steps=steps or spec.num_inference_steps)


def main(argv=None) -> None:
    args = parse_args(argv)
    allocator = steady_heap(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a step's `timeout`: still delete the work folder
    env = environment(args, allocator)  # at the start: its load average is the one the measurement ran under
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    prompts_dir = None if "e2e" in skip else find_prompts_dir(args.prompts_dir)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spmbench-throughput-"))
    setup: dict[str, float] = {}
    report: dict = {"setup_seconds": setup}
    try:
        if args.model != "toy":
            start = time.perf_counter()
            pipe = random_sd15(args.tiny, "cpu", torch.float32)
            pipe.save_pretrained(workdir / "model")
            del pipe
            setup["build and save the model"] = time.perf_counter() - start
        if "side" not in skip:
            from spmbench.judges import build
            from spmbench.models import ModelSpec

            toy = args.model == "toy"
            if toy:
                spec = toy_spec(args.size, args.steps)
            else:
                spec = ModelSpec(MODEL_NAME, str(workdir / "model"), "sd1", "real", args.size, args.steps, 7.5)
            start = time.perf_counter()
            pipe = spec.load(args.device)  # as spmbench loads it
            judge = build("toy", device=args.device) if toy else None
            setup["load the model and judge (side by side)"] = time.perf_counter() - start
            plain_generate(pipe, suite_rows(1, toy), spec, args.batch)  # warm-up
            report["side_by_side"] = side_by_side(pipe, spec, args, workdir, judge)
            del pipe
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if "e2e" not in skip:
            start = time.perf_counter()
            classifier = save_classifier(workdir / "classifier", args.tiny)
            setup["build and save the classifier"] = time.perf_counter() - start
            report["end_to_end"] = end_to_end(workdir / "model", classifier, prompts_dir, args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["settings"] = dict(
        vars(args), out=None, workdir=None, prompts_dir=str(prompts_dir), command="python " + " ".join(sys.argv),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
    )  # fmt: skip
    report["environment"] = env
    out = args.out or ROOT / f"reports/bench/suite_throughput_{args.model}_{args.device.split(':')[0]}"
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out}.json and .md")
    failed = report.get("end_to_end", {}).get("exit_code")
    if failed:
        raise SystemExit(f"spmbench run failed (exit code {failed}); the report says which stages ran")


if __name__ == "__main__":
    main()
