"""The original model: the reference every eraser is compared with."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from spmbench.erasers.base import Eraser


class Original(Eraser):
    name = "none"

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        self.settings(settings)  # it takes none: a setting given to it is refused, not ignored
        return []

    def apply(self, pipe, artifacts: list[Path]):
        return nullcontext(pipe)
