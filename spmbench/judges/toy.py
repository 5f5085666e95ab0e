"""The toy world's judge: the shipped CNN, read through the concept names of the world."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from spmbench.toy import models
from spmbench.toy import world as w


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
    known = [*w.CHARACTER_NAMES, *w.STYLES, *w.SUBJECTS, "nudity"]
    raise ValueError(f"the toy judge knows no concept {concept!r}; it knows: {', '.join(known)}")


class ToyJudge:
    def __init__(self, weights: Path, device: str = "cpu"):
        self.net = models.load_judge(Path(weights)).to(device)
        self.device = device
        digest = hashlib.sha256((Path(weights) / "judge.safetensors").read_bytes()).hexdigest()
        self.identity = f"toy judge {digest[:16]}"  # scores made by other weights are not reused

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
