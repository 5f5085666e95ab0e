"""Batches of rendered, captioned toy images, and the judge's labels for them."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

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


_render_pool: ProcessPoolExecutor | None = None
_render_workers = 0


def use_render_workers(workers: int) -> None:
    """Render batches in `workers` processes (0: in this one). Batches stay identical: every random
    draw is made here, in order; a worker only renders a (scene, seed) pair, a pure function. On a
    GPU, single-process rendering left the VAE stage at 10 steps/s (H100, 16 cores)."""
    global _render_pool, _render_workers
    if _render_pool is not None:
        _render_pool.shutdown()
    _render_workers = workers
    _render_pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 0 else None


def render_workers() -> int:
    return _render_workers


def _render_all(jobs: list[tuple[w.Scene, int]]) -> list[np.ndarray]:
    if _render_pool is None:
        return [render.render(scene, seed) for scene, seed in jobs]
    chunk = max(1, len(jobs) // (4 * _render_workers))
    return list(_render_pool.map(render.render, *zip(*jobs), chunksize=chunk))


def sample_batch(rng: np.random.Generator, n: int, dialect: str = "base", held_out: bool = False):
    """n fresh (image uint8 HWC, caption, scene) triples from `rng`."""
    shift = DIALECTS[dialect]
    drawn = []
    for _ in range(n):
        caption, scene = captions.sample(rng, held_out=held_out)
        drawn.append((caption, scene, int(rng.integers(2**31))))
    images = _render_all([(scene, seed) for _, scene, seed in drawn])
    out = []
    for image, (caption, scene, _) in zip(images, drawn):
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
