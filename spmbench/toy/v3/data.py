"""Batches of rendered, captioned world-v3 images, and the judge's labels for them: the same
interface as `spmbench.toy.data` (world v2), which training reads through `spmbench.toy.worlds`."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from spmbench.toy import data as v2
from spmbench.toy.data import IGNORE, to_tensor
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

JUDGE_HEADS = v2.judge_heads(w)


def labels(scene: w.Scene) -> dict[str, int]:
    """Judge targets for one scene; IGNORE where an attribute does not apply."""
    return v2.labels(scene, w)


def tokenizer_corpus() -> list[str]:
    """Every caption form of every split, with each dialect's habits (see v2's tokenizer_corpus)."""
    return v2.with_caption_habits(captions.corpus(), DIALECTS, 3000)


def sample_batch(
    rng: np.random.Generator, n: int, dialect: str = "base", split: str = "train", foreground: bool = False
):
    """n fresh (image uint8 HWC, caption, scene) triples from `rng`, rendered as v2's are (in the
    worker processes `spmbench.toy.data.use_render_workers` starts, if any); with `foreground`, as v2's."""
    shift = DIALECTS[dialect]
    draw = partial(captions.sample, split=split, mix=shift["mix"])
    return v2.rendered_batch(rng, n, shift, draw, render.render_with_foreground if foreground else render.render)


def label_tensors(scenes: list[w.Scene]) -> dict[str, torch.Tensor]:
    return v2.label_tensors(scenes, w)
