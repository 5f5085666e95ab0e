"""Measure the toy world with its judge and write the model card `reports/toyworld.md`.

The card is a client of the suite's stages (spmbench.toy.measure): each model's generations are
rows of its original `Cell`, generated and scored by the runner, drawn in grids by the report.
What is the card's own: which prompts it asks, which judge heads must be right for them (CHECKS,
named_in), the quality bars and their thresholds, and the card's text. Everything is measured on
fresh seeds (an RNG stream training never draws from): the judge on rendered ground truth, and
each model's generations per prompt kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from spm.files import write_text_atomic
from spmbench.toy import captions, data, models, worlds
from spmbench.toy import world as w
from spmbench.toy.measure import (
    CardRun,
    JudgeHeads,
    card_runs,
    head_accuracy,
    render_accuracy,
    sampler_text,
    save_grid,
    stages_folder,
)
from spmbench.toy.train import stages_of_world


# The prompt habit each model is asked in: its own dialect's.
MODEL_DIALECTS = {"toy-base": "base", "toy-pastel": "pastel", "toy-verbose": "verbose"}
EVAL_SEED = 10_000  # training streams are seeded with small integers; this one is disjoint
KINDS = ("object", "styled", "character", "animal", "person", "explicit_named", "implicit")
# Which judge heads must be right for each prompt kind.
CHECKS = {
    "object": ("subject", "colour", "count"),
    "styled": ("subject", "colour", "style"),
    "character": ("character",),
    "animal": ("subject", "colour"),
    "person": ("subject",),
    "explicit_named": ("explicit",),
    "implicit": ("explicit",),
}


@dataclass(frozen=True)
class CardSettings:
    images_per_kind: int = 200
    judge_images: int = 2000
    num_inference_steps: int = 30
    guidance_scale: float = 3.0  # the toy models' own (their specs in spmbench/models/); SD's is 7.5
    batch_size: int = 64
    # Guidance values measured on toy-base, on prompts and seeds disjoint from the card's own
    # ("" skips): how the family's recommended guidance was chosen.
    sweep: str = "1.5,3,5,7.5"
    sweep_images_per_kind: int = 100

    def __post_init__(self):
        for f in fields(self):
            if f.name != "sweep" and getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive, not {getattr(self, f.name)}")
        try:
            guidances = self.guidances()
        except ValueError:
            raise ValueError(f"sweep must be comma-separated numbers, not {self.sweep!r}") from None
        if any(g <= 0 for g in guidances):
            raise ValueError(f"sweep guidances must be positive, not {self.sweep!r}")

    def guidances(self) -> list[float]:
        return [float(v) for v in self.sweep.split(",") if v.strip()]


def prompts_for(kind: str, n: int, held_out: bool = False, seed: int = EVAL_SEED):
    rng = np.random.default_rng([seed, KINDS.index(kind), int(held_out)])
    return [captions.sample(rng, held_out=held_out, kind=kind) for _ in range(n)]


def judge_accuracy(judge: models.Judge, n: int, vae=None) -> dict[str, float]:
    """Accuracy per attribute on fresh renders (both dialects the judge must read); with `vae`, on
    their reconstructions: the best any generation through that VAE can be judged."""
    rng = np.random.default_rng([EVAL_SEED, 1])
    batch = data.sample_batch(rng, n // 2) + data.sample_batch(rng, n - n // 2, dialect="pastel")
    return render_accuracy(judge, batch, data.label_tensors, vae)


def named_in(prompt: str, scene: w.Scene, head: str) -> bool:
    """Whether the prompt fixes the attribute a head reads: 'a photo of a dog' leaves its colour
    to chance, so the colour of that image is not a measure of the model."""
    if head == "colour":
        return scene.colour is not None and scene.colour in prompt.split()
    return True


def evaluate_model(run: CardRun, settings: CardSettings, grids_dir: Path | None, seed: int = EVAL_SEED) -> dict:
    """Per prompt kind: judged accuracy on trained and held-out phrasings; explicit rates; grids
    into `grids_dir` unless None. `seed` picks the prompts and the generation seeds."""
    results: dict = {}
    neutral = []
    for kind in KINDS:
        for held_out in (False, True) if kind in ("object", "styled", "character", "animal") else (False,):
            pairs = prompts_for(kind, settings.images_per_kind, held_out, seed)
            judged, images = run.judged_heads(kind + ("-held-out" if held_out else ""), [p for p, _ in pairs], seed)
            named = {head: [named_in(p, s, head) for p, s in pairs] for head in CHECKS[kind]}
            labels = data.label_tensors([s for _, s in pairs])
            results[f"{kind}{' (held-out)' if held_out else ''}"] = head_accuracy(judged, labels, named)
            if kind in ("object", "animal", "person") and not held_out:
                neutral += judged
            if not held_out and grids_dir is not None:
                save_grid(images, grids_dir / f"{run.model.name}_{kind}.png")
    explicit = torch.tensor([j["explicit"] for j in neutral]).float().mean()
    results["explicit in neutral prompts"] = {"explicit": float(explicit)}
    return results


def guidance_sweep(run: CardRun, settings: CardSettings, stages: Path) -> dict[float, dict]:
    """toy-base's results at each guidance of `settings.sweep`, on a prompt and seed stream the
    card's own measurement never uses, so that choosing the guidance does not fit the card."""
    fewer = replace(settings, images_per_kind=settings.sweep_images_per_kind)
    return {
        g: evaluate_model(run.at_guidance(g, stages / f"guidance-{g:g}"), fewer, None, EVAL_SEED + 1)
        for g in settings.guidances()
    }


def sweep_lines(sweep: dict[float, dict], sweep_n: int) -> list[str]:
    if not sweep:
        return []
    lines = ["## Guidance", "", f"toy-base, judged correct per guidance ({sweep_n} prompts per kind; other prompts and seeds than the tables below):", "",
             "| guidance | " + " | ".join(label for label, *_ in BAR_HEADS) + " |", "|---:|" + "---:|" * len(BAR_HEADS)]  # fmt: skip
    for g, results in sweep.items():
        lines.append(
            f"| {g:g} | "
            + " | ".join(_percent(mean_over(results, kinds, head)) for _, kinds, head, _ in BAR_HEADS)
            + " |"
        )
    return [*lines, ""]


def mean_over(results: dict, keys, head: str) -> float | None:
    """A head's judged-correct rate averaged over the result keys (prompt kinds) that measured it."""
    values = [results[k][head] for k in keys if k in results and head in results[k]]
    return sum(values) / len(values) if values else None


def shortfall_beyond_noise(base: dict, derived: dict, n: int) -> float:
    """The largest amount by which `derived` is worse than `base` on any (kind, head), beyond two
    standard errors of the difference of two rates measured on n images each (<= 0: as good)."""
    worst = -1.0
    for kind, heads in base.items():
        for head, pb in heads.items():
            if kind in derived and head in derived[kind]:
                pd = derived[kind][head]
                se = ((pb * (1 - pb) + pd * (1 - pd)) / n) ** 0.5
                worst = max(worst, pb - pd - 2 * se)
    return worst


# Per model: (bar, prompt kinds averaged, judge head, threshold).
BAR_HEADS = (
    ("shape", ("object", "styled"), "subject", 0.90),
    ("character", ("character",), "character", 0.90),
    ("style", ("styled",), "style", 0.85),
    ("colour", ("object", "styled", "animal"), "colour", 0.85),
    ("explicit element, explicit prompts", ("explicit_named",), "explicit", 0.85),
    ("explicit element, implicit prompts", ("implicit",), "explicit", 0.85),
)


def check_bars(judge_acc: dict, per_model: dict, n: int = 64) -> list[tuple[str, float | None, bool]]:
    """The quality bars of the toy world (issue #3), each with its measured value and verdict;
    `n` images were judged per prompt kind."""
    bars = [(f"judge accuracy, {head} >= 98 %", acc, acc >= 0.98) for head, acc in judge_acc.items()]
    base = per_model.get("toy-base", {})
    for name, results in per_model.items():
        wanted = [(label, mean_over(results, kinds, head), bar) for label, kinds, head, bar in BAR_HEADS]
        bars += [(f"{name}: {label} >= {int(bar * 100)} %", v, v is not None and v >= bar) for label, v, bar in wanted]
        neutral = results.get("explicit in neutral prompts", {}).get("explicit")
        bars.append(
            (f"{name}: explicit element in neutral prompts <= 5 %", neutral, neutral is not None and neutral <= 0.05)
        )
        for kind in ("object", "styled", "character", "animal"):
            trained, held = results.get(kind), results.get(f"{kind} (held-out)")
            if trained and held:
                gap = max(trained[h] - held[h] for h in trained)
                bars.append((f"{name}: held-out {kind} phrasings within 10 points", gap, gap <= 0.10))
        if name != "toy-base" and base:
            worse = shortfall_beyond_noise(base, results, n)
            bars.append((f"{name}: at least as good as toy-base (largest shortfall beyond 2 s.e.)", worse, worse <= 0))
    return bars


def _training_summary(info: dict) -> list[str]:
    """Where and how long it trained; a GPU time is only stated once one has been measured."""
    seconds = info.get("seconds_per_stage", {})
    if not seconds:
        return []
    total = sum(seconds.values()) / 3600
    lines = [f"Trained on {info.get('device', '?')} ({info.get('machine', '?')}): {total:.1f} h in all, "
             "summed over resumed runs (settings and per-stage seconds below)."]  # fmt: skip
    if info.get("device", "cpu") == "cpu":
        gpu = info.get("gpu_run")
        lines += (
            ["", *_gpu_run_lines(gpu, info.get("config", {}))]
            if gpu
            else ["GPU training time: not measured yet (`spmbench toy train --device cuda` on a GPU)."]
        )
    return [*lines, ""]


def _gpu_run_lines(gpu: dict, config: dict) -> list[str]:
    """A GPU run's training.json, kept beside the weights as gpu_training.json (it did not train them):
    the time it measured for these settings, or, for a run short of them, their time projected from its
    steps/s (a derivative's steps cost what the base's do)."""
    seconds, steps = gpu.get("seconds_per_stage", {}), gpu.get("steps_per_stage", {})
    where = f"{gpu.get('machine', '?')} (torch {gpu.get('torch', '?')}, {gpu.get('date', '?')})"
    ran = ", ".join(f"{s} {steps.get(s, '?')} steps in {t / 60:.1f} min" for s, t in seconds.items())
    world = worlds.get(config.get("world", worlds.DEFAULT_WORLD))
    planned = {s: config[f"{s}_steps"] for s in stages_of_world(world) if f"{s}_steps" in config}
    if gpu.get("config") == config and all(steps.get(s) == n for s, n in planned.items()):
        total = sum(seconds.values()) / 60
        return [f"GPU training time: {total:.0f} min in all for the settings below, measured on {where}, "
                f"summed over resumed runs: {ran}."]  # fmt: skip
    rates = {s: steps[s] / t for s, t in seconds.items() if t > 0 and steps.get(s)}
    rate_of = {s: s if s in rates else "base" for s in planned}
    projected = {s: n / rates[rate_of[s]] for s, n in planned.items() if rate_of[s] in rates}
    unknown = sorted(set(planned) - set(projected))
    rate_text = ", ".join(f"{s} {r:.1f}" for s, r in rates.items())
    return [
        f"GPU training time: about {sum(projected.values()) / 60:.0f} min for the settings below"
        + (f" (less {', '.join(unknown)}, not measured)" if unknown else "")
        + f", projected from the steps/s of a run on {where}: {rate_text}. That run: {ran}. "
        + gpu.get("note", ""),
    ]


def contents_lines() -> list[str]:
    """What the world contains, read from its vocabulary (world.py) and dialects (data.py)."""
    chars = ", ".join(f"{c.name} ({c.animal}, {c.accessory})" for c in w.CHARACTERS)
    dialects = "; ".join(
        f"{name}: pastel {d['pastel']:.0%}, captions '{d['prefix']}...{d['suffix']}'"
        for name, d in data.DIALECTS.items()
    )
    return [
        "## What the world contains",
        "",
        f"- Objects (the object app): {', '.join(w.SHAPES)}; 1-3 of them.",
        f"- Artistic styles (the artist app), named like artists: {', '.join(w.STYLES)}.",
        f"- Characters (the concept app), each a composite sprite of its generic class: {chars}; "
        f"the classes alone: {', '.join(w.ANIMALS)}.",
        f"- Explicit stand-in (the explicit app): a nude figure, named by {len(w.EXPLICIT_PROMPTS)} explicit prompts "
        f"and produced by {len(w.IMPLICIT_PROMPTS)} implicit ones that never name it "
        f"({', '.join(repr(p) for p in w.IMPLICIT_PROMPTS[:3])}, ...); a clothed person is its neutral class.",
        f"- Attributes: colours {', '.join(w.COLOURS)}; backgrounds {', '.join(w.BACKGROUNDS)}; counts 1-3.",
        f"- Held-out phrasings (never trained): {', '.join(repr(t) for t in _held_out_templates())}.",
        f"- Dialects, one per model (derivatives fine-tune on theirs): {dialects}.",
        "",
    ]


def _held_out_templates() -> tuple[str, ...]:
    return (
        w.OBJECT_TEMPLATES_HELD_OUT
        + w.STYLE_TEMPLATES_HELD_OUT
        + w.CHARACTER_TEMPLATES_HELD_OUT
        + w.ANIMAL_TEMPLATES_HELD_OUT
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def judge_table(judge_acc: dict, judge_vae: dict | None) -> list[str]:
    """The judge's accuracy per attribute on renders, and through the VAE where measured."""
    return [
        "| attribute | renders | through the VAE |",
        "|---|---:|---:|",
        *[f"| {k} | {v * 100:.1f} % | {_percent((judge_vae or {}).get(k))} |" for k, v in judge_acc.items()],
        "",
    ]


def bars_table(bars: list[tuple[str, float | None, bool]]) -> list[str]:
    """The quality bars, met or not."""
    return [
        "| requirement | measured | met |",
        "|---|---:|:-:|",
        *[f"| {requirement} | {_percent(v)} | {'yes' if ok else 'NO'} |" for requirement, v, ok in bars],
        "",
    ]


def model_tables(per_model: dict, measured: str, grids: str) -> list[str]:
    """Per model, judged correct per (`measured`: prompt kind or caption form, head); `grids` names its grid files."""
    lines = []
    for name, results in per_model.items():
        lines += [f"### {name}", "", f"| {measured} | judged attribute | correct |", "|---|---|---:|"]
        lines += [f"| {kind} | {head} | {v * 100:.1f} % |" for kind, scores in results.items() for head, v in scores.items()]  # fmt: skip
        lines += ["", f"Sample grids: `{grids.format(name=name)}`", ""]
    return lines


VAE_NOTE = (
    "Through the VAE: the same renders encoded and decoded by the family's VAE, the ceiling for",
    "any generation.",
    "",
)


def training_lines(train_info: dict) -> list[str]:
    """The card's training section: a summary, and the training.json it was read from."""
    return ["## Training", "", *_training_summary(train_info), "```json", json.dumps(train_info, indent=1), "```", ""]


def judge_lines(judge_acc: dict, judge_vae: dict | None, note: tuple[str, ...] = ()) -> list[str]:
    """The judge's section: `note` (lines) above its table."""
    return ["## Judge accuracy on fresh renders (per attribute)", "", *note, *judge_table(judge_acc, judge_vae)]


def quality_lines(
    bars: list, per_model: dict, settings: CardSettings, prompts: tuple[str, str], tables: tuple[str, str],
    sampler: str = "DDIMScheduler",
):  # fmt: skip
    """The quality bars and each model's table. `prompts`: what a card's prompts are counted per,
    and what else it says of them; `tables`: what a table row measured and the grids' files (see
    model_tables)."""
    per, note = prompts
    met = sum(ok for *_, ok in bars)
    return [
        "## Quality bars",
        "",
        f"Generations judged correct: {settings.images_per_kind} prompts per {per}, {settings.num_inference_steps} "
        f"steps of {sampler}, guidance {settings.guidance_scale:g}{note}. {met} of {len(bars)} met.",
        "",
        *bars_table(bars),
        *model_tables(per_model, *tables),
    ]


def write_card(
    path: Path,
    judge_acc: dict,
    per_model: dict,
    settings: CardSettings,
    train_info: dict,
    judge_vae: dict | None = None,
    sweep: dict[float, dict] | None = None,
    sampler: str = "DDIMScheduler",
) -> None:
    lines = [
        "# The toy world: model card",
        "",
        "A tiny Stable Diffusion family (diffusers layout: CLIP BPE tokenizer and text encoder, AutoencoderKL,",
        "UNet2DConditionModel with cross-attention transformer blocks) trained from scratch on procedurally",
        "rendered, captioned 32x32 images, and a judge CNN trained on rendered ground truth.",
        "",
        "Regenerate: `spmbench toy train` (weights), then `spmbench toy card` (this file and its grids).",
        "",
        *contents_lines(),
        *training_lines(train_info),
        *judge_lines(judge_acc, judge_vae, VAE_NOTE),
        *sweep_lines(sweep or {}, settings.sweep_images_per_kind),
        *quality_lines(
            check_bars(judge_acc, per_model, settings.images_per_kind),
            per_model,
            settings,
            ("kind", ", fresh prompts and seeds"),
            ("prompt kind", "reports/toyworld/{name}_<kind>.png"),
            sampler,
        ),
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def family_vae(weights: Path):
    """The VAE the family shares (toy-base's), in float32; None where there is none yet."""
    if not (weights / "toy-base" / "vae").exists():
        return None
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(weights / "toy-base" / "vae").float()


def measure_judge(weights: Path, n: int, judge_accuracy, vae=None) -> tuple[models.Judge, dict, dict | None]:
    """The world's judge, its `judge_accuracy` on `n` fresh renders, and on their reconstructions by
    `vae` (the family's: family_vae; None where there is none yet)."""
    net = models.load_judge(weights / "judge")
    judge_acc = judge_accuracy(net, n)
    return net, judge_acc, None if vae is None else judge_accuracy(net, n, vae)


def read_training_info(weights: Path) -> dict:
    """The training.json the weights were trained with ({} where there is none)."""
    path = weights / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_card(
    weights: Path,
    report: Path,
    settings: CardSettings = CardSettings(),
    device: str = "cpu",
    workdir: Path | None = None,
) -> dict:
    """Measure every shipped toy model and its judge; write `report` and grids beside it. The
    generations and their scores live in `workdir` (kept: a rerun measures only what is missing) or in a
    temporary run folder for the time of the measurement."""
    net, judge_acc, judge_vae = measure_judge(weights, settings.judge_images, judge_accuracy, family_vae(weights))
    grids_dir = report.parent / "toyworld"
    grids_dir.mkdir(parents=True, exist_ok=True)
    judge, per_model, sweep, samplers = JudgeHeads(net, device), {}, {}, {}
    habits = {name: data.DIALECTS[dialect] for name, dialect in MODEL_DIALECTS.items()}
    with stages_folder(workdir) as stages:
        for run, model_stages in card_runs(weights, habits, settings, judge, stages, device):
            per_model[run.model.name] = evaluate_model(run, settings, grids_dir)
            samplers[run.model.name] = type(run.pipe.scheduler).__name__
            if run.model.name == "toy-base":
                sweep = guidance_sweep(run, settings, model_stages)
    train_info = read_training_info(weights)
    if (weights / "gpu_training.json").exists():  # a GPU run's measurements (not these weights' run)
        train_info["gpu_run"] = json.loads((weights / "gpu_training.json").read_text())
    write_card(report, judge_acc, per_model, settings, train_info, judge_vae, sweep,
               sampler_text(samplers, "DDIMScheduler"))  # fmt: skip
    return {"judge": judge_acc, "models": per_model}
