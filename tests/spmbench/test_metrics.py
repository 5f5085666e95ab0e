import numpy as np
import pytest
import torch

from spmbench import stats
from spmbench.metrics import (
    _kernel_sums,
    _kid_of_draws,
    frechet_distance,
    kernel_distance,
    kid_interval,
    paired_distance,
    torchmetrics_fid,
    torchmetrics_kid,
)


def reference_fid(a, b):
    """Independent reference: scipy-free closed form via numpy's general eigendecomposition."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)  # Tr sqrt(Sa Sb) = sum sqrt(eigenvalues of Sa Sb)
    return mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum()


def test_fid_matches_reference_and_basic_properties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=gen)
    b = torch.randn(200, 6, generator=gen) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(reference_fid(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # known moments: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2 = 9 + var(x), var(x) = 1000/999 (unbiased)
    x = torch.tensor([[-1.0], [1.0]]).repeat(500, 1)
    y = x * 2 + 3
    assert frechet_distance(x, y) == pytest.approx(9 + 1000 / 999, rel=1e-9)


def test_fid_of_fewer_images_than_dimensions_is_exact():
    # 12 images in 30-D: square roots of the rank-deficient covariances' rounding-level eigenvalues
    # once moved this FID by ~1e-7 (and made the FID of a set with itself -1e-5 on 72 images in 192-D)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 30, generator=gen)
    b = torch.randn(12, 30, generator=gen) * 1.5 + 0.3
    # exact: Tr((S_a^1/2 S_b S_a^1/2)^1/2) is the sum of the singular values of X_a X_b^T / (n - 1), X centred
    a, b = a.double(), b.double()
    xa, xb = (a - a.mean(0)).numpy(), (b - b.mean(0)).numpy()
    cross = np.linalg.svd(xa @ xb.T / 11, compute_uv=False).sum()
    mu = (a.mean(0) - b.mean(0)).numpy()
    exact = mu @ mu + ((xa**2).sum() + (xb**2).sum()) / 11 - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-9)  # the eigendecomposition of S_a S_b: 1e-8 off
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="row-aligned"):
        frechet_distance(a, b[:6])


def test_fid_equals_torchmetrics_where_images_outnumber_dimensions():
    """The maintained FID (torchmetrics' FrechetInceptionDistance, fed the features through an identity
    extractor) and ours agree to rounding; so do stats.weighted_fid at unit weights."""
    from spmbench.stats import weighted_fid

    gen = torch.Generator().manual_seed(0)
    for n, d in [(200, 6), (500, 64)]:
        a = torch.randn(n, d, generator=gen, dtype=torch.float64)
        b = torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3
        theirs = torchmetrics_fid(a, b)
        assert theirs > 1.0  # not a trivial zero
        assert frechet_distance(a, b) == pytest.approx(theirs, rel=1e-12)
        shift = a.mean(0)
        unit = float(weighted_fid(torch.ones(1, n, dtype=torch.float64), a - shift, b - shift)[0])
        assert unit == pytest.approx(theirs, rel=1e-12)
    # unit-norm features far from the origin, as CLIP's: torchmetrics' uncentred moments still agree
    a = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen, dtype=torch.float64) + 3, dim=1)
    b = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen, dtype=torch.float64) + 3.2, dim=1)
    assert frechet_distance(a, b) == pytest.approx(torchmetrics_fid(a, b), rel=1e-9)


def test_why_fid_is_ours_where_images_are_fewer_than_dimensions():
    """What keeps our FID: torchmetrics' eigenvalues of S_a S_b are ~1e-8 off with fewer images than
    dimensions (72 in 192-D, the toy-artist cells; CLIP's 512-D on a --limit run), ours is exact; and
    torchmetrics takes no row weights, which the bootstrap intervals resample by (stats.fid_interval)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(72, 192, generator=gen, dtype=torch.float64)
    b = torch.randn(72, 192, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    xa, xb = (a - a.mean(0)).numpy(), (b - b.mean(0)).numpy()
    mu = (a.mean(0) - b.mean(0)).numpy()
    exact = mu @ mu + ((xa**2).sum() + (xb**2).sum()) / 71 - 2 * np.linalg.svd(xa @ xb.T / 71, compute_uv=False).sum()
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-9)  # measured: 2e-10 relative
    theirs = torchmetrics_fid(a, b)
    assert abs(theirs - exact) > 5e-9 * exact  # measured: 3e-8 relative
    assert theirs == pytest.approx(exact, rel=1e-6)  # the same metric all the same
    # the FID of a set with itself, relative to its scale 2 tr(S_a): ours <= 4e-10 over 8 seeds, theirs ~2e-8
    scale = 2 * float(a.var(0).sum())
    assert abs(frechet_distance(a, a)) < 2e-9 * scale
    assert abs(torchmetrics_fid(a, a)) > 5e-9 * scale


def reference_kid(a, b, weights=None):
    """Independent reference, pair by pair: the unbiased MMD^2 under the kernel (x.y/D + 1)^3 of the
    images listed with repeats (`weights`: how often each row is drawn), leaving out of the within-set
    sums the pairs of an image with itself or its copies (with every weight 1: the U-statistic)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
    k = lambda x, y: (x @ y / a.shape[1] + 1) ** 3  # noqa: E731
    within = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    cross = 0.0
    for i in range(len(a)):
        for j in range(len(a)):
            cross += w[i] * w[j] * k(a[i], b[j])
            if i != j:
                for name, x in (("a", a), ("b", b)):
                    within[name][0] += w[i] * w[j] * k(x[i], x[j])
                    within[name][1] += w[i] * w[j]
    m = w.sum()
    return within["a"][0] / within["a"][1] + within["b"][0] / within["b"][1] - 2 * cross / m**2


def test_kid_matches_a_pairwise_reference_and_torchmetrics():
    """KID: the unbiased MMD^2 of all images, pair by pair; equal to torchmetrics' KernelInceptionDistance
    fed the features through an identity extractor, with one subset of all images (its random subsets
    are a permutation of them: the same sums)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(7, 3, generator=gen, dtype=torch.float64) * 1.5 + 2.0
    assert kernel_distance(a, b) == pytest.approx(reference_kid(a, b), rel=1e-12)
    assert reference_kid(a, b) > 0.5  # not a trivial zero
    for n, d in [(7, 3), (40, 64)]:
        a = torch.randn(n, d, generator=gen, dtype=torch.float64)
        b = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.3
        assert kernel_distance(a, b) == pytest.approx(torchmetrics_kid(a, b), rel=1e-12)
    with pytest.raises(ValueError, match="row-aligned"):
        kernel_distance(a, b[:6])


def test_kid_of_a_resample_leaves_out_an_images_pairs_with_its_copies():
    """The bootstrap's statistic for one resample of prompts (clusters of 3 images), against the pairwise
    reference on the images drawn with repeats; and with every prompt drawn once it is the KID."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(12, 4, generator=gen, dtype=torch.float64) + 0.4
    codes = stats.cluster_codes([i // 3 for i in range(12)])
    weights = stats.resample_weights(codes)[:5]  # the resamples FID's interval draws
    sums = _kernel_sums(a, b, torch.from_numpy(codes))
    draws = torch.from_numpy(weights[:, ::3].copy())  # each cluster's draws
    for row, w in zip(_kid_of_draws(draws, sums), weights):
        assert float(row) == pytest.approx(reference_kid(a, b, w), rel=1e-10)
    assert float(_kid_of_draws(torch.ones(1, 4, dtype=torch.float64), sums)[0]) == pytest.approx(kernel_distance(a, b))


def test_kid_interval_contains_the_kid_and_separates_what_differs(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(60, 8, generator=gen, dtype=torch.float64)
    same = torch.randn(60, 8, generator=gen, dtype=torch.float64)
    prompts = [i // 2 for i in range(60)]  # 30 prompts, 2 seeds each
    null = kid_interval(a, same, prompts)
    assert (null.n, null.n_prompts, null.method) == (60, 30, stats.SHIFTED_BOOTSTRAP)
    assert null.value == pytest.approx(kernel_distance(a, same)) and null.lo < 0 < null.hi  # one distribution
    shifted = kid_interval(a, same + 1.0, prompts)
    assert 0 < shifted.lo < shifted.value < shifted.hi  # another: held apart
    # many prompts: blocks of prompts resampled, as FID's; the KID itself is the same
    monkeypatch.setattr(stats, "MOMENT_BUDGET", 3 * 8 * 20**2)
    blocked = kid_interval(a, same + 1.0, prompts)
    assert blocked.value == pytest.approx(shifted.value, rel=1e-12) and "blocks of prompts" in blocked.method


def test_paired_distance():
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 1.0]])
    assert paired_distance(a, b) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="align"):
        paired_distance(a, b[:2])


def test_metric_info_gives_the_table_headers_and_arrows():
    from spmbench.metrics import ALTERATION, FIT_MEMORY, FIT_SECONDS, MetricInfo, rate_info

    # the committed tables' column titles, now made from the metadata
    assert [info.header for info in ALTERATION.values()] == ["paired dist. ↓", "FID ↓"]
    assert (FIT_SECONDS.header, FIT_MEMORY.header) == ("fit (s)", "fit mem. (MiB)")  # costs: no arrow
    erasure_sets = ("target", "implicit")
    assert [rate_info(s, erasure_sets).arrow for s in ("target", "implicit", "near", "far")] == ["↓", "↓", "↑", "↑"]
    assert MetricInfo("CLIP score", higher_is_better=True).header == "CLIP score ↑"
    with pytest.raises(AttributeError):
        FIT_SECONDS.unit = "min"  # frozen: metadata is not changed in passing


def test_metadata_needs_no_torch():
    """The CLI and reports read metric metadata; importing it must not import torch."""
    import subprocess
    import sys

    code = "import sys, spmbench.metrics, spmbench.judges; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
