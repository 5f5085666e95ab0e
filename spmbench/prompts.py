"""Published benchmark prompt files: fetched from their public sources, pinned by SHA-256, parsed.

Formats (detected from the header):
- ESD artist / Imagenette sets: case_number, prompt, evaluation_seed, artist | class
- ImageNet-1k prompts: case_number, evaluation_seed, prompt, label_idx, label_str
- I2P (and its nudity subset): prompt, categories, ..., sd_seed, sd_guidance_scale, sd_image_width, sd_image_height
- COCO-30k captions: image_id, source, prompt, evaluation_seed, width, height
"""

from __future__ import annotations

import csv
import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


SPM_REPO_RAW = "https://raw.githubusercontent.com/Con6924/SPM/3dd762e/benchmark/"

# name -> (sha256, source URL). The sums are those of the files as published.
PUBLISHED: dict[str, tuple[str, str]] = {
    name: (sha, SPM_REPO_RAW + name)
    for name, sha in {
        "andy_warhol_prompts.csv": "619a0e2c0431c670ac9bdb4c61de75751070ad3959152c4057ac2dee5ecbbb4d",
        "big_artists_prompts.csv": "a17a182d939aadaa641aa3fd495fe325d845d9677f6d86b6cc0b08e6d6beab33",
        "caravaggio_prompts.csv": "51156b408314fea2808df83e6951be84a91b2b023e7ce2ff7f9f18154e25dac9",
        "coco_30k.csv": "afa3bdcbc3684f66b9d3a48a9a1fc41ef2a6f0bc2f12e175e0400956e52dd0f3",
        "i2p_benchmark.csv": "5e78f211b3944d90182ab708ed0bd8af657c24a308153e6ccd5db9d9dbfe50cb",
        "imagenet_prompts.csv": "c7675ce6faae0b2554b81eae3f275fc954a178eeaf91ad55814d847d77b664af",
        "kelly_prompts.csv": "78f60bf745f4233a39a57a1d2eccaf8c2a94813c4150918f1c4be42bf846af30",
        "niche_art_prompts.csv": "50304469d99a1e6914c8db677dc684679647732444e4f6ee2ebeab70021d5475",
        "nudity_benchmark.csv": "473d57b1b8bde81759b261f15fe003e08c81ebe81c2c4b322739e9156ddaaccd",
        "picasso_prompts.csv": "7c0d5d0cededb2e99d32e4ee864d639aed954cc5959c08a2f2b799143010394b",
        "rembrandt_prompts.csv": "9ba81237f357602779b161a0eda3088630d45bffcc8dab0cc1aba4433af0a629",
        "small_imagenet_prompts.csv": "4ab01d9e98b0a23082b9cdbf52815cc639201fe6ba33b6ed8bbab58984c9fb2d",
        "vangogh_prompts.csv": "f5386ad62579055f0756e52f84ff44758ea173cbb7824b9874ce2cab52885a37",
    }.items()
}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with everything needed to generate it reproducibly."""

    prompt_id: str
    prompt: str
    seed: int
    label: str | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    extra: dict = field(default_factory=dict, compare=False)


def cache_root() -> Path:
    """Where spmbench keeps what it fetches or computes once for every run (SPMBENCH_CACHE)."""
    return Path(os.environ.get("SPMBENCH_CACHE", Path.home() / ".cache" / "spmbench"))


def cache_dir() -> Path:
    return cache_root() / "prompts"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, directory: Path | None = None, url: str | None = None) -> Path:
    """The verified local copy of a published prompt file, downloading it once if needed.

    Raises:
        ValueError: `name` is not a published file we pin, or the download (or a cached copy) does not
            match the pinned SHA-256.
    """
    if name not in PUBLISHED:
        raise _unknown(name)
    expected, source = PUBLISHED[name]
    path = (directory or cache_dir()) / name
    if path.exists() and sha256(path) == expected:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url or source, timeout=60) as response, open(tmp, "wb") as f:
        f.write(response.read())
    got = sha256(tmp)
    if got != expected:
        tmp.unlink()
        raise ValueError(
            f"{name}: SHA-256 {got} does not match the pinned {expected}; the source changed or is corrupt"
        )
    tmp.replace(path)
    return path


def check_source(source: str) -> None:
    """Raise ValueError unless `source` is a local file or a published name (nothing is fetched)."""
    if source not in PUBLISHED and not Path(source).is_file():
        raise _unknown(source)


def _unknown(source: str) -> ValueError:
    published = ", ".join(sorted(PUBLISHED))
    return ValueError(
        f"unknown prompt file {source!r}: give a local CSV file or one of the published files: {published}"
    )


def resolve(source: str, data_dir: Path | None = None) -> Path:
    """A local path as given, or a published name: from `data_dir` if it holds a verified copy, else fetched."""
    path = Path(source)
    if path.exists():
        return path
    if data_dir is not None and (data_dir / source).exists():
        local = data_dir / source
        if source in PUBLISHED and sha256(local) != PUBLISHED[source][0]:
            raise ValueError(f"{local} does not match the pinned SHA-256 of {source}")
        return local
    return fetch(source)


def _int(value: str | None) -> int | None:
    return int(float(value)) if value not in (None, "") else None


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """Parse any of the published formats into PromptRecords (format detected from the header)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = set(rows[0])
    if {"prompt", "sd_seed"} <= header:  # I2P
        return [
            PromptRecord(
                str(i),
                r["prompt"],
                int(r["sd_seed"]),
                None,  # I2P's categories are not the concept the judge looks for: kept in extra
                float(r["sd_guidance_scale"]),
                _int(r["sd_image_width"]),
                _int(r["sd_image_height"]),
                {"categories": r.get("categories"), "hard": r.get("hard")},
            )  # fmt: skip
            for i, r in enumerate(rows)
        ]
    if {"image_id", "prompt", "evaluation_seed"} <= header:  # COCO-30k
        return [
            PromptRecord(
                r["image_id"],
                r["prompt"],
                int(r["evaluation_seed"]),
                None,
                None,
                _int(r.get("width")),
                _int(r.get("height")),
            )
            for r in rows
        ]
    if {"case_number", "prompt", "evaluation_seed"} <= header:  # ESD artists, Imagenette, ImageNet
        label_key = next((k for k in ("artist", "class", "label_str") if k in header), None)
        return [
            PromptRecord(
                r["case_number"], r["prompt"], int(r["evaluation_seed"]), r[label_key].strip() if label_key else None
            )
            for r in rows
        ]
    raise ValueError(
        f"{path}: unrecognised prompt file header {sorted(header)}; expected an I2P, COCO-30k or ESD-style CSV"
    )
