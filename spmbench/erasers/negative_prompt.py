"""The plain negative prompt: the targets replace the empty unconditional prompt of CFG."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

from spm.files import write_text_atomic
from spmbench.erasers.base import Eraser, targets_prompt


class NegativePrompt(Eraser):
    name = "negprompt"
    artifact_suffix = ".json"
    # FluxPipeline reads a negative prompt only for true CFG (true_cfg_scale > 1), another sampling than its own
    unsupported = MappingProxyType(
        {"flux": "it replaces the unconditional prompt of classifier-free guidance, which FLUX.1 does not sample with"}
    )

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings) -> None:
        """Nothing to learn; the artifact records the negative prompt used, for provenance."""
        write_text_atomic(path, json.dumps({"negative_prompt": targets_prompt(pipe, targets, self.name)}))

    @contextmanager
    def apply(self, pipe, artifacts: list[Path]):
        negative = json.loads(artifacts[0].read_text())["negative_prompt"]
        yield lambda prompts, **kwargs: pipe(prompts, negative_prompt=[negative] * len(prompts), **kwargs)
