"""The Eraser interface."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from spmbench.registry import Registry


class Eraser(Protocol):
    """fit() makes (and caches) what the method needs for some targets on a model; apply() wraps
    generation with it. fit must be idempotent: a rerun finds its files and does nothing.
    `settings` overrides the method's own defaults (from the fitted model's spec, `eraser_settings`)."""

    name: str

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]: ...

    def apply(self, pipe, artifacts: list[Path]) -> AbstractContextManager: ...

    def generate(self, pipe, prompts: list[str], **kwargs): ...


ERASERS: Registry[Eraser] = Registry("eraser")


def resolve_settings(eraser: str, defaults: dict, settings: dict | None) -> dict:
    """The defaults overridden by `settings`; an unknown key is a typo in a spec file, not ignored."""
    unknown = set(settings or {}) - set(defaults)
    if unknown:
        raise ValueError(f"eraser {eraser!r}: unknown setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(settings or {})}
