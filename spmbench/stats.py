"""95 % intervals for the tables, and paired comparisons between two erasers.

- A rate over images that each have their own prompt: the Wilson score interval.
- A rate over images that share prompts (several seeds per prompt): a percentile bootstrap over
  prompts (clusters), since images of one prompt are not independent. At 0 % or 100 % every
  resample gives the same rate and the bootstrap collapses to a point; there the interval is
  Wilson's over the number of prompts, which counts each prompt as one observation (conservative:
  the effective sample size of clustered images lies between the prompts and the images).
- Paired feature distance and FID: a percentile bootstrap over prompts, recomputing the statistic
  on each resample (same prompts on both sides: the pairs stay pairs).
- The difference between two erasers' rates on the same prompts and seeds: a paired percentile
  bootstrap over prompts; it holds at 95 % when its interval excludes 0, else it is a tie.

Resamples are drawn from a generator seeded with SEED, so tables are byte-reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5 % quantile
BOOTSTRAPS = 1000
SEED = 0

WILSON = "wilson"
CLUSTER_BOOTSTRAP = "cluster bootstrap"
WILSON_OVER_PROMPTS = "wilson over prompts"  # a clustered rate at 0 % or 100 %


@dataclass(frozen=True)
class Interval:
    """A statistic with its 95 % interval, the images (n) and prompts (n_prompts) it was measured on."""

    value: float
    lo: float
    hi: float
    n: int
    n_prompts: int
    method: str


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `n`."""
    if n <= 0:
        raise ValueError(f"a rate needs at least one observation, got n={n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_codes(clusters: Sequence) -> np.ndarray:
    """Each item's cluster as an integer 0..C-1, in order of first appearance (labels of any type)."""
    index: dict = {}
    return np.array([index.setdefault(c, len(index)) for c in clusters], dtype=np.int64)


def resample_weights(codes: np.ndarray, bootstraps: int = BOOTSTRAPS, seed: int = SEED) -> np.ndarray:
    """(bootstraps, N) item weights: each row draws the C clusters with replacement, and an item
    weighs as often as its cluster was drawn."""
    n_clusters = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=bootstraps)
    return counts[:, codes].astype(np.float64)


def _percentiles(stats: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def rate_interval(present: Sequence[bool], clusters: Sequence, seed: int = SEED) -> Interval:
    """The judged-present rate of `present`, images grouped by prompt in `clusters` (see the module)."""
    x = np.asarray(present, dtype=np.float64)
    if len(x) == 0 or len(x) != len(clusters):
        raise ValueError(f"a rate needs one prompt per image and at least one image, got {len(x)} and {len(clusters)}")
    codes = cluster_codes(clusters)
    n, n_prompts = len(x), int(codes.max()) + 1
    value = float(x.mean())
    if n_prompts == n:
        return Interval(value, *wilson(int(x.sum()), n), n, n_prompts, WILSON)
    if value in (0.0, 1.0):
        return Interval(value, *wilson(round(value * n_prompts), n_prompts), n, n_prompts, WILSON_OVER_PROMPTS)
    w = resample_weights(codes, seed=seed)
    return Interval(value, *_percentiles(w @ x / w.sum(1)), n, n_prompts, CLUSTER_BOOTSTRAP)


def mean_interval(values: Sequence[float], clusters: Sequence, seed: int = SEED) -> Interval:
    """The mean of per-image `values` (e.g. paired feature distances), bootstrapped over prompts."""
    x = np.asarray(values, dtype=np.float64)
    codes = cluster_codes(clusters)
    w = resample_weights(codes, seed=seed)
    return Interval(float(x.mean()), *_percentiles(w @ x / w.sum(1)), len(x), int(codes.max()) + 1, CLUSTER_BOOTSTRAP)


def paired_difference(a: Sequence[bool], b: Sequence[bool], clusters: Sequence, seed: int = SEED) -> Interval:
    """rate(a) - rate(b) on the same images (same prompt and seed, row-aligned), bootstrapped over prompts."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return mean_interval(d, clusters, seed)


def holds(difference: Interval) -> bool:
    """Whether a difference holds at 95 %: its interval excludes 0 (else it is a tie)."""
    return difference.lo > 0 or difference.hi < 0


def fid_interval(a, b, clusters: Sequence, seed: int = SEED, chunk: int = 100) -> Interval:
    """FID between row-aligned features `a` and `b` (N, D), bootstrapped over prompts: each resample
    takes the same rows on both sides and recomputes FID (weighted means and covariances, batched)."""
    import torch

    from spmbench.metrics import frechet_distance

    value = frechet_distance(a, b)
    codes = cluster_codes(clusters)
    w = torch.from_numpy(resample_weights(codes, seed=seed))
    shift = a.double().mean(0)  # FID is unchanged by a common shift; centring keeps the moments accurate
    a, b = a.double() - shift, b.double() - shift
    stats = torch.cat([_weighted_fid(w[i : i + chunk], a, b) for i in range(0, len(w), chunk)])
    return Interval(value, *_percentiles(stats.numpy()), len(a), int(codes.max()) + 1, CLUSTER_BOOTSTRAP)


def _weighted_moments(w, x):
    """Per row of weights w (B, N): the weighted mean (B, D) and unbiased covariance (B, D, D) of x (N, D)."""
    import torch

    n = w.sum(1)
    mean = w @ x / n[:, None]
    second = torch.einsum("bn,nd,ne->bde", w, x, x)
    cov = (second - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1)[:, None, None]
    return mean, cov


def _weighted_fid(w, a, b):
    """metrics.frechet_distance for each row of weights, batched: (B,)."""
    import torch

    mu_a, cov_a = _weighted_moments(w, a)
    mu_b, cov_b = _weighted_moments(w, b)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp(min=0).sqrt()[:, None, :]) @ vectors.transpose(1, 2)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum(1)
    trace = lambda m: m.diagonal(dim1=1, dim2=2).sum(1)  # noqa: E731
    return (mu_a - mu_b).pow(2).sum(1) + trace(cov_a) + trace(cov_b) - 2 * cross
