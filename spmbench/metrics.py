"""Metrics and what they mean: each one's `MetricInfo` (table name, unit, direction) sits beside it.

- Rates: how often the judge sees the concept; on erasure sets (target, implicit) lower is better,
  on the others (erosion) higher.
- Alteration of non-target generations against the original model's, same prompt and seed:
  paired feature distance and FID, both on image features (the judge's, or the run's declared
  feature source when the judge has none).
- Fitting cost: time and peak memory (reported, not ranked).

torch is imported where used, so that reading the metadata (the CLI, reports) stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MetricInfo:
    """What a number in a table is: its column name, its unit, and which way is better.

    `higher_is_better` None: a quantity reported for information (a cost), with no arrow.
    """

    name: str
    unit: str = ""
    higher_is_better: bool | None = None

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]

    @property
    def header(self) -> str:
        """The column title: 'name (unit) arrow', each part only where there is one."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.name}{unit}" + (f" {self.arrow}" if self.arrow else "")


ERASURE_RATE = MetricInfo("judged-present rate on an erasure set", "%", higher_is_better=False)
EROSION_RATE = MetricInfo("judged-present rate on a kept set", "%", higher_is_better=True)
PAIRED_DISTANCE = MetricInfo("paired dist.", higher_is_better=False)
FID = MetricInfo("FID", higher_is_better=False)
FIT_SECONDS = MetricInfo("fit", "s")
FIT_MEMORY = MetricInfo("fit mem.", "MiB")

# The keys under which a result stores its alteration measures, with what they are.
ALTERATION: dict[str, MetricInfo] = {"paired_feature_distance": PAIRED_DISTANCE, "fid_judge_features": FID}

# A cell's per-image alteration features (its own and the original's, row-aligned): what the
# report's bootstrap intervals of the paired distance and FID resample.
ALTERATION_FEATURES_FILE = "alteration_features.safetensors"


def rate_info(prompt_set: str, erasure_sets: tuple[str, ...]) -> MetricInfo:
    """A prompt set's judged-present rate: erasure sets want it low, the others high."""
    return ERASURE_RATE if prompt_set in erasure_sets else EROSION_RATE


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (N, D): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

    Computed in float64 with symmetric eigendecompositions (no scipy); exact for PSD covariances.
    One implementation with the bootstrap's: `stats.weighted_fid` under unit weights.

    Why not torchmetrics' FrechetInceptionDistance (the maintained FID, `torchmetrics_fid`), which this
    equals to 1e-12 where images outnumber dimensions (tests/spmbench/test_metrics.py): it cannot weigh
    rows, which the bootstrap intervals need (`stats.fid_interval` resamples by weights, batched), and
    the point value must come from the same implementation as its resamples (the interval is shifted
    by their mean excess over it); and where images are fewer than dimensions (72 images in 192-D)
    its eigenvalues of S_a S_b are ~1e-8 off and the FID of a set with itself is -7e-6, where this is
    exact (tested against an SVD reference).
    """
    import torch

    from spmbench.stats import weighted_fid

    a, b = a.double(), b.double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 samples on each side")
    if a.shape != b.shape:
        raise ValueError(f"FID here takes row-aligned features, got {tuple(a.shape)} and {tuple(b.shape)}")
    shift = a.mean(0)  # FID is unchanged by a common shift; centring keeps the moments accurate
    return float(weighted_fid(torch.ones(1, len(a), dtype=torch.float64), a - shift, b - shift)[0])


def torchmetrics_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics' FrechetInceptionDistance on given features (N, D), in float64: the maintained
    reference `frechet_distance` is tested against. Its feature extractor is the identity."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_given_features(a.shape[1]))
    metric.update(a.double(), real=True)
    metric.update(b.double(), real=False)
    return float(metric.compute().to(torch.float64))


def _given_features(dims: int):
    """An identity nn.Module announcing `dims` features: torchmetrics' image metrics then take
    precomputed features in place of images (no torchvision, no torch-fidelity)."""
    import torch

    class GivenFeatures(torch.nn.Module):
        num_features = dims

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    return GivenFeatures()


def paired_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean L2 distance between row-aligned features (same prompt, same seed)."""
    if a.shape != b.shape:
        raise ValueError(f"paired features must align, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.double() - b.double()).norm(dim=1).mean())


def save_alteration_features(path: Path, prompt_ids: list[str], erased: torch.Tensor, original: torch.Tensor) -> None:
    """The features a cell's alteration was measured on, row-aligned by `prompt_ids`, written atomically."""
    from spm.files import save_safetensors_atomic

    tensors = {"erased": erased.contiguous(), "original": original.contiguous()}
    save_safetensors_atomic(tensors, path, {"prompt_ids": json.dumps(prompt_ids)})


def load_alteration_features(path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
    """(prompt_ids, erased, original) as saved, or None where the file is missing or unreadable
    (a run made before the features were kept: `spmbench run` on it again writes them)."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            ids = json.loads((f.metadata() or {})["prompt_ids"])
            erased, original = f.get_tensor("erased"), f.get_tensor("original")
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    if not isinstance(ids, list) or not len(ids) == len(erased) == len(original):
        return None
    return ids, erased, original
