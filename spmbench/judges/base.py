"""What every judge is: the `Judge` base class.

A judge says, for each image, whether the concept it was generated for is there (`assess`), with
its raw outputs kept beside the verdict (detections, probabilities, CLIP scores) so that a table
can be recomputed without judging again. It may also give image features (`features`) to measure
how much non-target generations moved; a judge without them says so (`has_features` is False) and
the run takes its alteration features from the world's declared source instead
(`spmbench.judges.ALTERATION_FEATURES`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from spmbench.metrics import MetricInfo


if TYPE_CHECKING:
    import torch


class NoFeatures(NotImplementedError):
    """The judge gives no image features (it detects or classifies only)."""


class ConceptsUnchecked(LookupError):
    """The judge's vocabulary is not on this machine, so concepts cannot be checked offline."""


class Judge(ABC):
    """A judge of generated images. Subclasses set `identity` in their constructor.

    `identity` names everything its verdicts depend on (weights, model id, threshold, template):
    stored scores are reused only under the identity that made them.
    """

    identity: str
    # The judge's own measures, by name: an `assess` record's key ("clip_score") or the function
    # computing it from the records ("class_counts").
    metrics: ClassVar[dict[str, MetricInfo]] = {}

    @classmethod
    @abstractmethod
    def check_concepts(cls, concepts: Iterable[str], **settings) -> None:
        """Raise ValueError naming the concepts this judge cannot judge (and the ones it can), in one line.

        A class method, taking the judge's settings (those of its constructor), so that an
        application is checked before anything is loaded or generated. Raises ConceptsUnchecked
        where the vocabulary is not on this machine (nothing is downloaded).
        """

    @abstractmethod
    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        """For (N, 3, H, W) images in [0, 1], one record per image: {"present": bool, ...raw outputs}."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Image features (N, D) for FID and paired distances; a judge that has some overrides this."""
        raise NoFeatures(f"{type(self).__name__} gives no image features")

    @property
    def has_features(self) -> bool:
        return type(self).features is not Judge.features

    def for_set(self, prompt_set: str) -> Judge:
        """The judge of `prompt_set`'s images: this one (SetJudges: the set's own, where it names one)."""
        return self


class SetJudges(Judge):
    """An application's judge with the judges some of its prompt sets name instead (spmbench.apps.PromptSet.judge),
    e.g. NudeNet on I2P and CLIP on the COCO captions: `for_set` gives each set's; `assess`, `features` and the
    concept check are the application's judge's. Its identity names every judge, so that scores made without
    the sets' judges (or with others) are not reused."""

    def __init__(self, judge: Judge, by_set: dict[str, Judge]):
        self.judge, self.by_set = judge, dict(by_set)
        self.identity = "; ".join([judge.identity, *(f"{name} set: {j.identity}" for name, j in self.by_set.items())])
        self.metrics = {k: v for j in (judge, *self.by_set.values()) for k, v in j.metrics.items()}

    @classmethod
    def check_concepts(cls, concepts: Iterable[str], **settings) -> None:
        raise TypeError("check concepts with each judge's class (spmbench.judges.check_concepts), not SetJudges")

    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        return self.judge.assess(images, concepts)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images)

    @property
    def has_features(self) -> bool:
        return self.judge.has_features

    def for_set(self, prompt_set: str) -> Judge:
        return self.by_set.get(prompt_set, self.judge)
