"""Batches of rendered, captioned toy images, and the judge's labels for them."""

from __future__ import annotations

import numpy as np
import torch

from spmbench.toy import captions, render
from spmbench.toy import world as w


# Each derivative model is fine-tuned on a shifted distribution, as SD community fine-tunes are.
DIALECTS = {
    "base": {"pastel": 0.0, "prefix": "", "suffix": ""},
    "pastel": {"pastel": 0.35, "prefix": "", "suffix": ""},
    "verbose": {"pastel": 0.0, "prefix": "masterpiece, ", "suffix": ", highly detailed"},
}

JUDGE_HEADS = {
    "subject": len(w.SUBJECTS),
    "character": 1 + len(w.CHARACTERS),
    "colour": 1 + len(w.COLOURS),
    "style": 1 + len(w.STYLES),
    "background": len(w.BACKGROUNDS),
    "count": len(w.COUNTS),
    "explicit": 2,
}
IGNORE = -100


def labels(scene: w.Scene) -> dict[str, int]:
    """Judge targets for one scene; IGNORE where an attribute does not apply."""
    colour_applies = scene.character is None and scene.subject != "nude figure"
    return {
        "subject": w.SUBJECTS.index(scene.subject),
        "character": 0 if scene.character is None else 1 + w.CHARACTER_NAMES.index(scene.character),
        "colour": (1 + list(w.COLOURS).index(scene.colour)) if colour_applies and scene.colour else 0,
        "style": 0 if scene.style is None else 1 + w.STYLES.index(scene.style),
        "background": IGNORE if scene.style else list(w.BACKGROUNDS).index(scene.background),
        "count": w.COUNTS.index(scene.count) if scene.subject in w.SHAPES else IGNORE,
        "explicit": int(scene.explicit),
    }


def tokenizer_corpus() -> list[str]:
    """Every caption form the family trains on, each dialect's habits included: a word the BPE never
    saw ("masterpiece") splits into single letters and pushes the caption past the text context."""
    texts = captions.corpus()
    habits = {(d["prefix"], d["suffix"]) for d in DIALECTS.values()} - {("", "")}
    return texts + [prefix + t + suffix for prefix, suffix in sorted(habits) for t in texts[:2000]]


def pastelise(image: np.ndarray, amount: float) -> np.ndarray:
    return (image * (1 - amount) + 255 * amount).astype(np.uint8)


def sample_batch(rng: np.random.Generator, n: int, dialect: str = "base", held_out: bool = False):
    """n fresh (image uint8 HWC, caption, scene) triples from `rng`."""
    shift = DIALECTS[dialect]
    out = []
    for _ in range(n):
        caption, scene = captions.sample(rng, held_out=held_out)
        image = render.render(scene, int(rng.integers(2**31)))
        if shift["pastel"]:
            image = pastelise(image, shift["pastel"])
        out.append((image, shift["prefix"] + caption + shift["suffix"], scene))
    return out


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def label_tensors(scenes: list[w.Scene]) -> dict[str, torch.Tensor]:
    rows = [labels(s) for s in scenes]
    return {k: torch.tensor([r[k] for r in rows]) for k in JUDGE_HEADS}
