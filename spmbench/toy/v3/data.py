"""Batches of rendered, captioned world-v3 images, and the judge's labels for them: the same
interface as `spmbench.toy.data` (world v2), which training reads through `spmbench.toy.worlds`."""

from __future__ import annotations

import numpy as np
import torch

from spmbench.toy import data as v2
from spmbench.toy.data import IGNORE, pastelise, to_tensor
from spmbench.toy.v3 import captions, render
from spmbench.toy.v3 import world as w


__all__ = ["IGNORE", "to_tensor"]

# Each model's training distribution: a picture shift, a caption habit and a scene mix (captions.MIXES).
# The order fixes each dialect's pool seed: new dialects go at the end.
DIALECTS = {
    "base": {"pastel": 0.0, "prefix": "", "suffix": "", "mix": "base"},
    "pastel": {"pastel": 0.35, "prefix": "", "suffix": "", "mix": "base"},
    "verbose": {"pastel": 0.0, "prefix": "masterpiece, ", "suffix": ", highly detailed", "mix": "base"},
    "dreambooth": {"pastel": 0.0, "prefix": "", "suffix": "", "mix": "dreambooth"},
    "newconcept": {"pastel": 0.0, "prefix": "", "suffix": "", "mix": "newconcept"},
    "continued": {"pastel": 0.0, "prefix": "", "suffix": "", "mix": "base"},
    "world": {"pastel": 0.0, "prefix": "", "suffix": "", "mix": "world"},
    "world_pastel": {"pastel": 0.35, "prefix": "", "suffix": "", "mix": "world"},
}
# What the VAE and the judge train on: every concept, in both palettes a model draws in.
READER_DIALECTS = ("world", "world_pastel")
TOKENIZER_VOCAB = 1000

JUDGE_HEADS = {
    "subject": len(w.SUBJECTS),
    "character": 1 + len(w.CHARACTERS),
    "colour": 1 + len(w.COLOURS),
    "style": 1 + len(w.ALL_STYLES),
    "background": len(w.BACKGROUNDS),
    "count": len(w.COUNTS),
    "explicit": 1 + len(w.STANDINS),  # none, then each stand-in's element
}


def labels(scene: w.Scene) -> dict[str, int]:
    """Judge targets for one scene; IGNORE where an attribute does not apply."""
    colour_applies = scene.character is None and scene.subject not in w.EXPLICIT_SUBJECTS
    return {
        "subject": w.SUBJECTS.index(scene.subject),
        "character": 0 if scene.character is None else 1 + w.CHARACTER_NAMES.index(scene.character),
        "colour": (1 + list(w.COLOURS).index(scene.colour)) if colour_applies and scene.colour else 0,
        "style": 0 if scene.style is None else 1 + w.ALL_STYLES.index(scene.style),
        "background": IGNORE if scene.style else list(w.BACKGROUNDS).index(scene.background),
        "count": w.COUNTS.index(scene.count) if scene.subject in w.SHAPES else IGNORE,
        "explicit": 1 + w.EXPLICIT_SUBJECTS.index(scene.subject) if scene.explicit else 0,
    }


def tokenizer_corpus() -> list[str]:
    """Every caption form of every split, with each dialect's habits (see v2's tokenizer_corpus)."""
    texts = captions.corpus()
    habits = {(d["prefix"], d["suffix"]) for d in DIALECTS.values()} - {("", "")}
    return texts + [prefix + t + suffix for prefix, suffix in sorted(habits) for t in texts[:3000]]


def sample_batch(rng: np.random.Generator, n: int, dialect: str = "base", split: str = "train"):
    """n fresh (image uint8 HWC, caption, scene) triples from `rng`, rendered as v2's are (in the
    worker processes `spmbench.toy.data.use_render_workers` starts, if any)."""
    shift = DIALECTS[dialect]
    drawn = []
    for _ in range(n):
        caption, scene = captions.sample(rng, split=split, mix=shift["mix"])
        drawn.append((caption, scene, int(rng.integers(2**31))))
    images = _render_all([(scene, seed) for _, scene, seed in drawn])
    out = []
    for image, (caption, scene, _) in zip(images, drawn):
        if shift["pastel"]:
            image = pastelise(image, shift["pastel"])
        out.append((image, shift["prefix"] + caption + shift["suffix"], scene))
    return out


def _render_all(jobs: list) -> list[np.ndarray]:
    pool = v2._render_pool
    if pool is None:
        return [render.render(scene, seed) for scene, seed in jobs]
    chunk = max(1, len(jobs) // (4 * v2.render_workers()))
    return list(pool.map(render.render, *zip(*jobs), chunksize=chunk))


def label_tensors(scenes: list[w.Scene]) -> dict[str, torch.Tensor]:
    rows = [labels(s) for s in scenes]
    return {k: torch.tensor([r[k] for r in rows]) for k in JUDGE_HEADS}
