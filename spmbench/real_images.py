"""Real images as an FID reference: `spmbench run --real-images SET=DIR`.

The explicit application's utility is FID on the COCO-30k captions (protocols.md). Without real images
it is measured against the original model's images of the same captions and seeds (the alteration
columns); with a folder of real COCO images (`--real-images coco=/data/coco/val2014`) every cell's
images of that set, the original's too, are also measured against them: the frame's `fid_real:<set>`.

The folder's images are center-cropped to a square and resized to REAL_SIZE (the features' own
preprocessing then resizes them as it does generated images), featurised once by the run's alteration
feature source and cached in the run folder under an identity naming the folder, its files and the
source, so that another folder or source is measured again, not mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch

    from spmbench.judges.base import Judge


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
REAL_SIZE = 512  # the protocol's generation size
MEASURE = "fid_real"  # the frame's measure: 'fid_real:<set>'
CACHE_DIR = "real-images"  # under the run folder


@dataclass(frozen=True)
class RealImages:
    """A folder of real images, the FID reference of one prompt set."""

    prompt_set: str
    folder: Path

    def files(self) -> list[Path]:
        found = (p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        # hidden files (macOS's ._*.jpg resource forks, say) are not images of the set
        return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(self.folder).parts))

    def identity(self, source: Judge) -> str:
        """The folder, its images (names and sizes) and the feature source: what the reference's features are."""
        files = self.files()
        listing = "\n".join(f"{p.relative_to(self.folder)} {p.stat().st_size}" for p in files)
        digest = hashlib.sha256(listing.encode()).hexdigest()[:12]
        return f"{self.folder} ({len(files)} images, listing {digest}, {REAL_SIZE} px) on {source.identity}"


def parse(given: list[str], set_names: set[str]) -> dict[str, RealImages]:
    """--real-images SET=DIR (repeatable), checked: a set some chosen application has, an existing folder with
    at least 2 images. Raises ValueError in one line."""
    chosen = {}
    for item in given:
        prompt_set, equals, folder = item.partition("=")
        if not (equals and prompt_set and folder):
            raise ValueError(f"--real-images {item!r}: write SET=DIR, e.g. coco=/data/coco/val2014")
        if prompt_set not in set_names:
            raise ValueError(
                f"--real-images {item!r}: no chosen application has a prompt set {prompt_set!r}; "
                f"its sets: {', '.join(sorted(set_names))}"
            )
        real = RealImages(prompt_set, Path(folder).expanduser().resolve())
        if not real.folder.is_dir():
            raise ValueError(f"--real-images {item!r}: {real.folder} is not a folder")
        if len(real.files()) < 2:
            raise ValueError(f"--real-images {item!r}: FID needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}) "
                             f"in {real.folder}")  # fmt: skip
        chosen[prompt_set] = real
    return chosen


def load(path: Path) -> torch.Tensor:
    """One real image, center-cropped to a square and resized to REAL_SIZE, as (3, H, W) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        square = ImageOps.fit(image.convert("RGB"), (REAL_SIZE, REAL_SIZE), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float() / 255


def reference_features(real: RealImages, source: Judge, cache: Path, batch_size: int = 32) -> tuple[torch.Tensor, str]:
    """The folder's features on `source` and their identity, from `cache` where it holds this identity's, else
    computed a batch at a time and written there atomically."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from spm.files import save_safetensors_atomic

    identity = real.identity(source)
    try:
        with safe_open(str(cache), "pt") as f:
            if json.loads((f.metadata() or {}).get("identity", "null")) == identity:
                return f.get_tensor("features"), identity
    except (OSError, SafetensorError, ValueError):
        pass  # absent or torn: computed again
    files = real.files()
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    features = torch.cat([source.features(torch.stack([load(p) for p in batch])) for batch in batches])
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({"features": features.contiguous()}, cache, {"identity": json.dumps(identity)})
    return features, identity
