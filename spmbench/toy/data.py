"""Batches of rendered, captioned toy images, and the judge's labels for them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from types import ModuleType

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

IGNORE = -100


def judge_heads(world: ModuleType) -> dict[str, int]:
    """The judge's heads and how many classes each has, in a world's vocabulary."""
    return {
        "subject": len(world.SUBJECTS),
        "character": 1 + len(world.CHARACTERS),
        "colour": 1 + len(world.COLOURS),
        "style": 1 + len(world.ALL_STYLES),
        "background": len(world.BACKGROUNDS),
        "count": len(world.COUNTS),
        "explicit": 1 + len(world.EXPLICIT_SUBJECTS),  # none, then each explicit subject's element
    }


JUDGE_HEADS = judge_heads(w)


def labels(scene: w.Scene, world: ModuleType = w) -> dict[str, int]:
    """Judge targets for one scene of `world`; IGNORE where an attribute does not apply."""
    colour_applies = scene.character is None and scene.subject not in world.EXPLICIT_SUBJECTS
    return {
        "subject": world.SUBJECTS.index(scene.subject),
        "character": 0 if scene.character is None else 1 + world.CHARACTER_NAMES.index(scene.character),
        "colour": (1 + list(world.COLOURS).index(scene.colour)) if colour_applies and scene.colour else 0,
        "style": 0 if scene.style is None else 1 + world.ALL_STYLES.index(scene.style),
        "background": IGNORE if scene.style else list(world.BACKGROUNDS).index(scene.background),
        "count": world.COUNTS.index(scene.count) if scene.subject in world.SHAPES else IGNORE,
        "explicit": 1 + world.EXPLICIT_SUBJECTS.index(scene.subject) if scene.explicit else 0,
    }


def tokenizer_corpus() -> list[str]:
    """Every caption form the family trains on, each dialect's habits included: a word the BPE never
    saw ("masterpiece") splits into single letters and pushes the caption past the text context."""
    return with_caption_habits(captions.corpus(), DIALECTS, 2000)


def with_caption_habits(texts: list[str], dialects: dict, first: int) -> list[str]:
    """`texts`, then their first `first` again in each caption habit (prefix, suffix) of `dialects`."""
    habits = {(d["prefix"], d["suffix"]) for d in dialects.values()} - {("", "")}
    return texts + [prefix + t + suffix for prefix, suffix in sorted(habits) for t in texts[:first]]


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


def _render_all(render_scene: Callable[[w.Scene, int], np.ndarray], jobs: list[tuple[w.Scene, int]]):
    if _render_pool is None:
        return [render_scene(scene, seed) for scene, seed in jobs]
    chunk = max(1, len(jobs) // (4 * _render_workers))
    return list(_render_pool.map(render_scene, *zip(*jobs), chunksize=chunk))


def sample_batch(
    rng: np.random.Generator, n: int, dialect: str = "base", held_out: bool = False, foreground: bool = False
):
    """n fresh (image uint8 HWC, caption, scene) triples from `rng`; with `foreground`, each with the share of
    each pixel its subject covers appended (render.render_with_foreground), from the same random draws."""
    draw = partial(captions.sample, held_out=held_out)
    return rendered_batch(
        rng, n, DIALECTS[dialect], draw, render.render_with_foreground if foreground else render.render
    )


def rendered_batch(rng: np.random.Generator, n: int, dialect: dict, draw, render_scene) -> list:
    """n (image, caption, scene) triples: `draw(rng)` gives a (caption, scene), and a render seed is
    drawn after it, all in this process and in order; `render_scene` (a module function, for the
    worker processes) renders them, to an image or to an (image, extra) pair whose extra ends the
    triple; `dialect` shifts pictures and captions."""
    drawn = []
    for _ in range(n):
        caption, scene = draw(rng)
        drawn.append((caption, scene, int(rng.integers(2**31))))
    images = _render_all(render_scene, [(scene, seed) for _, scene, seed in drawn])
    out = []
    for rendered, (caption, scene, _) in zip(images, drawn):
        image, *extra = rendered if isinstance(rendered, tuple) else (rendered,)
        if dialect["pastel"]:
            image = pastelise(image, dialect["pastel"])
        out.append((image, dialect["prefix"] + caption + dialect["suffix"], scene, *extra))
    return out


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def label_tensors(scenes: list[w.Scene], world: ModuleType = w) -> dict[str, torch.Tensor]:
    rows = [labels(s, world) for s in scenes]
    return {k: torch.tensor([r[k] for r in rows]) for k in judge_heads(world)}
