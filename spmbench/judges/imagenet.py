"""An ImageNet classifier as a judge (the object application: Imagenette classes, top-1 accuracy).

Any transformers image classifier with ImageNet-1k labels in `config.id2label` works; the default
is a ResNet-50, the classifier family of the published object-erasing evaluations (their weights
are torchvision's; these are transformers', so absolute accuracies differ a little). Its processor
runs on PIL, without torchvision.

- present: the concept's ImageNet class is the top-1 prediction.
- Raw outputs kept with every verdict: the concept's class and probability, and the top-5.
- Features: the classification head's input (pooled penultimate features), for FID and paired
  distances.

Concept names are matched against the labels, whose synonyms are comma-separated ("church,
church building"; "English springer, English springer spaniel"), case-insensitively: the whole
label first, then a label's first name, then any of its synonyms. A bare class index ("517") picks
a class whose names are ambiguous (ImageNet has two "crane"s).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

import torch

from spmbench.judges.base import ConceptsUnchecked, Judge


DEFAULT_CLASSIFIER = "microsoft/resnet-50"
TOP_K = 5


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower())


def _synonyms(label: str) -> list[str]:
    return [s for s in (_norm(part) for part in label.split(",")) if s]


def label_index(concept: str, id2label: dict) -> int:
    """The class index of `concept` among `id2label`'s labels.

    Raises:
        ValueError: no label names `concept` (the closest names are suggested), or several do.
    """
    labels = {int(i): str(label) for i, label in id2label.items()}
    wanted = _norm(concept)
    if wanted.isdigit() and int(wanted) in labels:
        return int(wanted)
    levels = (
        lambda label: _norm(label) == wanted,  # the whole label
        lambda label: _synonyms(label)[:1] == [wanted],  # its first (main) name
        lambda label: wanted in _synonyms(label),  # any synonym
    )
    for matches in levels:
        found = sorted(i for i, label in labels.items() if matches(label))
        if len(found) == 1:
            return found[0]
        if found:
            options = "; ".join(f"{i}: {labels[i]!r}" for i in found)
            raise ValueError(f"the concept {concept!r} names several classes ({options}): give the class index")
    names = sorted({s for label in labels.values() for s in _synonyms(label)})
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"the classifier has no class named {concept!r}{hint}")


def classifier_labels(model: str) -> dict[int, str]:
    """The classifier's id2label from its config, if that is on this machine (nothing is downloaded).

    Raises:
        ConceptsUnchecked: the config is not on this machine (or `model` names no classifier).
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):  # not cached, or not a valid name or folder
        raise ConceptsUnchecked(f"{model} is not on this machine, so its classes were not checked") from None
    return {int(i): str(label) for i, label in config.id2label.items()}


class ImageNetJudge(Judge):
    @classmethod
    def check_concepts(cls, concepts: Iterable[str], model: str = DEFAULT_CLASSIFIER, **settings) -> None:
        labels = classifier_labels(model)
        for concept in concepts:
            try:
                label_index(concept, labels)
            except ValueError as e:
                raise ValueError(f"{e} (classifier {model})") from None

    def __init__(self, model: str = DEFAULT_CLASSIFIER, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.device = device
        self.identity = f"imagenet classifier {model}"
        self.id2label = {int(i): label for i, label in self.model.config.id2label.items()}
        heads = [getattr(self.model, n, None) for n in ("classifier", "head")]
        self.head = next((h for h in heads if isinstance(h, torch.nn.Module)), None)
        if self.head is None:
            raise ValueError(f"{model}: no classification head (`classifier` or `head`) to read features from")
        self._indices: dict[str, int] = {}

    def label_index(self, concept: str) -> int:
        if concept not in self._indices:
            self._indices[concept] = label_index(concept, self.id2label)
        return self._indices[concept]

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's inputs for (N, 3, H, W) images in [0, 1] (resized, cropped, normalised)."""
        batch = self.processor(
            images=list(images.float()), return_tensors="pt", do_rescale=False, input_data_format="channels_first"
        )
        return batch["pixel_values"].to(self.device, self.model.dtype)

    @torch.no_grad()
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, head inputs flattened to (N, D)) in one pass."""
        seen = []
        hook = self.head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            logits = self.model(pixel_values=self.pixels(images)).logits
        finally:
            hook.remove()
        return logits.float().cpu(), seen[-1].flatten(1).float().cpu()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (what the classification head reads), (N, D)."""
        return self._forward(images)[1]

    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        """Top-1 is the concept's class; its probability and the top-5 kept beside the verdict."""
        indices = [self.label_index(c) for c in concepts]  # unknown concepts fail before any work
        probs = self._forward(images)[0].softmax(-1)
        top_p, top_i = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1)
        out = []
        for p, ps, js, index in zip(probs, top_p.tolist(), top_i.tolist(), indices):
            out.append(
                {
                    "present": js[0] == index,
                    "label": self.id2label[index],
                    "label_index": index,
                    "prob": float(p[index]),
                    "top5": [{"index": j, "label": self.id2label[j], "prob": q} for j, q in zip(js, ps)],
                }
            )
        return out
