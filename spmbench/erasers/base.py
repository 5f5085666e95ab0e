"""The Eraser base class: every method (SPM and each baseline) is one subclass in one file.

An eraser declares its settings as a frozen dataclass (`Settings`: defaults, types and checks in one
place), fits artifacts for some targets once (`fit`, idempotent: the artifact path is owned here),
and applies them around generation (`apply` yields one callable: prompts -> pipeline output).
"""

from __future__ import annotations

import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from spmbench.registry import Registry, slug


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
    """`cls(**given)` with one-line errors: unknown names, wrong types and non-finite numbers are
    refused, and lists become tuples where the field is a tuple (YAML has no tuples)."""
    given = dict(given or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        hint = f"known: {', '.join(known)}" if known else "it takes no settings"
        raise ValueError(f"eraser {eraser!r}: unknown setting(s) {unknown}; {hint}")
    hints = typing.get_type_hints(cls)
    for name, value in given.items():
        value = _as_declared(value, hints[name])
        if not _has_type(value, hints[name]):
            raise ValueError(f"eraser {eraser!r}: setting {name} must be {_type_name(hints[name])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"eraser {eraser!r}: setting {name} must be a finite number, got {value!r}")
        given[name] = value
    try:
        return cls(**given)
    except (TypeError, ValueError) as e:
        raise ValueError(f"eraser {eraser!r}: {e}") from None


def _as_declared(value, hint):
    if isinstance(value, list) and _allows(hint, tuple):
        return tuple(value)
    return value


def _allows(hint, kind: type) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_allows(h, kind) for h in typing.get_args(hint))
    return (typing.get_origin(hint) or hint) is kind


def _has_type(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(items) == len(value) and all(_has_type(v, h) for v, h in zip(value, items))
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


class Eraser(ABC):
    """One erasing method.

    Subclasses set `name` (the registry name) and `Settings`, and implement `fit_one` (make one
    artifact file) and `apply` (the context generation runs in). Class attributes:
        fit_key: the name its fits and settings are stored under; erasers sharing one share fits
            ('spm', 'spm-rel' and 'spm-noft' are one fit applied three ways).
        fits_per_target: k targets are k single-target fits (SPM), not one k-target fit.
        targets: the only targets it can erase (a released checkpoint), or None for any.
        artifact_suffix: the artifact file's extension.
    """

    name: str
    Settings: ClassVar[type] = NoSettings
    fits_per_target: ClassVar[bool] = False
    targets: tuple[str, ...] | None = None
    artifact_suffix: ClassVar[str] = ".safetensors"

    @property
    def fit_key(self) -> str:
        return self.name

    def settings(self, given: dict | None = None) -> Any:
        """The defaults overridden by `given` (a spec's `eraser_settings`), checked."""
        return build_settings(self.Settings, given, self.name)

    def check_settings(self, given: dict | None) -> None:
        """Raise ValueError (one line) if a run would refuse these settings; fits nothing."""
        self.settings(given)

    def artifact_path(self, workdir: Path, targets: tuple[str, ...]) -> Path:
        """Where the fit for `targets` lives under a run's fits folder."""
        return workdir / self.fit_key / f"{'+'.join(slug(t) for t in targets)}{self.artifact_suffix}"

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        """The artifacts for `targets`, fitting only those not on disk yet (a rerun does nothing)."""
        chosen = self.settings(settings)
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


ERASERS: Registry[Eraser] = Registry("eraser")
