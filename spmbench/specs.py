"""Declarative specs read from YAML: models (`spmbench/models/*.yaml`), one small file each.

A user adds a model by dropping a file in that folder (or in a folder named by SPMBENCH_MODELS);
no code changes. Every field is checked on load, and an error names the file and the field.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from spmbench.registry import Registry


MODELS_DIR = Path(__file__).parent / "models"
FAMILIES = ("toy", "sd1", "sd2")
WORLDS = ("toy", "real")


class SpecError(ValueError):
    """A spec file is malformed; the message names the file and what to fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its weights are, which family it belongs to (what an SPM transfers within)."""

    name: str
    source: str  # a spm registry name, hub id or local diffusers directory
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

    def load(self, device: str = "cpu"):
        from spm import load_pipeline

        return load_pipeline(self.source, device=device)


def _check_fields(cls, data: dict, origin: str) -> None:
    known = {f.name for f in fields(cls)} - {"origin"}
    unknown = set(data) - known
    if unknown:
        raise SpecError(f"{origin}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
    missing = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} - set(data)
    if missing:
        raise SpecError(f"{origin}: missing field(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if not _has_type(value, hints[name]):
            raise SpecError(f"{origin}: {name} must be {_type_name(hints[name])}, got {value!r}")


def _has_type(value, hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(hint) or hint)


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    names = {str: "text", int: "a whole number", float: "a number", type(None): "null", dict: "a mapping"}
    return names.get(typing.get_origin(hint) or hint, str(hint))


def read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None


def parse_model(data: dict, origin: str) -> ModelSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping of fields, got {type(data).__name__}")
    _check_fields(ModelSpec, data, origin)
    spec = ModelSpec(**data, origin=origin)
    if not isinstance(spec.eraser_settings, dict) or not all(
        isinstance(v, dict) for v in spec.eraser_settings.values()
    ):
        raise SpecError(f"{origin}: eraser_settings must map eraser names to mappings of settings")
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
    return spec


def model_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("SPMBENCH_MODELS", "").split(os.pathsep) if p]
    return [MODELS_DIR, *extra]


def load_models(dirs: list[Path] | None = None) -> Registry[ModelSpec]:
    registry: Registry[ModelSpec] = Registry("model")
    for directory in dict.fromkeys(dirs or model_dirs()):  # a folder named twice is read once
        for path in sorted(Path(directory).glob("*.yaml")):
            spec = parse_model(read_yaml(path), str(path))
            if spec.name in registry:
                raise SpecError(f"{path}: model name {spec.name!r} is also used by {registry.get(spec.name).origin}")
            registry.add(spec.name, spec)
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
