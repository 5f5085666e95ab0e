"""Distribution and paired distances on a judge's features (alteration of non-target generations)."""

from __future__ import annotations

import torch


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (N, D): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

    Computed in float64 with symmetric eigendecompositions (no scipy); exact for PSD covariances.
    """
    a, b = a.double(), b.double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def paired_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean L2 distance between row-aligned features (same prompt, same seed)."""
    if a.shape != b.shape:
        raise ValueError(f"paired features must align, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.double() - b.double()).norm(dim=1).mean())
