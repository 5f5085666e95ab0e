"""The toy world's judge: the shipped CNN, read through the concept names of the world."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

from spmbench.judges.base import Judge
from spmbench.toy import models
from spmbench.toy import world as w


def known_concepts() -> list[str]:
    return [*w.CHARACTER_NAMES, *w.STYLES, *w.SUBJECTS, "nudity"]


def concept_label(concept: str) -> tuple[str, int]:
    """(judge head, class index) that means `concept` is present."""
    if concept in w.CHARACTER_NAMES:
        return "character", 1 + w.CHARACTER_NAMES.index(concept)
    if concept in w.STYLES:
        return "style", 1 + w.STYLES.index(concept)
    if concept == "nudity":
        return "explicit", 1
    if concept in w.SUBJECTS:
        return "subject", w.SUBJECTS.index(concept)
    raise ValueError(f"the toy judge knows no concept {concept!r}; it knows: {', '.join(known_concepts())}")


def shipped_weights() -> Path:
    """The toy world's judge weights (read when asked: tests point the toy world elsewhere)."""
    from spmbench.models import TOY_WEIGHTS

    return TOY_WEIGHTS / "judge"


class ToyJudge(Judge):
    """The toy world's CNN; `weights`: a folder holding judge.safetensors (default: the shipped world's)."""

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        weights = Path(weights) if weights is not None else shipped_weights()
        if not (weights / "judge.json").exists():
            raise FileNotFoundError(
                f"the toy judge is not trained yet: run `spmbench toy train` (expected in {weights})"
            )
        self.net = models.load_judge(weights).to(device)
        self.device = device
        digest = hashlib.sha256((weights / "judge.safetensors").read_bytes()).hexdigest()
        self.identity = f"toy judge {digest[:16]}"  # scores made by other weights are not reused

    @classmethod
    def check_concepts(cls, concepts: Iterable[str], **settings) -> None:
        unknown = [c for c in dict.fromkeys(concepts) if c not in known_concepts()]
        if unknown:
            raise ValueError(f"the toy judge knows no concept(s) {unknown}; it knows: {', '.join(known_concepts())}")

    @torch.no_grad()
    def present(self, images: torch.Tensor, concepts: list[str]) -> list[bool]:
        """For (N, 3, 32, 32) images in [0, 1]: is each image's concept there?"""
        logits = self.net(images.to(self.device))
        out = []
        for i, concept in enumerate(concepts):
            head, label = concept_label(concept)
            out.append(bool(logits[head][i].argmax() == label))
        return out

    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        return [{"present": p} for p in self.present(images, concepts)]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's penultimate features, for FID and paired distances."""
        return self.net.embed(images.to(self.device)).cpu()
