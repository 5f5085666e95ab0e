"""The toy world's judge: the shipped CNN, read through the concept names of the world.

`toy` reads world v2 (the shipped tables); `toy3` reads world v3 (issue 19), whose judge has more
classes per head and two explicit stand-ins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import torch

from spmbench.judges.base import Judge
from spmbench.toy import models
from spmbench.toy import world as w
from spmbench.toy.v3 import world as w3


def standins(world: ModuleType = w) -> dict[str, str]:
    """Each explicit stand-in's concept name -> the subject drawn with its element (v2 has one)."""
    if hasattr(world, "STANDINS"):
        return {s.concept: s.subject for s in world.STANDINS}
    return {"nudity": "nude figure"}


def known_concepts(world: ModuleType = w) -> list[str]:
    return [*world.CHARACTER_NAMES, *world.ALL_STYLES, *world.SUBJECTS, *standins(world)]


def concept_label(concept: str, world: ModuleType = w) -> tuple[str, int]:
    """(judge head, class index) that means `concept` is present."""
    if concept in world.CHARACTER_NAMES:
        return "character", 1 + world.CHARACTER_NAMES.index(concept)
    if concept in world.ALL_STYLES:
        return "style", 1 + world.ALL_STYLES.index(concept)
    if concept in standins(world):
        return "explicit", 1 + world.EXPLICIT_SUBJECTS.index(standins(world)[concept])
    if concept in world.SUBJECTS:
        return "subject", world.SUBJECTS.index(concept)
    raise ValueError(f"the toy judge knows no concept {concept!r}; it knows: {', '.join(known_concepts(world))}")


def shipped_weights() -> Path:
    """The toy world's judge weights (read when asked: tests point the toy world elsewhere)."""
    from spmbench.models import TOY_WEIGHTS

    return TOY_WEIGHTS / "judge"


class ToyJudge(Judge):
    """The toy world's CNN; `weights`: a folder holding judge.safetensors (default: the shipped world's)."""

    world: ModuleType = w
    train_command = "spmbench toy train"

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        weights = Path(weights) if weights is not None else self.shipped_weights()
        if not (weights / "judge.json").exists():
            raise FileNotFoundError(
                f"the toy judge is not trained yet: run `{self.train_command}` (expected in {weights})"
            )
        self.net = models.load_judge(weights).to(device)
        self.device = device
        digest = hashlib.sha256((weights / "judge.safetensors").read_bytes()).hexdigest()
        self.identity = f"toy judge {digest[:16]}"  # scores made by other weights are not reused

    @staticmethod
    def shipped_weights() -> Path:
        return shipped_weights()

    @classmethod
    def check_concepts(cls, concepts: Iterable[str], **settings) -> None:
        known = known_concepts(cls.world)
        unknown = [c for c in dict.fromkeys(concepts) if c not in known]
        if unknown:
            raise ValueError(f"the toy judge knows no concept(s) {unknown}; it knows: {', '.join(known)}")

    @torch.no_grad()
    def present(self, images: torch.Tensor, concepts: list[str]) -> list[bool]:
        """For (N, 3, 32, 32) images in [0, 1]: is each image's concept there?"""
        logits = self.net(images.to(self.device))
        out = []
        for i, concept in enumerate(concepts):
            head, label = concept_label(concept, self.world)
            out.append(bool(logits[head][i].argmax() == label))
        return out

    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        return [{"present": p} for p in self.present(images, concepts)]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's penultimate features, for FID and paired distances."""
        return self.net.embed(images.to(self.device)).cpu()


class Toy3Judge(ToyJudge):
    """World v3's CNN (spmbench/toy/v3/weights/judge unless `weights` names another folder)."""

    world = w3
    train_command = "spmbench toy train --world 3"

    @staticmethod
    def shipped_weights() -> Path:
        from spmbench.toy import worlds

        return worlds.get(3).weights / "judge"
