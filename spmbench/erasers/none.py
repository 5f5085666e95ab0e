"""The original model: the reference every eraser is compared with."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path


class Original:
    name = "none"

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        return []

    def apply(self, pipe, artifacts: list[Path]):
        return nullcontext(pipe)

    def generate(self, handle, prompts: list[str], **kwargs):
        return handle(prompts, **kwargs)
