"""The FID-standard Inception-v3 as a feature source (the vision extra): alteration on real models.

torchmetrics' NoTrainInceptionV3 is torch-fidelity's port of the TensorFlow FID network, the one
FrechetInceptionDistance(feature=2048) uses: the same images give the same features, so the FID of
these features is torchmetrics' Inception FID (tested where the extra is installed). It also gives
LPIPS (torchmetrics, AlexNet) per image pair. It judges no concept, so it is no registered judge:
`spmbench.judges.alteration_features` uses it on real models where `metrics.use_vision()`.
"""

from __future__ import annotations

import torch

from spmbench.metrics import inception_identity, lpips_distances, require_vision


FEATURES = "2048"  # the pool features FID is defined on


class InceptionFeatures:
    """Image features and paired measures, as a judge's `features` (the runner's feature source)."""

    def __init__(self, device: str = "cpu"):
        require_vision("Inception FID")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[FEATURES]).to(device).eval()
        self.device = device
        self.identity = inception_identity()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool features of (N, 3, H, W) images in [0, 1], read as FrechetInceptionDistance(
        normalize=True) reads them (truncated to uint8; the network resizes to 299 px itself)."""
        return self.net((images * 255).byte().to(self.device)).reshape(len(images), -1).float().cpu()

    def paired(self, erased: torch.Tensor, original: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image measures of row-aligned image pairs, by key: LPIPS."""
        return {"lpips": lpips_distances(erased, original, self.device)}
