"""SPM as an eraser: one membrane per target, trained on the model given to fit, combined at apply."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import spm


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class SPMEraser:
    def __init__(self, transport: bool = True, settings: dict | None = None):
        self.transport = transport
        # spm.TrainConfig fields; the toy world's models learn a concept in a few hundred steps.
        self.settings = settings if settings is not None else {"iterations": 500}
        self.name = "spm" if transport else "spm-noft"

    def fit(self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int) -> list[Path]:
        """One SPM per target (SPMs combine without retuning); files shared by 'spm' and 'spm-noft'."""
        paths = []
        for target in targets:
            path = workdir / "spm" / f"{slug(target)}.safetensors"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                cfg = spm.TrainConfig(**{"resolutions": (resolution,), **self.settings})
                trained = spm.train(pipe, [target], config=cfg, checkpoint=path.with_name(path.name + ".ckpt.pt"))
                trained.save(path)
                path.with_name(path.name + ".ckpt.pt").unlink(missing_ok=True)
            paths.append(path)
        return paths

    @contextmanager
    def apply(self, pipe, artifacts: list[Path]):
        attached = spm.attach(pipe, [spm.SPM.load(p) for p in artifacts], transport=self.transport)
        try:
            yield attached
        finally:
            attached.detach()

    def generate(self, handle, prompts: list[str], **kwargs):
        return handle(prompts, **kwargs)
