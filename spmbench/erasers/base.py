"""The Eraser base class: every method (SPM and each baseline) is one subclass in one file.

An eraser declares its settings as a frozen dataclass (`Settings`: defaults, types and checks in one
place), fits artifacts for some targets once (`fit`, idempotent: the artifact path is owned here),
and applies them around generation (`apply` yields one callable: prompts -> pipeline output).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from spmbench.registry import Registry, targets_slug
from spmbench.specs import check_fields


# What `apply` yields: called like a diffusers pipeline, `generate(prompts, **pipeline_kwargs)`.
Generate = Callable[..., Any]


@dataclass(frozen=True)
class NoSettings:
    """An eraser with nothing to set: any setting given to it is a mistake, not ignored."""


def require_counts(settings, *names: str, least: int = 1) -> None:
    """Settings that count something are whole numbers >= `least` (a spec typo, not a silent no-op)."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")


def require_positive(settings, *names: str) -> None:
    """Settings that must be finite and greater than 0 (a learning rate)."""
    for name in names:
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number greater than 0, got {value!r}")


def build_settings(cls: type, given: dict | None, eraser: str) -> Any:
    """`cls(**given)` with one-line errors: unknown names, wrong types (the spec files' own check: a
    YAML list becomes a tuple where the field is one) and non-finite numbers are refused."""
    hints = typing.get_type_hints(cls)
    schema = {f.name: hints[f.name] for f in fields(cls)}
    if given and not schema:
        raise ValueError(f"eraser {eraser!r} takes no settings, got {sorted(given)}: remove them")
    chosen = check_fields(given or {}, schema, set(), f"eraser {eraser!r}")
    for name, value in chosen.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"eraser {eraser!r}: {name} must be a finite number, got {value!r}")
    try:
        return cls(**chosen)
    except (TypeError, ValueError) as e:
        raise ValueError(f"eraser {eraser!r}: {e}") from None


def pipeline_family(pipe) -> str:
    """The family of a loaded pipeline, as the model files name it where erasers differ: 'flux' (FLUX.1's
    transformer), 'sd3' (another transformer, no UNet), 'sdxl' (a UNet and a second text encoder), else 'sd1' (one
    text encoder's states: SD 1.x/2.x and the toy world condition alike)."""
    from diffusers import FluxTransformer2DModel

    if isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel):
        return "flux"
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        return "sd3"
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"


def targets_prompt(pipe, targets: tuple[str, ...], eraser: str) -> str:
    """The targets as one prompt ("a, b, c"), for erasers that condition on them all at once; a one-line
    error when a text encoder would cut it short: the targets past its context would be dropped unsaid."""
    text = ", ".join(targets)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is None:
            continue
        length, limit = len(tokenizer(text).input_ids), tokenizer.model_max_length
        if length > limit:
            raise ValueError(
                f"{eraser} puts the {len(targets)} targets into one prompt of {length} tokens, over the "
                f"{limit} its text encoder reads ({name}): the rest would be dropped; erase fewer at once or leave "
                f"{eraser} out of --erasers"
            )
    return text


class Eraser(ABC):
    """One erasing method.

    Subclasses set `name` (the registry name) and `Settings`, and implement `fit_one` (make one
    artifact file) and `apply` (the context generation runs in). Class attributes:
        fit_key: the name its fits and settings are stored under; erasers sharing one share fits
            ('spm', 'spm-rel' and 'spm-noft' are one fit applied three ways).
        fits_per_target: k targets are k single-target fits (SPM), not one k-target fit.
        targets: the only targets it can erase (a released checkpoint), or None for any.
        artifact_suffix: the artifact file's extension.
        settings_key: the name its settings are read under in spec files (its fit key).
        overrides: settings applied over the spec files' (a tuning grid's point: `Tuned`).
        unsupported: model family (a model file's `family`) -> why the method does not apply to it;
            a run refuses such a cell before any work (`family_problem`), a fit on such a pipeline too.
        apply_options: the attributes an application may set for `apply` (`configured`): name -> (check, what
            a value must be).
    """

    name: str
    Settings: ClassVar[type] = NoSettings
    fits_per_target: ClassVar[bool] = False
    targets: tuple[str, ...] | None = None
    artifact_suffix: ClassVar[str] = ".safetensors"
    overrides: Mapping[str, Any] = MappingProxyType({})
    unsupported: ClassVar[Mapping[str, str]] = MappingProxyType({})
    apply_options: ClassVar[Mapping[str, tuple[Callable[[Any], bool], str]]] = MappingProxyType({})

    @property
    def fit_key(self) -> str:
        return self.name

    def configured(self, options: Mapping[str, Any]) -> Eraser:
        """This eraser applied with `options` (an application's `apply:` for it): a copy, its fits unchanged."""
        if not options:
            return self
        for key, value in options.items():
            if key not in self.apply_options:
                known = ", ".join(self.apply_options) or "none"
                raise ValueError(f"{self.name} has no apply option {key!r} (its options: {known})")
            check, what = self.apply_options[key]
            if not check(value):
                raise ValueError(f"{self.name}: apply option {key} must be {what}, not {value!r}")
        applied = copy.copy(self)
        for key, value in options.items():
            setattr(applied, key, value)
        return applied

    @property
    def settings_key(self) -> str:
        return self.fit_key

    @property
    def applied(self) -> dict:
        """How `apply` uses the fits, where an eraser has a choice there ({}: none): a cell's images are made one way
        (the runner refuses to mix them)."""
        return {}

    @property
    def computes_fits(self) -> bool:
        """Whether fitting computes something (`fit_one`), not only records the targets (none, negprompt)."""
        return type(self).fit_one is not Eraser.fit_one

    def settings(self, given: dict | None = None) -> Any:
        """The defaults overridden by `given` (a spec's `eraser_settings`), then by the eraser's own
        `overrides` (an ablation's, a grid point's: they hold however the eraser is called), checked."""
        return build_settings(self.Settings, {**(given or {}), **self.overrides} or None, self.name)

    def family_problem(self, family: str) -> str | None:
        """One line saying why this eraser cannot run on models of `family`, or None where it can."""
        reason = self.unsupported.get(family)
        return None if reason is None else f"{self.name} does not support {family}: {reason}"

    def artifact_path(self, workdir: Path, targets: tuple[str, ...]) -> Path:
        """Where the fit for `targets` lives under a run's fits folder."""
        return workdir / self.fit_key / f"{targets_slug(targets)}{self.artifact_suffix}"

    def checkpoint_path(self, artifact: Path) -> Path:
        """Where a fit in progress for `artifact` keeps its resumable state (deleted once the artifact is written)."""
        return artifact.with_name(artifact.name + ".ckpt.pt")

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        """The artifacts for `targets`, fitting only those not on disk yet (a rerun does nothing)."""
        chosen = self.settings(settings)
        problem = self.family_problem(pipeline_family(pipe))
        if problem:
            raise ValueError(problem)
        groups = [(t,) for t in targets] if self.fits_per_target else [tuple(targets)]
        paths = []
        for group in groups:
            path = self.artifact_path(workdir, group)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                self.fit_one(pipe, group, path, resolution, chosen)
            paths.append(path)
        return paths

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings) -> None:
        """Fit for `targets` and write the artifact to `path` atomically (erasers that fit nothing
        override `fit` instead)."""
        raise NotImplementedError(f"eraser {self.name!r} implements neither fit_one nor fit")

    @abstractmethod
    def apply(self, pipe, artifacts: list[Path]) -> AbstractContextManager[Generate]:
        """A context that yields `generate(prompts, **pipeline_kwargs)` with the eraser in effect on
        `pipe`, and restores `pipe` exactly on exit."""


class Tuned(Eraser):
    """One point of an eraser's tuning grid: the eraser with `overrides` over its spec settings, named
    and fitted apart (`<name>~<digest of the overrides>`), so no two grid points share a fit or a cell."""

    def __init__(self, base: Eraser, overrides: Mapping[str, Any], tag: str | None = None):
        # over the base's own: a grid point or fit seed of an ablation (spm-noanchor) keeps what it ablates
        self.base, self.overrides = base, MappingProxyType({**base.overrides, **overrides})
        self.tag = tag or hashlib.sha1(json.dumps(dict(overrides), sort_keys=True).encode()).hexdigest()[:6]
        self.name = f"{base.name}~{self.tag}"
        self.Settings, self.fits_per_target, self.targets = base.Settings, base.fits_per_target, base.targets
        self.artifact_suffix = base.artifact_suffix

    @property
    def fit_key(self) -> str:
        return f"{self.base.fit_key}~{self.tag}"  # 'spm~x' and 'spm-noft~x' share a fit, as their bases do

    @property
    def settings_key(self) -> str:
        return self.base.settings_key

    def family_problem(self, family: str) -> str | None:
        return self.base.family_problem(family)

    def configured(self, options: Mapping[str, Any]) -> Eraser:
        if not options:
            return self
        applied = copy.copy(self)
        applied.base = self.base.configured(options)  # a grid point or fit seed is applied as its base
        return applied

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings) -> None:
        self.base.fit_one(pipe, targets, path, resolution, settings)

    def apply(self, pipe, artifacts: list[Path]) -> AbstractContextManager[Generate]:
        return self.base.apply(pipe, artifacts)

    @property
    def applied(self) -> dict:
        return self.base.applied


def tuned(base: Eraser, overrides: Mapping[str, Any], tag: str | None = None) -> Tuned:
    """The grid point `overrides` of `base`, registered in ERASERS (once: the name is the settings')."""
    variant = Tuned(base, overrides, tag)
    if variant.name in ERASERS:
        return ERASERS.get(variant.name)
    return ERASERS.add(variant.name, variant)


SEED_TAG = "seed"  # a fit seed's variant is named <eraser>~seed<N> (a grid point's tag is hexadecimal)


def trains(eraser: Eraser) -> bool:
    """Whether fitting draws random numbers (a `seed` setting), so that another seed is another fit."""
    return eraser.computes_fits and "seed" in {f.name for f in fields(eraser.Settings)}


def seeded(base: Eraser, seed: int) -> Tuned:
    """`base` fitted with `seed`: its own fits and cells, which the report folds into `base`'s rows."""
    return tuned(base, {"seed": seed}, f"{SEED_TAG}{seed}")


def fit_seed_of(name: str) -> tuple[str, int | None]:
    """An eraser name as (the eraser it is a fit seed of, the seed), or (name, None) if it is none."""
    base, _, tag = name.partition(f"~{SEED_TAG}")
    return (base, int(tag)) if tag.lstrip("-").isdigit() else (name, None)


ERASERS: Registry[Eraser] = Registry("eraser")
