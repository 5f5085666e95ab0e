"""SPM as an eraser: one membrane per target, trained on the model given to fit, combined at apply."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import spm
from spmbench.erasers.base import resolve_settings


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class SPMEraser:
    fit_key = "spm"  # 'spm', 'spm-rel' and 'spm-noft' share their fits (and so their settings)
    fits_per_target = True  # k targets cost k single-target fits (runner.fit_timed sums them)

    def __init__(self, transport: bool = True, similarity: str = "paper"):
        """transport: Facilitated Transport on; similarity: its prompt similarity (spm.attach)."""
        self.transport, self.similarity = transport, similarity
        self.name = {"paper": "spm", "relative": "spm-rel"}[similarity] if transport else "spm-noft"

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        """One SPM per target (SPMs combine without retuning). `settings`: spm.TrainConfig overrides,
        and `surrogate`, the concept the targets are replaced with (erase-to-replace; "" erases)."""
        paths = []
        for target in targets:
            path = workdir / "spm" / f"{slug(target)}.safetensors"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                known = {"resolutions": (resolution,), "surrogate": ""} | {
                    f.name: getattr(spm.TrainConfig(), f.name) for f in fields(spm.TrainConfig)
                }
                chosen = resolve_settings(self.name, known, settings)
                surrogate = chosen.pop("surrogate")
                checkpoint = path.with_name(path.name + ".ckpt.pt")
                trained = spm.train(pipe, [target], surrogate, spm.TrainConfig(**chosen), checkpoint=checkpoint)
                trained.save(path)
                checkpoint.unlink(missing_ok=True)
            paths.append(path)
        return paths

    @contextmanager
    def apply(self, pipe, artifacts: list[Path]):
        spms = [spm.SPM.load(p) for p in artifacts]
        attached = spm.attach(pipe, spms, transport=self.transport, similarity=self.similarity)
        try:
            yield attached
        finally:
            attached.detach()

    def generate(self, handle, prompts: list[str], **kwargs):
        return handle(prompts, **kwargs)
