"""The Eraser interface."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from spmbench.registry import Registry


class Eraser(Protocol):
    """fit() makes (and caches) what the method needs for some targets on a model; apply() wraps
    generation with it. fit must be idempotent: a rerun finds its files and does nothing."""

    name: str

    def fit(self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int) -> list[Path]: ...

    def apply(self, pipe, artifacts: list[Path]) -> AbstractContextManager: ...

    def generate(self, pipe, prompts: list[str], **kwargs): ...


ERASERS: Registry[Eraser] = Registry("eraser")
