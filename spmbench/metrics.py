"""Metrics and what they mean: each one's `MetricInfo` (table name, unit, direction) sits beside it.

- Rates: how often the judge sees the concept; on erasure sets (target, implicit) lower is better,
  on the others (erosion) higher.
- Alteration of non-target generations against the original model's, same prompt and seed:
  paired feature distance and FID, both on image features (the judge's, or the run's declared
  feature source when the judge has none). On real models with the vision extra installed
  (torchvision and torch-fidelity), the features are the FID-standard Inception-v3's (torchmetrics)
  and LPIPS (torchmetrics) is measured beside them; without it, CLIP image features stand in and
  the table says so (`implementation_note`). On real models the tables add KID (`kernel_distance`)
  on the same stored features, as FID is computed on them: one implementation each, tested equal to
  torchmetrics' FrechetInceptionDistance and KernelInceptionDistance on the same features.
- Counts (NudeNet's per-class counts): an exact Poisson interval (`poisson_interval`).
- Fitting cost: time and peak memory (reported, not ranked).

torch is imported where used, so that reading the metadata (the CLI, reports) stays light.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch

    from spmbench.stats import Interval


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

LPIPS = MetricInfo("LPIPS", higher_is_better=False)
KID = MetricInfo("KID", higher_is_better=False)

# The keys under which a result stores its alteration measures, with what they are.
ALTERATION: dict[str, MetricInfo] = {"paired_feature_distance": PAIRED_DISTANCE, "fid_judge_features": FID}
# Measured only where the vision extra is installed: a table shows their columns only where some
# result has them, so that the tables made without it keep theirs.
OPTIONAL_ALTERATION: dict[str, MetricInfo] = {"kid_judge_features": KID, "lpips": LPIPS}
# KID's polynomial kernel k(x, y) = (x.y / D + coef)^degree: torchmetrics' defaults, Binkowski et al.'s
KID_DEGREE, KID_COEF = 3, 1.0

# The vision extra: import name -> distribution name. torchmetrics' Inception-v3 is torch-fidelity's
# port of the TensorFlow FID network; its LPIPS runs torchvision's AlexNet.
VISION_PACKAGES = {"torchvision": "torchvision", "torch_fidelity": "torch-fidelity"}
# "off": the CLIP-feature fallback even where the extra is installed (e.g. offline: its weights are
# downloaded on first use); "on": the extra is required; unset: used wherever installed.
VISION_SWITCH = "SPMBENCH_VISION"
INSTALL_VISION = "pip install 'spm-erasing[vision]' (with the torchvision build matching your torch)"
LPIPS_NET = "alex"  # LPIPS' own default and the published artist-erasing evaluations'

# A cell's per-image alteration features (its own and the original's, row-aligned): what the
# report's bootstrap intervals of the paired distance and FID resample.
ALTERATION_FEATURES_FILE = "alteration_features.safetensors"
PER_IMAGE_FILE = "alteration_per_image.safetensors"  # per-image LPIPS, where measured, row-aligned with them


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


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID between row-aligned feature sets (N, D): the unbiased MMD^2 of all N images under the cubic
    polynomial kernel (x.y / D + 1)^3, in float64. torchmetrics' KernelInceptionDistance averages it
    over random subsets of `subset_size` images; with one subset of all N it is this (`torchmetrics_kid`,
    tested). One implementation with the bootstrap's (`kid_interval`): all images as one cluster drawn once.
    """
    import torch

    _check_kid_features(a, b)
    sums = _kernel_sums(a, b, torch.zeros(len(a), dtype=torch.long))
    return float(_kid_of_draws(torch.ones(1, 1, dtype=torch.float64), sums)[0])


def torchmetrics_kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics' KernelInceptionDistance on given features (N, D), in float64, with one subset of all
    N images: the maintained reference `kernel_distance` is tested against."""
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=_given_features(a.shape[1]), subsets=1, subset_size=len(a))
    metric.update(a.double(), real=True)
    metric.update(b.double(), real=False)
    return float(metric.compute()[0])


def kid_interval(a: torch.Tensor, b: torch.Tensor, clusters, seed: int | None = None) -> Interval:
    """KID (`kernel_distance`) with its 95 % interval: a percentile bootstrap over prompts with FID's
    resamples (stats.resample_weights over the same clusters and seed; FID's blocks of prompts where the
    prompts' kernel sums would exceed stats.MOMENT_BUDGET). In a resample, pairs of an image with a copy
    of itself are left out of the within-set sums, as the unbiased estimator leaves out i = j; the
    percentiles are shifted by the resamples' mean excess over the KID, as FID's are. Returns stats.Interval.
    """
    import numpy as np
    import torch

    from spmbench import stats

    _check_kid_features(a, b)
    prompt_codes = stats.cluster_codes(clusters)
    n_prompts, method = int(prompt_codes.max()) + 1, stats.SHIFTED_BOOTSTRAP
    codes = prompt_codes
    if 3 * n_prompts**2 * 8 > stats.MOMENT_BUDGET:  # three C x C float64 sums
        blocks = min(stats.MOMENT_BLOCKS, n_prompts)
        codes, method = (
            prompt_codes * blocks // n_prompts,
            f"{stats.SHIFTED_BOOTSTRAP} over {blocks} blocks of prompts",
        )
    weights = stats.resample_weights(codes, seed=stats.SEED if seed is None else seed)
    draws = torch.from_numpy(weights[:, np.unique(codes, return_index=True)[1]])  # (B, C): each cluster's draws
    # torch's threads as set: unlike fid_interval's small eigendecompositions, these are large matrix products
    sums = _kernel_sums(a, b, torch.from_numpy(codes))
    value = float(_kid_of_draws(torch.ones(1, draws.shape[1], dtype=torch.float64), sums)[0])
    resampled = _kid_of_draws(draws, sums).numpy()
    bias = float(resampled.mean()) - value
    lo, hi = np.quantile(resampled, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2])
    return stats.Interval(value, float(lo) - bias, float(hi) - bias, len(a), n_prompts, method)


def _check_kid_features(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"KID here takes row-aligned features (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2:
        raise ValueError("KID needs at least 2 samples on each side")


def _kernel_sums(a: torch.Tensor, b: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """KID's kernel sums by cluster (`codes`: each row's, 0..C-1): 'aa', 'bb', 'ab' (C, C), the sums of
    k(a_i, b_j) over the rows of each pair of clusters; 'a', 'b' (C,), each cluster's k(a_i, a_i); 'n' (C,)
    its rows. Rows are taken in chunks: no N x N matrix is held."""
    import torch

    a, b = a.double(), b.double()
    n_clusters, gamma = int(codes.max()) + 1, 1.0 / a.shape[1]

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.T * gamma + KID_COEF) ** KID_DEGREE

    sums = {key: torch.zeros(n_clusters, n_clusters, dtype=torch.float64) for key in ("aa", "bb", "ab")}
    chunk = max(1, int(2e7 // len(a)))  # rows at once: about 160 MB of kernel values
    for start in range(0, len(a), chunk):
        rows = slice(start, start + chunk)
        for key, x, y in (("aa", a, a), ("bb", b, b), ("ab", a, b)):
            by_column = torch.zeros(len(x[rows]), n_clusters, dtype=torch.float64).index_add_(
                1, codes, kernel(x[rows], y)
            )
            sums[key].index_add_(0, codes[rows], by_column)
    for key, x in (("a", a), ("b", b)):
        sums[key] = torch.zeros(n_clusters, dtype=torch.float64).index_add_(
            0, codes, ((x * x).sum(1) * gamma + KID_COEF) ** KID_DEGREE
        )
    sums["n"] = torch.bincount(codes, minlength=n_clusters).double()
    return sums


def _kid_of_draws(draws: torch.Tensor, sums: dict[str, torch.Tensor]) -> torch.Tensor:
    """The unbiased MMD^2 under each row of cluster draws (B, C): an image drawn w times counts w times;
    within a set, pairs of an image with itself or its copies are left out (with every draw 1: the
    U-statistic over i != j); across the sets, every pair counts, i = j too (torchmetrics' estimator)."""
    m = draws @ sums["n"]
    squares = draws.pow(2)
    pairs = m * m - squares @ sums["n"]  # ordered pairs of distinct images

    def quadratic(key: str) -> torch.Tensor:
        return ((draws @ sums[key]) * draws).sum(1)

    within_a = (quadratic("aa") - squares @ sums["a"]) / pairs
    within_b = (quadratic("bb") - squares @ sums["b"]) / pairs
    return within_a + within_b - 2 * quadratic("ab") / (m * m)


def poisson_interval(count: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Garwood) interval of a Poisson mean from one observed `count`: the (1 - level) / 2
    quantile of Gamma(count) and the (1 + level) / 2 quantile of Gamma(count + 1) (0 below for 0)."""
    if count < 0 or int(count) != count:
        raise ValueError(f"a count must be a whole number >= 0, got {count}")
    tail = (1 - level) / 2
    lower = 0.0 if count == 0 else _gamma_quantile(count, tail)
    return lower, _gamma_quantile(count + 1, 1 - tail)


def _gamma_quantile(shape: float, p: float) -> float:
    """The p quantile of Gamma(shape, 1), by bisection on torch's regularized incomplete gamma (no scipy)."""
    import math

    import torch

    a = torch.tensor(float(shape), dtype=torch.float64)
    lo, hi = 0.0, shape + 12 * math.sqrt(shape) + 12  # far beyond the 99.9 % quantile
    for _ in range(100):  # halves 1e5 down to below float64's resolution
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi) if float(torch.special.gammainc(a, torch.tensor(mid, dtype=torch.float64))) < p else (lo, mid)
        )
    return (lo + hi) / 2


def paired_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean L2 distance between row-aligned features (same prompt, same seed)."""
    if a.shape != b.shape:
        raise ValueError(f"paired features must align, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.double() - b.double()).norm(dim=1).mean())


def alteration_intervals(
    erased: torch.Tensor,
    original: torch.Tensor,
    clusters: list,
    per_image: dict[str, torch.Tensor] | None = None,
    kid: bool = False,
) -> dict[str, Interval]:
    """The 95 % intervals of a cell's alteration measures from its row-aligned features (and per-image
    measures such as LPIPS), bootstrapped over `clusters` (one per prompt: the images of its seeds):
    the runner keeps them in result.json, so a table needs no features; the report computes them from
    the stored features for results made before. KID (`kid`: real models) needs at least 2 images, as FID."""
    from spmbench import stats

    distances = (erased.double() - original.double()).norm(dim=1).numpy()
    out = {"paired_feature_distance": stats.mean_interval(distances, clusters)}
    if len(erased) >= 2:
        out["fid_judge_features"] = stats.fid_interval(erased, original, clusters)
        if kid:
            out["kid_judge_features"] = kid_interval(erased, original, clusters)
    for key, values in (per_image or {}).items():
        out[key] = stats.mean_interval(values.double().numpy(), clusters)
    return out


def measures_kid(world: str) -> bool:
    """KID is reported on real models (Inception or CLIP features), not on the toy worlds' judge features."""
    return not world.startswith("toy")


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


def save_per_image(path: Path, measures: dict[str, torch.Tensor]) -> None:
    """Per-image alteration measures (LPIPS), row-aligned with the cell's alteration features: what
    the report's intervals of their means resample. Nothing is written where there are none."""
    from spm.files import save_safetensors_atomic

    if measures:
        save_safetensors_atomic({k: v.contiguous() for k, v in measures.items()}, path, {})


def load_per_image(path: Path) -> dict[str, torch.Tensor]:
    """The per-image measures saved beside a cell's features (none where the file is missing or unreadable)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError):
        return {}


# ---- the vision extra ----------------------------------------------------------------------------


def vision_missing() -> list[str]:
    """The vision extra's distributions not installed here (checked without importing them)."""
    return [dist for module, dist in VISION_PACKAGES.items() if importlib.util.find_spec(module) is None]


def use_vision() -> bool:
    """Whether real-model alteration is measured by the vision extra (Inception-v3 features, LPIPS).

    Raises:
        ImportError: SPMBENCH_VISION=on and the extra is not installed (in one line, with the fix).
        ValueError: SPMBENCH_VISION is neither on, off nor unset.
    """
    switch = os.environ.get(VISION_SWITCH, "").strip().lower()
    if switch not in ("", "on", "off"):
        raise ValueError(f"{VISION_SWITCH} must be 'on', 'off' or unset, not {switch!r}")
    if switch == "off":
        return False
    if switch == "on":
        require_vision(f"{VISION_SWITCH}=on")
    return not vision_missing()


def require_vision(what: str) -> None:
    """Raise ImportError in one line where the vision extra `what` needs is not installed."""
    missing = vision_missing()
    if missing:
        raise ImportError(f"{what} needs the vision extra ({', '.join(missing)} not installed): {INSTALL_VISION}")


def package_version(name: str) -> str:
    """The installed version of a distribution, or 'not installed'."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def inception_identity() -> str:
    """What the Inception-v3 features and LPIPS are, with the versions that make them (stored with each result)."""
    versions = ", ".join(f"{d} {package_version(d)}" for d in ("torchmetrics", *VISION_PACKAGES.values()))
    return f"inception-v3-compat 2048-D pool features, LPIPS {LPIPS_NET} ({versions})"


def lpips_distances(erased: torch.Tensor, original: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Per-image LPIPS (N,) of row-aligned (N, 3, H, W) images in [0, 1]: torchmetrics'
    LearnedPerceptualImagePatchSimilarity (AlexNet, reduction none)."""
    require_vision("LPIPS")
    import torch
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    if erased.shape != original.shape:
        raise ValueError(f"LPIPS takes row-aligned images, got {tuple(erased.shape)} and {tuple(original.shape)}")
    metric = LearnedPerceptualImagePatchSimilarity(net_type=LPIPS_NET, reduction="none", normalize=True).to(device)
    with torch.no_grad():
        metric.update(erased.float().to(device), original.float().to(device))
        return metric.compute().reshape(-1).double().cpu()  # one image comes back 0-d


def implementation_note(
    feature_sources: Iterable[str], packages: dict[str, str] | None = None, kid: bool = False
) -> str:
    """The caption's sentence naming each alteration measure's implementation and versions, from the
    feature sources the results were measured on (`Result.alteration_features`) and the package
    versions that made them (`Result.meta["packages"]`; the installed ones where not recorded);
    `kid`: the table has KID, measured on the same features (`alteration_intervals`)."""
    packages = packages or {}

    def named(dist: str) -> str:
        return f"{dist} {packages.get(dist) or package_version(dist)}"

    ours = (
        "spmbench.metrics.frechet_distance (float64, exact where images are fewer than dimensions; equal to "
        f"torchmetrics {package_version('torchmetrics')} FrechetInceptionDistance on the same features, tested)"
    )
    parts = []
    for source in sorted(set(feature_sources)):
        if source.startswith("inception-v3"):
            parts.append(
                f"FID, paired dist. and LPIPS (torchmetrics' LearnedPerceptualImagePatchSimilarity) from {source}; "
                f"FID computed by {ours}"
            )
        elif source.startswith("clip "):
            parts.append(
                f"FID and paired dist. on {source.split(',')[0]} image features ({named('transformers')}; fallback: "
                f"the vision extra is not installed or {VISION_SWITCH}=off, so no Inception FID and no LPIPS), "
                f"FID computed by {ours}"
            )
        else:
            parts.append(f"FID and paired dist. on {source}'s image features, FID computed by {ours}")
    if parts:
        parts.append("paired dist.: the mean L2 distance of same-seed features (spmbench.metrics.paired_distance)")
    if parts and kid:
        parts.append(KID_NOTE.format(torchmetrics=package_version("torchmetrics")))
    return "alteration measures: " + "; ".join(parts) if parts else ""


KID_NOTE = (
    "KID on the same features, by spmbench.metrics.kernel_distance (the unbiased MMD^2 of all images under the "
    "kernel (x.y/D + 1)^3; equal to torchmetrics {torchmetrics} KernelInceptionDistance with one subset of all "
    "images on the same features, tested), its 95 % interval a percentile bootstrap over prompts on FID's "
    "resamples (an image's pairs with its own copies left out of the within-set sums), shifted by the "
    "resamples' mean excess as FID's"
)
# What runs each judge (by the first word of its identity), named with its version in the caption.
JUDGE_PACKAGES = {
    "nudenet": ("its bundled 320n ONNX detector", "onnxruntime"),
    "clip": ("CLIP accuracy: the concept's text closer to the image than the empty string's", "transformers"),
    "imagenet": ("top-1 class", "transformers"),
}


def code_note(packages: dict[str, str] | None = None, code: str | None = None) -> str:
    """The caption's sentence naming the version of this project's own computations (intervals, FID, KID,
    paired distance, counts, fit cost): the spm-erasing version and the code's commit recorded with the results."""
    named = (packages or {}).get("spm-erasing") or package_version("spm-erasing")
    return (
        f"intervals (spmbench.stats), counts, FID, KID and paired dist. computed by spmbench (spm-erasing {named}"
        + (f", code {code}" if code else "")
        + "); fit cost by spmbench.cost (torch.cuda.max_memory_allocated on a GPU, psutil's resident set size on CPU)"
    )


def judge_note(identity: str | None, packages: dict[str, str] | None = None) -> str:
    """The caption's sentence naming the judge of the rates: its identity as recorded with the run
    (model id or version, threshold or template) and the package that runs it, with its version."""
    if not identity:
        return ""
    # spmbench.judges.base.SetJudges: "<the application's judge>; <set> set: <its judge>; ..."
    return "rates judged by " + "; ".join(_judge_named(part, packages) for part in identity.split("; "))


def _judge_named(identity: str, packages: dict[str, str] | None) -> str:
    """One judge's identity with the package that runs it, and its version."""
    judge = identity.split(": ", 1)[1] if " set: " in identity else identity
    what, dist = JUDGE_PACKAGES.get(judge.split()[0], ("", ""))
    runs_on = f" ({what}; {dist} {(packages or {}).get(dist) or package_version(dist)})" if dist else ""
    return f"{identity}{runs_on}"
