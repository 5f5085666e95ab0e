"""Intervals against hand-computed references, a coverage check on a known clustered process, and determinism."""

import numpy as np
import pytest
import torch

from spmbench import stats
from spmbench.metrics import frechet_distance


@pytest.mark.parametrize(
    "successes, n, lo, hi",  # Wilson's formula computed by hand (statsmodels' proportion_confint agrees)
    [
        (8, 10, 0.4901625, 0.9433178),
        (0, 10, 0.0, 0.2775328),
        (10, 10, 0.7224672, 1.0),
        (50, 100, 0.4038315, 0.5961685),
    ],
)
def test_wilson_matches_known_values(successes, n, lo, hi):
    assert stats.wilson(successes, n) == pytest.approx((lo, hi), abs=1e-6)


def test_a_rate_of_one_image_per_prompt_is_wilson():
    interval = stats.rate_interval([True] * 8 + [False] * 2, [f"p{i}" for i in range(10)])
    assert interval == stats.Interval(0.8, *stats.wilson(8, 10), n=10, n_prompts=10, method=stats.WILSON)


def test_images_sharing_prompts_widen_the_interval_to_what_their_prompts_allow():
    # 20 prompts x 5 seeds; a prompt shows the concept in all its images or in none: 20 observations, not 100
    present = [i < 10 for i in range(20) for _ in range(5)]
    prompts = [i for i in range(20) for _ in range(5)]
    interval = stats.rate_interval(present, prompts)
    assert (interval.value, interval.n, interval.n_prompts, interval.method) == (0.5, 100, 20, stats.CLUSTER_BOOTSTRAP)
    naive_lo, naive_hi = stats.wilson(50, 100)  # [0.40, 0.60]: what treating the images as independent claims
    assert interval.lo < 0.33 < naive_lo and interval.hi > 0.67 > naive_hi


def test_a_clustered_rate_at_a_bound_counts_each_prompt_once():
    interval = stats.rate_interval([False] * 12, [i // 4 for i in range(12)])  # 3 prompts x 4 seeds, none present
    assert (interval.lo, interval.hi) == stats.wilson(0, 3) and interval.method == stats.WILSON_OVER_PROMPTS
    assert interval.hi > 0.5  # not the bootstrap's [0, 0]


def test_the_cluster_bootstrap_covers_a_known_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_rate, prompts, seeds, covered = 0.3, 30, 4, 0
    for _ in range(300):
        per_prompt = rng.beta(1.5, 3.5, size=prompts)  # prompts differ: mean 0.3, images of a prompt correlate
        present = rng.random((prompts, seeds)) < per_prompt[:, None]
        interval = stats.rate_interval(present.ravel(), np.repeat(np.arange(prompts), seeds))
        covered += interval.lo <= true_rate <= interval.hi
    assert 0.88 <= covered / 300 <= 0.99


def test_a_rate_from_few_prompts_still_covers_a_known_rate_at_least_90_percent_of_the_time():
    # 3 prompts x 4 seeds, like the toy apps' target sets: the bare bootstrap covered 69 %
    rng = np.random.default_rng(2)
    true_rate, prompts, seeds, covered, runs = 0.3, 3, 4, 0, 300
    for _ in range(runs):
        per_prompt = rng.beta(1.5, 3.5, size=prompts)
        present = rng.random((prompts, seeds)) < per_prompt[:, None]
        interval = stats.rate_interval(present.ravel(), np.repeat(np.arange(prompts), seeds))
        covered += interval.lo <= true_rate <= interval.hi
    assert covered / runs >= 0.9


def test_intervals_are_reproducible_and_depend_on_the_seed():
    present = list(np.random.default_rng(0).random(120) < np.repeat(np.linspace(0.05, 0.9, 30), 4))
    prompts = [i // 4 for i in range(120)]
    assert stats.rate_interval(present, prompts) == stats.rate_interval(present, prompts)
    assert stats.rate_interval(present, prompts, seed=1) != stats.rate_interval(present, prompts)


def test_a_paired_difference_holds_only_when_its_interval_excludes_zero():
    prompts = [i // 2 for i in range(20)]
    erased, kept = [False] * 20, [True] * 20
    assert stats.holds(stats.paired_difference(erased, kept, prompts))
    difference = stats.paired_difference(erased, kept, prompts)
    assert difference.value == -1.0 and difference.lo == -1.0 and difference.method == stats.PROMPT_VOTES
    assert difference.hi == pytest.approx(-(2 * stats.wilson(10, 10)[0] - 1))  # not the collapsed bootstrap's -1
    same = stats.paired_difference(kept, kept, prompts)
    assert (same.lo, same.hi) == (0.0, 0.0) and not stats.holds(same)
    one_image_apart = stats.paired_difference([True] + [False] * 19, [False] * 20, prompts)
    assert one_image_apart.lo == 0.0 and not stats.holds(one_image_apart)  # a tie


def test_a_mean_of_equal_values_has_no_spread():
    interval = stats.mean_interval([2.5] * 6, [0, 0, 1, 1, 2, 2])
    assert (interval.value, interval.lo, interval.hi, interval.n, interval.n_prompts) == (2.5, 2.5, 2.5, 6, 3)


# every way of taking the trace's root: Cholesky, the N x N product, and a singular covariance (6 distinct rows in 8-D)
@pytest.mark.parametrize("rows, dims, distinct", [(40, 5, 40), (12, 30, 12), (12, 8, 6)])
def test_the_batched_fid_is_metrics_fid_of_the_rows_repeated_as_weighted(rows, dims, distinct):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(distinct, dims, generator=gen), torch.randn(distinct, dims, generator=gen) * 1.5 + 0.3
    a, b = a.repeat(rows // distinct, 1), b.repeat(rows // distinct, 1)
    counts = torch.randint(0, 3, (rows,), generator=gen)
    weights = torch.stack([torch.ones(rows), counts.float()]).double()
    batched = stats.weighted_fid(weights, a.double(), b.double())
    assert float(batched[0]) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    repeated = frechet_distance(a.repeat_interleave(counts, 0), b.repeat_interleave(counts, 0))
    # a singular covariance's zero eigenvalues come out as +-1e-16, whose roots (1e-8) differ by machine:
    # the trace's root there is good to ~1e-8 absolute, not to machine precision (CI saw 1.1e-9 relative)
    tolerance = 1e-9 if distinct > dims else 1e-7
    assert float(batched[1]) == pytest.approx(repeated, rel=tolerance)


def test_the_fid_interval_brackets_its_value_and_is_zero_for_identical_sets():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 4, generator=gen)
    prompts = [i // 3 for i in range(60)]
    interval = stats.fid_interval(a, a + 1.0, prompts)  # every feature moved by 1: FID 4 on any resample
    assert (
        interval.value == pytest.approx(4.0)
        and interval.lo == pytest.approx(4.0)
        and interval.hi == pytest.approx(4.0)
    )
    assert (interval.n, interval.n_prompts) == (60, 20)
    b = a + 0.5 * torch.randn(60, 4, generator=gen)
    noisy = stats.fid_interval(a, b, prompts)
    assert noisy.lo < noisy.value < noisy.hi
    assert stats.fid_interval(a, b, prompts) == noisy  # the same resamples: byte-reproducible tables


def test_the_fid_interval_is_shifted_back_by_the_bias_of_resampling():
    # 400 images in 48 dimensions: repeated images inflate every resample's FID above the one measured
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 48, generator=gen)
    b = a + 0.3 * torch.randn(400, 48, generator=gen)
    prompts = [i // 4 for i in range(400)]
    codes = stats.cluster_codes(prompts)
    w = torch.from_numpy(stats.resample_weights(codes))
    shift = a.double().mean(0)
    resampled = stats.weighted_fid(w, a.double() - shift, b.double() - shift, torch.from_numpy(codes))
    interval = stats.fid_interval(a, b, prompts)
    assert float(resampled.quantile(0.025)) > interval.value  # the plain percentiles would exclude it
    assert interval.lo < interval.value < interval.hi and interval.method == stats.SHIFTED_BOOTSTRAP
    bias = float(resampled.mean()) - interval.value
    assert interval.hi == pytest.approx(float(resampled.quantile(0.975)) - bias)


def test_the_fid_of_cluster_draws_is_the_fid_of_their_rows():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 4, generator=gen).double(), torch.randn(30, 4, generator=gen).double()
    codes = torch.arange(30) // 3
    w = torch.from_numpy(stats.resample_weights(codes.numpy(), bootstraps=5))
    assert torch.allclose(stats.weighted_fid(w, a, b, codes), stats.weighted_fid(w, a, b), rtol=1e-9)


def test_a_difference_every_prompt_agrees_on_holds_only_from_enough_prompts():
    for prompts, verdict in ((3, False), (4, False), (5, True)):
        clusters = [i // 4 for i in range(prompts * 4)]  # 4 seeds per prompt, all apart
        difference = stats.paired_difference([True] * len(clusters), [False] * len(clusters), clusters)
        assert (difference.value, difference.hi, stats.holds(difference)) == (1.0, 1.0, verdict)


def test_no_difference_holds_from_fewer_prompts_than_agreeing_votes_need():
    # 2 prompts differing by 1 and 0.5: the bootstrap alone gives [0.5, 1] and held, though 3 prompts all at 1 tie
    a, b, clusters = [True, True, True, False], [False, False, False, False], [0, 0, 1, 1]
    assert stats.mean_interval([1, 1, 1, 0], clusters).lo == 0.5  # what the bare bootstrap claimed
    difference = stats.paired_difference(a, b, clusters)
    assert (difference.value, difference.lo, difference.hi) == (0.75, 0.0, 1.0) and not stats.holds(difference)
    assert difference.method.endswith(stats.TOO_FEW_PROMPTS)


def test_the_fid_interval_resamples_blocks_of_prompts_where_their_moments_exceed_the_budget():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 4, generator=gen)
    b = a + 0.5 * torch.randn(400, 4, generator=gen)
    prompts = [i // 2 for i in range(400)]  # 200 prompts: 200 x 4 x 4 x 8 bytes of moments per side
    blocked = stats.fid_interval(a, b, prompts, moment_budget=200 * 4 * 4 * 8 - 1)
    assert (blocked.n, blocked.n_prompts) == (400, 200) and blocked.method.endswith("over 64 blocks of prompts")
    by_block = stats.fid_interval(a, b, [p * 64 // 200 for p in prompts])  # the same blocks, labelled as prompts
    assert (blocked.value, blocked.lo, blocked.hi) == (by_block.value, by_block.lo, by_block.hi)
    assert blocked.lo < blocked.value < blocked.hi
    unblocked = stats.fid_interval(a, b, prompts, moment_budget=200 * 4 * 4 * 8)
    assert unblocked.method == stats.SHIFTED_BOOTSTRAP and unblocked.lo != blocked.lo


@pytest.mark.parametrize("rows, reference_rows, dims", [(60, 200, 8), (6, 40, 8), (30, 9, 5)])
def test_the_fid_against_a_reference_is_torchmetrics_fid_and_weights_repeat_rows(rows, reference_rows, dims):
    """FID against real images (not row-aligned, another count): torchmetrics' FID of the same features at unit
    weights, and under a resample's weights the FID of its rows repeated as drawn, the reference always whole."""
    from spmbench.metrics import torchmetrics_fid

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, dims, generator=gen)
    reference = torch.randn(reference_rows, dims, generator=gen) * 1.3 + 0.4
    counts = torch.randint(1, 3, (rows,), generator=gen)
    weights = torch.stack([torch.ones(rows), counts.float()]).double()
    batched = stats.reference_fid(weights, a, reference)
    assert float(batched[0]) == pytest.approx(torchmetrics_fid(a, reference), rel=1e-6)
    assert float(batched[1]) == pytest.approx(torchmetrics_fid(a.repeat_interleave(counts, 0), reference), rel=1e-6)
    interval = stats.reference_fid_interval(a, reference, list(range(rows)))
    assert (
        interval.value == pytest.approx(float(batched[0]), rel=1e-12) and interval.lo <= interval.value <= interval.hi
    )
    assert (interval.n, interval.n_prompts) == (rows, rows)


def test_the_fid_against_a_reference_resamples_prompts_in_blocks_and_is_near_zero_for_the_same_images():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(400, 4, generator=gen)
    prompts = [i // 2 for i in range(400)]
    blocked = stats.reference_fid_interval(a, a[:300] + 1.0, prompts, moment_budget=200 * 4 * 4 * 8 - 1)
    by_block = stats.reference_fid_interval(a, a[:300] + 1.0, [p * 64 // 200 for p in prompts])
    assert blocked.method.endswith("over 64 blocks of prompts") and blocked.n_prompts == 200
    assert (blocked.value, blocked.lo, blocked.hi) == (by_block.value, by_block.lo, by_block.hi)
    assert blocked.lo > 0.5  # a shift of 1 in each of 4 dimensions: FID about 4, far from 0
    same = stats.reference_fid_interval(a, a, prompts)
    assert abs(same.value) < 1e-9 and same.lo == 0.0 and same.hi < 0.2


def test_the_fid_against_a_reference_never_sums_moments_per_row_beyond_the_budget(monkeypatch):
    """COCO-30k's rows outnumber dimensions: per-row second moments (30,000 x D x D) must never be formed, for the
    value or the resamples; only the blocks' (at most MOMENT_BLOCKS)."""
    formed, real = [], stats._cluster_moments
    monkeypatch.setattr(
        stats, "_cluster_moments", lambda x, codes: formed.append(int(codes.max()) + 1) or real(x, codes)
    )
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(400, 4, generator=gen)
    interval = stats.reference_fid_interval(a, a[:100] + 1.0, list(range(400)), moment_budget=400 * 4 * 4 * 8 - 1)
    assert formed and max(formed) <= stats.MOMENT_BLOCKS and interval.method.endswith("blocks of prompts")
    assert interval.value == pytest.approx(float(stats.reference_fid(torch.ones(1, 400), a, a[:100] + 1.0)[0]))
