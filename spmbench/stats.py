"""95 % intervals for the tables, and paired comparisons between two erasers.

- A rate over images that each have their own prompt: the Wilson score interval.
- A rate over images that share prompts (several seeds per prompt): a percentile bootstrap over
  prompts (clusters), since images of one prompt are not independent. At 0 % or 100 % every
  resample gives the same rate and the bootstrap collapses to a point; there the interval is
  Wilson's over the number of prompts, which counts each prompt as one observation (conservative:
  the effective sample size of clustered images lies between the prompts and the images). With
  fewer than FEW_PROMPTS prompts the percentile bootstrap is too narrow (simulated coverage 69 % at
  3 prompts x 4 seeds, 79 % at 4 x 3): there the interval is the union of the bootstrap's and
  Wilson's over the prompts.
- Paired feature distance and FID: a percentile bootstrap over prompts, recomputing the statistic
  on each resample (same prompts on both sides: the pairs stay pairs). A resample repeats images,
  which shrinks the covariances' rank and inflates FID (by a third in 192 dimensions from 800
  images, enough for the percentiles to exclude the FID measured); FID's percentiles are shifted
  back by that bias, the bootstrap's estimate of the FID's own.
- The difference between two erasers' rates on the same prompts and seeds: a paired percentile
  bootstrap over prompts; it holds at 95 % when its interval excludes 0, else it is a tie. Where
  every prompt shows the same difference the bootstrap collapses; there each prompt is one vote
  (`paired_difference`). Whatever the branch, no difference holds from fewer than
  MIN_PROMPTS_TO_HOLD prompts, so that more evidence never turns a difference into a tie.

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
SHIFTED_BOOTSTRAP = "cluster bootstrap, bias-shifted"  # FID
# FID's per-prompt second moments beyond this many bytes: prompts resampled in at most MOMENT_BLOCKS blocks
MOMENT_BUDGET = 2**30
MOMENT_BLOCKS = 64
PROMPT_VOTES = "wilson over prompts agreeing"  # a paired difference the same on every prompt
UNION_WITH_WILSON = "cluster bootstrap or wilson over prompts"  # a clustered rate from few prompts
# Below this many prompts a percentile bootstrap over prompts undercovers (it sees only C distinct
# values per resample); rates then widen to Wilson over the prompts.
FEW_PROMPTS = 10
# The fewest prompts a paired difference can hold from: 5 prompts agreeing are the fewest whose
# votes hold with a margin (Wilson lower bound 0.57; 4 give 0.51). Applied to the bootstrap too,
# else 2 prompts differing by (1, 0.5) held while 3 prompts all differing by 1 tied.
MIN_PROMPTS_TO_HOLD = 5
TOO_FEW_PROMPTS = "too few prompts to hold"  # suffix of the method of a difference widened to 0


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
    lo, hi = _percentiles(w @ x / w.sum(1))
    if n_prompts < FEW_PROMPTS:
        # Few prompts: the bootstrap's percentiles covered a true rate only 69 % of the time at 3
        # prompts x 4 seeds (every toy app has 3-4 target prompts); Wilson over the prompts, each
        # prompt one observation, is the conservative bound, so take whichever end is wider.
        wilson_lo, wilson_hi = wilson(round(value * n_prompts), n_prompts)
        return Interval(value, min(lo, wilson_lo), max(hi, wilson_hi), n, n_prompts, UNION_WITH_WILSON)
    return Interval(value, lo, hi, n, n_prompts, CLUSTER_BOOTSTRAP)


def mean_interval(values: Sequence[float], clusters: Sequence, seed: int = SEED) -> Interval:
    """The mean of per-image `values` (e.g. paired feature distances), bootstrapped over prompts."""
    x = np.asarray(values, dtype=np.float64)
    codes = cluster_codes(clusters)
    w = resample_weights(codes, seed=seed)
    return Interval(float(x.mean()), *_percentiles(w @ x / w.sum(1)), len(x), int(codes.max()) + 1, CLUSTER_BOOTSTRAP)


def paired_difference(a: Sequence[bool], b: Sequence[bool], clusters: Sequence, seed: int = SEED) -> Interval:
    """rate(a) - rate(b) on the same images (same prompt and seed, row-aligned), bootstrapped over prompts.

    Where every prompt shows the same difference d, every resample does too and the bootstrap
    collapses to [d, d]; there each prompt counts as one vote for d's direction: the interval is
    d times [2 q - 1, 1], q the Wilson lower bound of C agreeing prompts out of C. In either case,
    from fewer than MIN_PROMPTS_TO_HOLD prompts the interval is widened to reach 0: a tie.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    codes = cluster_codes(clusters)
    per_prompt = np.bincount(codes, weights=d) / np.bincount(codes)
    if d.any() and np.all(per_prompt == per_prompt[0]):
        n_prompts = len(per_prompt)
        ends = sorted(per_prompt[0] * np.array([2 * wilson(n_prompts, n_prompts)[0] - 1, 1.0]))
        interval = Interval(float(d.mean()), float(ends[0]), float(ends[1]), len(d), n_prompts, PROMPT_VOTES)
    else:
        interval = mean_interval(d, clusters, seed)
    return interval if interval.n_prompts >= MIN_PROMPTS_TO_HOLD else _reaching_zero(interval)


def _reaching_zero(interval: Interval) -> Interval:
    """`interval` widened to include 0, so that it cannot hold."""
    lo, hi = min(interval.lo, 0.0), max(interval.hi, 0.0)
    method = f"{interval.method}, {TOO_FEW_PROMPTS}"
    return Interval(interval.value, lo, hi, interval.n, interval.n_prompts, method)


def holds(difference: Interval) -> bool:
    """Whether a difference holds at 95 %: its interval excludes 0 (else it is a tie)."""
    return difference.lo > 0 or difference.hi < 0


def _resampled_units(clusters: Sequence, shape: tuple[int, int], moment_budget: int) -> tuple[np.ndarray, int, str]:
    """What FID's bootstrap resamples for N x D features: (each row's unit, the number of prompts, the method). The
    prompts; or, where their second moments (prompts x D x D float64) would exceed `moment_budget` bytes, blocks of
    consecutive prompts (deterministic), which resample as independent units as the prompts did: COCO-30k in CLIP's
    512-D would need ~63 GB of per-prompt moments, in at most MOMENT_BLOCKS blocks 64 x D x D."""
    prompt_codes = cluster_codes(clusters)
    n_prompts = int(prompt_codes.max()) + 1
    rows, dims = shape
    if rows > dims and n_prompts * dims**2 * 8 > moment_budget:
        blocks = min(MOMENT_BLOCKS, n_prompts)
        return prompt_codes * blocks // n_prompts, n_prompts, f"{SHIFTED_BOOTSTRAP} over {blocks} blocks of prompts"
    return prompt_codes, n_prompts, SHIFTED_BOOTSTRAP


def fid_interval(a, b, clusters: Sequence, seed: int = SEED, moment_budget: int = MOMENT_BUDGET) -> Interval:
    """FID between row-aligned features `a` and `b` (N, D), bootstrapped over prompts: each resample
    takes the same rows on both sides and recomputes FID (weighted means and covariances, batched);
    the percentiles are shifted by the resamples' mean excess over the FID (see the module).

    Where the prompts' second moments (C x D x D float64 per side) would exceed `moment_budget`
    bytes, the prompts are grouped by index into at most MOMENT_BLOCKS blocks, which are resampled.
    """
    import torch

    from spmbench.metrics import frechet_distance

    codes, n_prompts, method = _resampled_units(clusters, a.shape, moment_budget)
    w = torch.from_numpy(resample_weights(codes, seed=seed))
    threads = torch.get_num_threads()
    # One thread: these small decompositions gain nothing from more, and on a busy machine a
    # multithreaded eigh of 192 x 192 took 2.8 s against 0.013 s.
    torch.set_num_threads(1)
    try:
        value = frechet_distance(a, b)
        shift = a.double().mean(0)  # FID is unchanged by a common shift; centring keeps the moments accurate
        a, b = a.double() - shift, b.double() - shift
        codes_t = torch.from_numpy(codes)
        moments = None if len(a) <= a.shape[1] else (_cluster_moments(a, codes_t), _cluster_moments(b, codes_t))
        chunk = max(1, int(2e7 // max(len(a), a.shape[1]) ** 2))  # resamples at once: about 160 MB per array
        parts = [weighted_fid(w[i : i + chunk], a, b, codes_t, moments) for i in range(0, len(w), chunk)]
        stats = torch.cat(parts)
    finally:
        torch.set_num_threads(threads)
    bias = float(stats.mean()) - value
    lo, hi = _percentiles(stats.numpy())
    return Interval(value, max(0.0, lo - bias), hi - bias, len(a), n_prompts, method)


def reference_fid_interval(a, reference, clusters: Sequence, seed: int = SEED, moment_budget: int = MOMENT_BUDGET):
    """FID of features `a` (N, D) against a fixed reference set's (M, D) (real images, not row-aligned),
    bootstrapped over `a`'s prompts only: every resample keeps the whole reference. The value and its resamples
    come from one implementation (`reference_fid`); percentiles shifted as fid_interval's, prompts grouped into
    blocks as there where their moments would exceed `moment_budget`."""
    import torch

    codes, n_prompts, method = _resampled_units(clusters, a.shape, moment_budget)
    w = torch.from_numpy(resample_weights(codes, seed=seed))
    # the value (unit weights: every unit once) in the same call as the resamples: the reference's covariance and
    # its square root are computed once
    measured = reference_fid(
        torch.cat([torch.ones(1, len(a), dtype=w.dtype), w]), a, reference, torch.from_numpy(codes)
    )
    value, stats = float(measured[0]), measured[1:]
    bias = float(stats.mean()) - value
    lo, hi = _percentiles(stats.numpy())
    return Interval(value, max(0.0, lo - bias), hi - bias, len(a), n_prompts, method)


def reference_fid(w, a, reference, codes=None):
    """FID of the rows of `a` (N, D) under each row of weights w (B, N) against the whole of `reference` (M, D):
    (B,), float64. `codes`: the rows' clusters (a row's weight is its cluster's draws; their second moments, C x D x
    D, are then summed once per cluster where rows outnumber dimensions); None: a weight per row, covariances from
    the rows (no per-row moments: 30,000 x D x D would not fit). Tr((S_r^1/2 S_a S_r^1/2)^1/2) from one square root
    of the reference's covariance."""
    import torch

    if len(reference) < 2 or len(a) < 2:
        raise ValueError("FID needs at least 2 samples on each side")
    shift = reference.double().mean(0)  # the reference's mean at 0: FID is unchanged by a common shift
    a, r = a.double() - shift, reference.double() - shift
    cov_r = torch.cov(r.T).reshape(r.shape[1], r.shape[1])
    root_r, trace_r = _sqrtm_psd(cov_r[None])[0], cov_r.trace()
    moments = None if codes is None or len(a) <= a.shape[1] else _cluster_moments(a, codes)
    first = None if moments is None else np.unique(codes.numpy(), return_index=True)[1]
    # resamples at once, about 160 MB per array: B x D x D covariances from moments, else B x N x D weighted rows too
    chunk = max(1, int(2e7 // (a.shape[1] ** 2 if moments is not None else max(len(a), a.shape[1]) ** 2)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fid_interval: small decompositions, faster on one thread
    try:
        parts = []
        for part in w.double().split(chunk):
            n = part.sum(1)
            mu = part @ a / n[:, None]
            cov = (
                _row_weighted_cov(part, a, mu, n) if moments is None else _weighted_cov(part[:, first], moments, mu, n)
            )
            cross = torch.linalg.eigvalsh(root_r @ cov @ root_r).clamp(min=0).sqrt().sum(1)
            parts.append(mu.pow(2).sum(1) + cov.diagonal(dim1=1, dim2=2).sum(1) + trace_r - 2 * cross)
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts)


def weighted_fid(w, a, b, codes=None, moments=None):
    """metrics.frechet_distance under each row of weights w (B, N), batched: (B,). `codes`: the rows'
    clusters (a row's weight is its cluster's draws; default: a cluster per row); `moments`: the
    clusters' second moments of a and b (`_cluster_moments`), computed here if not given.

    Tr((cov_a^1/2 cov_b cov_a^1/2)^1/2) is the sum of the square roots of the eigenvalues of any
    symmetric matrix similar to cov_a cov_b: with fewer rows than dimensions, M M^T for M = C_a C_b^T
    (N x N; C_a the weighted centred rows over sqrt(n - 1), assembled from the Gram matrix a b^T
    and the resample's means); else L^T cov_b L for cov_a = L L^T (Cholesky: a tenth of an eigh's
    cost), or cov_a^1/2 cov_b cov_a^1/2 where cov_a is singular. torch's batched svdvals on CPU is
    some 50x slower than these eigvalsh.
    """
    import torch

    n = w.sum(1)
    mu_a, mu_b = w @ a / n[:, None], w @ b / n[:, None]
    trace_a = (w @ a.pow(2).sum(1) - n * mu_a.pow(2).sum(1)) / (n - 1)
    trace_b = (w @ b.pow(2).sum(1) - n * mu_b.pow(2).sum(1)) / (n - 1)
    if a.shape[0] <= a.shape[1]:
        centred = (a @ b.T)[None] - (mu_b @ a.T)[:, :, None] - (mu_a @ b.T)[:, None, :]
        centred += (mu_a * mu_b).sum(1)[:, None, None]
        root_w = w.sqrt()
        m = root_w[:, :, None] * centred * root_w[:, None, :] / (n - 1)[:, None, None]
        inner = m @ m.transpose(1, 2)
    else:
        cov_a, cov_b = _covariances(w, a, b, mu_a, mu_b, n, codes, moments)
        lower, info = torch.linalg.cholesky_ex(cov_a)
        inner = lower.transpose(1, 2) @ cov_b @ lower
        singular = info != 0
        if singular.any():
            root = _sqrtm_psd(cov_a[singular])
            inner[singular] = root @ cov_b[singular] @ root
    cross = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum(1)
    return (mu_a - mu_b).pow(2).sum(1) + trace_a + trace_b - 2 * cross


def _covariances(w, a, b, mu_a, mu_b, n, codes, moments):
    """cov_a and cov_b (B, D, D) under each row of weights w, from the clusters' moments where given."""
    import torch

    if codes is None and moments is None:  # a weight per row (metrics.frechet_distance): no (N, D, D) moments
        return _row_weighted_cov(w, a, mu_a, n), _row_weighted_cov(w, b, mu_b, n)
    codes = torch.arange(len(a)) if codes is None else codes
    moments_a, moments_b = moments or (_cluster_moments(a, codes), _cluster_moments(b, codes))
    counts = w[:, np.unique(codes.numpy(), return_index=True)[1]]  # (B, C): each cluster's draws
    return _weighted_cov(counts, moments_a, mu_a, n), _weighted_cov(counts, moments_b, mu_b, n)


def _cluster_moments(x, codes):
    """Per cluster, the sum of x_i x_i^T over its rows: (C, D, D)."""
    import torch

    return torch.stack([x[codes == c].T @ x[codes == c] for c in range(int(codes.max()) + 1)])


def _weighted_cov(counts, moments, mean, n):
    """The unbiased covariance (B, D, D) under each row of cluster draws `counts` (B, C)."""
    second = (counts @ moments.flatten(1)).view(len(counts), *moments.shape[1:])
    return (second - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1)[:, None, None]


def _row_weighted_cov(w, x, mean, n):
    """The unbiased covariance (B, D, D) of the rows of x (N, D) under each row of weights w (B, N)."""
    second = (w[:, :, None] * x).transpose(1, 2) @ x
    return (second - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1)[:, None, None]


def _sqrtm_psd(m):
    """The square roots of a batch of symmetric PSD matrices (B, D, D)."""
    import torch

    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp(min=0).sqrt()[:, None, :]) @ vectors.transpose(1, 2)
