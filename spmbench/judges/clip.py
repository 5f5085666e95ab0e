"""CLIP as a judge for real models (transformers' CLIPModel; ViT-B/32 by default).

- CLIP score: 2.5 * max(cos(image, text), 0), the protocol's definition (computed here, since
  torchmetrics' CLIPScore breaks on transformers 5).
- CLIP accuracy: the concept's text is closer to the image than the empty-string anchor is.
- Features: the image embeddings, for FID and paired distances.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from spm import warn_if_truncated
from spmbench.judges.base import Judge
from spmbench.metrics import MetricInfo


DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CLIP_SCORE = MetricInfo("CLIP score", higher_is_better=True)  # agreement of the image with its concept's text


def _projected(out) -> torch.Tensor:
    """transformers 5 returns an output whose pooler_output is the projection; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipJudge(Judge):
    metrics = {"clip_score": CLIP_SCORE}

    def __init__(self, model: str = DEFAULT_CLIP, device: str = "cpu", template: str = "a photo of {}"):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model)
        self.device, self.template = device, template
        self.identity = f"clip {model}, template {template!r}"

    @classmethod
    def check_concepts(cls, concepts: Iterable[str], **settings) -> None:
        """Any text is a concept to CLIP (open vocabulary): every concept is accepted."""

    @torch.no_grad()
    def _texts(self, texts: list[str]) -> torch.Tensor:
        batch = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        warn_if_truncated(self.processor.tokenizer, texts, batch)  # a long concept is judged on its start only
        batch = batch.to(self.device)
        return F.normalize(_projected(self.model.get_text_features(**batch)), dim=-1)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings for (N, 3, H, W) images in [0, 1]."""
        pixels = self.processor(images=list(images), return_tensors="pt", do_rescale=False)["pixel_values"]
        return F.normalize(
            _projected(self.model.get_image_features(pixel_values=pixels.to(self.device))), dim=-1
        ).cpu()

    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Per-image CLIP score against its own text: 2.5 * max(cos, 0)."""
        cos = (self.features(images) * self._texts(texts).cpu()).sum(-1)
        return 2.5 * cos.clamp(min=0)

    def present(self, images: torch.Tensor, concepts: list[str]) -> list[bool]:
        """CLIP accuracy: the concept's prompt beats the empty-string anchor."""
        feats = self.features(images)
        concept_text = self._texts([self.template.format(c) for c in concepts]).cpu()
        anchor = self._texts([""]).cpu()
        return ((feats * concept_text).sum(-1) > (feats @ anchor.T)[:, 0]).tolist()

    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        """CLIP accuracy, with the CLIP score of the concept's prompt kept beside it."""
        scores = self.score(images, [self.template.format(c) for c in concepts]).tolist()
        return [{"present": p, "clip_score": s} for p, s in zip(self.present(images, concepts), scores)]
