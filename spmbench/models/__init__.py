"""Models: one small YAML file each, in this folder or a folder named by SPMBENCH_MODELS.

A file names the model (its file name), where its weights are (`source`: a hub id `org/name`, or a
local diffusers directory; a path that starts with `./` or `../` is relative to the file, as the toy
models' are), its family (what an SPM transfers within) and its world. Adding a model is adding a
file; `spmbench validate` checks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from spmbench.registry import Registry
from spmbench.specs import SpecError, SpecKind, build, load


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


MODELS_DIR = Path(__file__).resolve().parent
# The toy world's trained weights: its models' sources point here, and its judge lives here.
TOY_WEIGHTS = MODELS_DIR.parent / "toy" / "weights"
TOY3_WEIGHTS = MODELS_DIR.parent / "toy" / "v3" / "weights"  # world v3's (spmbench.toy.worlds)
FAMILIES = ("toy", "sd1", "sd2", "sdxl", "sd3", "flux")
# "toy3": toy world v3 (issue 19), staged beside world v2 until its weights land and it replaces "toy".
WORLDS = ("toy", "real", "toy3")


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its weights are, which family it belongs to (what an SPM transfers within)."""

    name: str
    source: str  # a hub id or a local diffusers directory (relative ones resolved against the file)
    family: str
    world: str
    resolution: int = 512
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    derived_from: str | None = None
    caption_prefix: str = ""  # a derivative's own caption habits (toy world)
    caption_suffix: str = ""
    # Per-eraser overrides of its fitting settings, used when this model is the one fitted on
    # (e.g. the toy world's small models learn a concept in hundreds of steps, not thousands).
    eraser_settings: dict[str, dict] = field(default_factory=dict)
    origin: str = field(default="", compare=False)  # the YAML file it was read from (not a field of it)

    def resolve(self) -> str:
        """The source as spm.load_pipeline takes it; a toy model not trained yet says how to train it."""
        from spm import resolve_model

        path = Path(self.source)
        v3 = path.is_relative_to(TOY3_WEIGHTS)
        if (v3 or path.is_relative_to(TOY_WEIGHTS)) and not (path / "model_index.json").is_file():
            command = "spmbench toy train" + (" --world 3" if v3 else "")
            raise FileNotFoundError(f"toy model {self.name!r} is not trained yet: run `{command}` (expected {path})")
        return resolve_model(self.source)

    def load(self, device: str = "cpu") -> DiffusionPipeline:
        from spm import load_pipeline

        return load_pipeline(self.resolve(), device=device)


def parse_model(data, origin: str) -> ModelSpec:
    spec = build(ModelSpec, data, origin, origin=origin)
    if spec.family not in FAMILIES:
        raise SpecError(f"{origin}: family {spec.family!r} is not one of {', '.join(FAMILIES)}")
    if spec.world not in WORLDS:
        raise SpecError(f"{origin}: world {spec.world!r} is not one of {', '.join(WORLDS)}")
    for name in ("resolution", "num_inference_steps"):
        if getattr(spec, name) < 1:
            raise SpecError(f"{origin}: {name} must be at least 1, got {getattr(spec, name)}")
    if spec.guidance_scale < 0:
        raise SpecError(f"{origin}: guidance_scale must be at least 0, got {spec.guidance_scale}")
    if Path(origin).stem != spec.name:
        raise SpecError(f"{origin}: name {spec.name!r} must match the file name {Path(origin).stem!r}")
    return replace(spec, source=_source(spec.source, origin))


def _source(source: str, origin: str) -> str:
    """A path that starts with ./ or ../ is relative to the spec file; anything else is as written."""
    expanded = os.path.expanduser(os.path.expandvars(source))
    if source.startswith(("./", "../")):
        return os.path.normpath(Path(origin).parent / expanded)
    return expanded


MODELS = SpecKind("model", MODELS_DIR, "SPMBENCH_MODELS", parse_model)


def load_models(folders: list[Path] | None = None) -> Registry[ModelSpec]:
    """Every model: the shipped ones and those in SPMBENCH_MODELS (or in `folders`)."""
    registry = load(MODELS, folders)
    for spec in registry:
        _check_parent(spec, registry)
    return registry


def _check_parent(spec: ModelSpec, registry: Registry[ModelSpec]) -> None:
    """A derivative reuses its root's fits (runner.fit_model_for): same world and family, no cycle."""
    origin, seen, model = spec.origin, {spec.name}, spec
    while model.derived_from:
        if model.derived_from not in registry:
            raise SpecError(f"{origin}: derived_from {model.derived_from!r} is not a registered model")
        parent = registry.get(model.derived_from)
        if parent.name in seen:
            raise SpecError(f"{origin}: derived_from makes a cycle through {parent.name!r}")
        if (parent.world, parent.family) != (spec.world, spec.family):
            raise SpecError(
                f"{origin}: derived from {parent.name} ({parent.world}, {parent.family}), so world and family "
                f"must be {parent.world} and {parent.family}, not {spec.world} and {spec.family}"
            )
        seen.add(parent.name)
        model = parent


def select_models(registry: Registry[ModelSpec], selector: str, world: str = "toy") -> list[ModelSpec]:
    """'all' = every model of `world`; 'toy' / 'real' = that world; else comma-separated names."""
    if selector == "all":
        return [m for m in registry if m.world == world]
    if selector in WORLDS:
        return [m for m in registry if m.world == selector]
    names = dict.fromkeys(name.strip() for name in selector.split(",") if name.strip())  # no duplicates
    return [registry.get(name) for name in names]
