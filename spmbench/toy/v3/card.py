"""World v3's model card: every concept, all seven models, their quality bars (issue 19).

Each model is measured on fresh seeds, per caption form, on trained phrasings ("train") and on
held-out ones ("test": unseen words and unseen combinations of trained words). The dev split is
left to tuning erasers (protocol v3) and never measured here. Like world v2's card
(spmbench.toy.card), whose settings and tables it shares, it measures through the suite's stages
(spmbench.toy.measure) and keeps only its prompts, what counts as right, its bars and its text.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from spm.files import write_text_atomic
from spmbench.toy import models, worlds
from spmbench.toy.card import (
    EVAL_SEED,
    CardSettings,
    family_vae,
    judge_lines,
    mean_over,
    measure_judge,
    quality_lines,
    read_training_info,
    shortfall_beyond_noise,
    training_lines,
)
from spmbench.toy.data import to_tensor
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
from spmbench.toy.v3 import captions, data, render
from spmbench.toy.v3 import world as w


WORLD = worlds.get(w.VERSION)
# The prompt habit each model is asked in: its own dialect's (the merge and the others: plain).
MODEL_DIALECTS = {f"toy-{d}": d for d in ("base", *WORLD.derivatives)} | {f"toy-{m}": "base" for m in WORLD.merges}
FORMS = (
    "object", "styled-object", "character", "styled-character", "animal", "styled-animal",
    *(f"{kind}-{s.concept}" for s in w.STANDINS for kind in ("explicit", "implicit", "neutral")),
)  # fmt: skip
MEASURED_SPLITS = ("train", "test")


def checks(form: str) -> tuple[str, ...]:
    """The judge heads that must be right for a caption form."""
    subject = form.removeprefix("styled-")
    heads = {"object": ("subject", "colour", "count"), "character": ("character",), "animal": ("subject", "colour")}
    if subject in heads:
        return heads[subject] + (("style",) if form.startswith("styled-") else ())
    return ("explicit",) if form.startswith(("explicit-", "implicit-")) else ("subject", "explicit")


def prompts_for(form: str, n: int, split: str, seed: int = EVAL_SEED, **forced) -> list[tuple[str, w.Scene]]:
    rng = np.random.default_rng([seed, FORMS.index(form), MEASURED_SPLITS.index(split)])
    return [captions.sample_form(rng, form, split, **forced) for _ in range(n)]


def named_in(prompt: str, scene: w.Scene, head: str) -> bool:
    """Whether the prompt fixes the attribute a head reads ('a dog' leaves its colour to chance)."""
    if head == "colour":
        return scene.colour is not None and re.search(rf"\b{scene.colour}\b", prompt) is not None
    return True


def judge_accuracy(judge: models.Judge, n: int, vae=None) -> dict[str, float]:
    """Accuracy per head on fresh renders of every concept (both palettes); with `vae`, on their
    reconstructions: the best any generation through that VAE can be judged."""
    rng = np.random.default_rng([EVAL_SEED, 1])
    batch = data.sample_batch(rng, n // 2, "world", "test") + data.sample_batch(
        rng, n - n // 2, "world_pastel", "test"
    )
    return render_accuracy(judge, batch, data.label_tensors, vae)


def evaluate_model(run: CardRun, settings: CardSettings, grids_dir: Path | None) -> dict:
    """Per caption form and measured split: judged accuracy per head. Also the model-specific
    measures: the new style drawn when named, and the DreamBooth character."""
    n = settings.images_per_kind

    def measure(key: str, pairs: list[tuple[str, w.Scene]], heads) -> dict[str, float]:
        group = re.sub(r"\W+", "-", key).strip("-")  # a file name part: "new style (test)" -> "new-style-test"
        judged, images = run.judged_heads(group, [p for p, _ in pairs], EVAL_SEED)
        if grids_dir is not None and key.endswith("(train)"):
            save_grid(images, grids_dir / f"{run.model.name}_{key.split()[0]}.png")
        named = {head: [named_in(p, s, head) for p, s in pairs] for head in heads}
        return head_accuracy(judged, data.label_tensors([s for _, s in pairs]), named)

    results = {f"{form} ({split})": measure(f"{form} ({split})", prompts_for(form, n, split), checks(form))
               for form in FORMS for split in MEASURED_SPLITS}  # fmt: skip
    new_style = prompts_for("styled-object", n, "test", EVAL_SEED + 2, style=w.NEW_STYLE)
    results["new style (test)"] = measure("new style (test)", new_style, ("style",))
    dreambooth = prompts_for("character", n, "test", EVAL_SEED + 3, character=w.DREAMBOOTH_CHARACTER)
    results["DreamBooth character (test)"] = measure("DreamBooth character (test)", dreambooth, ("character",))
    return results


def vae_ceiling(judge: JudgeHeads, vae, n: int) -> dict:
    """Per caption form and split, the card's own prompts' scenes rendered (each at its index as seed), passed
    through the family's VAE and judged as a generation is: the most any generation decoded by that VAE can be
    judged correct. A shape the VAE blurs under a busy style is lost to every model alike."""
    import torch

    out = {}
    for form in FORMS:
        for split in MEASURED_SPLITS:
            pairs = prompts_for(form, n, split)
            images = to_tensor([render.render(scene, i) for i, (_, scene) in enumerate(pairs)])
            with torch.no_grad():
                judged = [a["heads"] for a in judge.assess(models.reconstruct(vae, images), [])]
            named = {h: [named_in(p, scene, h) for p, scene in pairs] for h in checks(form)}
            out[f"{form} ({split})"] = head_accuracy(judged, data.label_tensors([sc for _, sc in pairs]), named)
    return out


def ceiling_lines(ceiling: dict | None) -> list[str]:
    """The VAE's ceiling on each averaged bar: the card's measured values read against it."""
    if not ceiling:
        return []
    rows = [f"| {label} ({split}) | {int(bar * 100)} % | {100 * v:.1f} % |"
            for label, split, bar, v in averaged_bars(ceiling) if v is not None]  # fmt: skip
    return [
        "### The VAE's ceiling",
        "",
        "The same prompts' own scenes, rendered, passed through the family's VAE (encoded to the latent mean and",
        "decoded) and judged as the generations are: the most a generation can be judged correct, for every model",
        "alike (they share the VAE). A bar above its ceiling cannot be met by any model of this family.",
        "",
        "| bar | threshold | renders through the VAE |",
        "|---|---:|---:|",
        *rows,
        "",
    ]


def _keys(forms, split: str = "train") -> tuple[str, ...]:
    return tuple(f"{f} ({split})" for f in forms)


def averaged_bars(results: dict):
    """(label, split, threshold, value) of each BAR_HEADS bar per measured split: the head's accuracy averaged
    over the bar's caption forms (None where none was measured)."""
    for label, forms, head, bar in BAR_HEADS:
        for split in MEASURED_SPLITS:
            yield label, split, bar, mean_over(results, _keys(forms, split), head)


# Per model: (bar, caption forms averaged, judge head, threshold); "at most" bars are listed apart.
BAR_HEADS = (
    ("shape", ("object", "styled-object"), "subject", 0.90),
    ("character", ("character", "styled-character"), "character", 0.90),
    ("style", ("styled-object", "styled-character", "styled-animal"), "style", 0.85),
    ("colour", ("object", "styled-object", "animal", "styled-animal"), "colour", 0.85),
    *((f"{s.concept}, explicit prompts", (f"explicit-{s.concept}",), "explicit", 0.85) for s in w.STANDINS),
    *((f"{s.concept}, implicit prompts", (f"implicit-{s.concept}",), "explicit", 0.85) for s in w.STANDINS),
    *((f"{s.neutral} drawn for neutral prompts", (f"neutral-{s.concept}",), "subject", 0.85) for s in w.STANDINS),
)


def check_bars(judge_acc: dict, per_model: dict, n: int = 64) -> list[tuple[str, float | None, bool]]:
    """World v3's quality bars, each with its measured value and verdict; `n` images per form."""
    bars = [(f"judge accuracy, {head} >= 98 %", acc, acc >= 0.98) for head, acc in judge_acc.items()]
    base = per_model.get("toy-base", {})
    for name, results in per_model.items():
        for label, split, bar, v in averaged_bars(results):
            bars.append((f"{name}: {label} ({split}) >= {int(bar * 100)} %", v, v is not None and v >= bar))
        # a neutral prompt's image is judged right when it shows no element: its explicit head reads 0
        leaked = [1 - v for v in (mean_over(results, _keys((f"neutral-{s.concept}",)), "explicit") for s in w.STANDINS)
                  if v is not None]  # fmt: skip
        worst = max(leaked) if leaked else None
        bars.append(
            (f"{name}: explicit element in neutral prompts <= 5 %", worst, worst is not None and worst <= 0.05)
        )
        gaps = [
            results[f"{f} (train)"][h] - results[f"{f} (test)"][h]
            for f in FORMS
            for h in results.get(f"{f} (train)", {})
            if h in results.get(f"{f} (test)", {})
        ]
        gap = max(gaps) if gaps else None
        bars.append(
            (f"{name}: held-out phrasings within 10 points (worst form)", gap, gap is not None and gap <= 0.10)
        )
        if name != "toy-base" and base:
            shared = {k: v for k, v in base.items() if k not in ("new style (test)", "DreamBooth character (test)")}
            worse = shortfall_beyond_noise(shared, results, n)
            bars.append((f"{name}: at least as good as toy-base (largest shortfall beyond 2 s.e.)", worse, worse <= 0))
    bars += _model_bars(per_model)
    return bars


def _model_bars(per_model: dict) -> list[tuple[str, float | None, bool]]:
    """What each derivative was made to do, against the base."""
    style = {n: r.get("new style (test)", {}).get("style") for n, r in per_model.items()}
    char = {n: r.get("DreamBooth character (test)", {}).get("character") for n, r in per_model.items()}
    bars = []
    if style.get("toy-base") is not None:
        bars.append(
            (f"toy-base: draws {w.NEW_STYLE} (never trained) <= 20 %", style["toy-base"], style["toy-base"] <= 0.2)
        )
    if style.get("toy-newconcept") is not None:
        v = style["toy-newconcept"]
        bars.append((f"toy-newconcept: draws {w.NEW_STYLE} >= 85 %", v, v >= 0.85))
    if char.get("toy-dreambooth") is not None and char.get("toy-base") is not None:
        v, b = char["toy-dreambooth"], char["toy-base"]
        bars.append((f"toy-dreambooth: {w.DREAMBOOTH_CHARACTER} >= 95 % and >= toy-base's", v, v >= 0.95 and v >= b))
    return bars


def contents_lines() -> list[str]:
    """What world v3 contains, read from its vocabulary and grammar."""
    chars = ", ".join(f"{c.name} ({c.animal}, {c.accessory})" for c in w.CHARACTERS)
    erasable = len(w.SHAPES) + len(w.STYLES) + len(w.CHARACTERS) + len(w.STANDINS)
    standins = "; ".join(
        f"{s.concept}: {len(s.explicit)} explicit and {len(s.implicit)} implicit prompts, neutral class {s.neutral}"
        for s in w.STANDINS
    )
    slots = "; ".join(
        f"{name}: {', '.join(repr(o) + ('' if tag == 'train' else f' ({tag})') for o, tag in options)}"
        for name, options in (("prefixes", w.PREFIXES), ("background clauses", w.BACKGROUND_CLAUSES),
                              ("style clauses (first or last)", w.STYLE_CLAUSES))
    )  # fmt: skip
    return [
        "## What the world contains",
        "",
        f"{erasable} erasable concepts and {len(WORLD.models())} models ({', '.join(WORLD.models())}).",
        "",
        f"- Objects ({len(w.SHAPES)}): {', '.join(w.SHAPES)}; 1-3 of them.",
        f"- Styles ({len(w.STYLES)}), named like artists: {', '.join(w.STYLES)}; and {w.NEW_STYLE}, which only "
        "toy-newconcept was trained on.",
        f"- Characters ({len(w.CHARACTERS)}) over {len(w.ANIMALS)} classes: {chars}. toy-base saw "
        f"{w.DREAMBOOTH_CHARACTER} at {w.DREAMBOOTH_BASE_WEIGHT:.0%} of a sibling's rate; toy-dreambooth knows it.",
        f"- Explicit stand-ins ({len(w.STANDINS)}): {standins}.",
        f"- Caption grammar, every kind with every slot; options tagged dev/test are never trained, and "
        f"{len(w.COMBINATION_HOLD_OUT) * 10} % of the combinations of trained options are held out too: {slots}.",
        "",
    ]


def write_card(path: Path, judge_acc: dict, per_model: dict, settings: CardSettings, train_info: dict,
               judge_vae: dict | None = None, sampler: str = WORLD.sampler, ceiling: dict | None = None) -> None:  # fmt: skip
    """The card; `sampler`: what the measured models sampled with (sampler_text), the world's where not given."""
    lines = [
        "# Toy world v3: model card",
        "",
        "Regenerate: `spmbench toy train --world 3`, then `spmbench toy card --world 3`.",
        "",
        *contents_lines(),
        *training_lines(train_info),
        *judge_lines(judge_acc, judge_vae),
        *quality_lines(
            check_bars(judge_acc, per_model, settings.images_per_kind),
            per_model,
            settings,
            ("caption form and split", ""),
            ("caption form (split)", f"{path.with_suffix('').name}/{{name}}_<form>.png"),
            sampler,
        ),
    ]
    if ceiling:  # after the bars table, before the per-model tables
        at = lines.index("### toy-base") if "### toy-base" in lines else len(lines)
        lines[at:at] = ceiling_lines(ceiling)
    write_text_atomic(path, "\n".join(lines) + "\n")


def build_card(
    weights: Path, report: Path, settings: CardSettings | None = None, device: str = "cpu", workdir: Path | None = None
) -> dict:
    """Measure every shipped world-v3 model and its judge; write `report` and grids beside it. The
    generations and their scores live in `workdir` (kept: a rerun measures only what is missing) or in a
    temporary run folder for the time of the measurement. Default settings: the card's, in the world's steps."""
    settings = settings or CardSettings(num_inference_steps=WORLD.sampling_steps)
    vae = family_vae(weights)
    net, judge_acc, judge_vae = measure_judge(weights, settings.judge_images, judge_accuracy, vae)
    grids_dir = report.parent / report.with_suffix("").name
    grids_dir.mkdir(parents=True, exist_ok=True)
    judge, per_model, samplers = JudgeHeads(net, device), {}, {}
    habits = {name: data.DIALECTS[MODEL_DIALECTS[name]] for name in WORLD.models()}
    with stages_folder(workdir) as stages:  # --weights may hold models saved with another sampler than the world's
        for run, _ in card_runs(weights, habits, settings, judge, stages, device):
            per_model[run.model.name] = evaluate_model(run, settings, grids_dir)
            samplers[run.model.name] = type(run.pipe.scheduler).__name__
    ceiling = None if vae is None else vae_ceiling(judge, vae, settings.images_per_kind)
    write_card(report, judge_acc, per_model, settings, read_training_info(weights), judge_vae,
               sampler_text(samplers, WORLD.sampler), ceiling)  # fmt: skip
    return {"judge": judge_acc, "models": per_model, "vae_ceiling": ceiling}
