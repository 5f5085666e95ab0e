"""What a cell of a run measured: the versioned record the runner writes and `report` reads.

`result.json` holds one Result. A file of another schema version (or a torn one) is not reused: the
runner recomputes the result from the cell's stored images and scores, which costs seconds.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from spmbench.registry import targets_slug
from spmbench.specs import SpecError, build
from spmbench.stats import Interval


SCHEMA = 1
PACKAGES = ("spm-erasing", "torch", "diffusers", "transformers", "numpy")


def cell_key(model: str, eraser: str, targets) -> str:
    """A cell's folder under a run's cells/: <model>/<eraser>/<experiment>, "original" for the model itself."""
    experiment = "original" if eraser == "none" else targets_slug(targets)
    return f"{model}/{eraser}/{experiment}"


@dataclass(frozen=True)
class Result:
    """One cell: an eraser applied to a model for some targets, judged on the application's prompts.

    rates / original_rates: judged-present rate per prompt set, of this cell and of the original
    model on the same rows; alteration: feature distances of the non-target images to the original's
    (None for the original itself or without non-target prompts), measured on `alteration_features`.
    fit_seconds / fit_peak_mib: the fit's cost when first computed (seconds None: the fit resumed from its checkpoint,
    so it was not measured whole). settings: sampling settings and
    the fitting overrides used. meta: the code version, package versions and machine that made it.
    """

    app: str
    app_version: int
    model: str
    fitted_on: str
    eraser: str
    targets: tuple[str, ...]
    rows: int
    rates: dict[str, float]
    original_rates: dict[str, float]
    alteration: dict[str, float] | None
    alteration_features: str | None
    fit_seconds: float | None
    fit_peak_mib: float | None
    generate_seconds_this_run: float
    settings: dict
    # {measure: stats.Interval as a mapping} of the alteration measures (and KID on real models), measured
    # with them; None in results made before they were kept, whose report computes them from the features
    alteration_intervals: dict[str, dict] | None = None
    # the pipeline's seconds for the images of the application's rows (not attack rows), summed over their batches
    # whoever made them (the cell's generation.jsonl); generate_seconds_this_run is this process's wall time, ~0
    # where others made the images. None where some batch was not timed (images made before batches were)
    generate_seconds: float | None = None
    meta: dict = field(default_factory=dict)
    # {prompt set: stats.Interval as a mapping, with "reference": the real images' identity}: FID of the cell's
    # images of that set against a folder of real images (`spmbench run --real-images`); None without one
    real_fid: dict[str, dict] | None = None
    schema: int = SCHEMA

    def save(self, path: Path) -> None:
        from spm.files import write_text_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Result | None:
        """The stored result, or None if it is missing, torn or of another schema (recompute it)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return None
        # every field known and of its type, the required ones present (a field added with a default
        # reads as that default in older results), as a spec file's: anything else is recomputed, not misread
        try:
            result = build(cls, data, str(path))
            for interval in (
                result.alteration_intervals or {}
            ).values():  # each a whole Interval, as the report reads it
                build(Interval, interval, str(path))
            for measured in (result.real_fid or {}).values():  # a whole Interval and the reference it was against
                if not isinstance(measured.get("reference"), str):
                    return None
                build(Interval, {k: v for k, v in measured.items() if k != "reference"}, str(path))
            return result
        except SpecError:
            return None


@cache
def run_meta() -> dict:
    """Where a result came from: git commit (and whether the tree had changes), package versions, machine."""
    return {"code": _git_version(), "packages": _versions(), "machine": _machine()}


def _git_version() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # an installed wheel: no repository
    return commit + ("+changes" if dirty else "")


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _machine() -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()}, {device}, {torch.get_num_threads()} torch threads"
