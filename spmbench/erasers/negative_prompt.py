"""The plain negative prompt: the targets replace the empty unconditional prompt of CFG."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from spm.files import write_text_atomic
from spmbench.erasers.spm import slug


class NegativePrompt:
    name = "negprompt"

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        """Nothing to learn; the artifact records the negative prompt used, for provenance."""
        path = workdir / "negprompt" / f"{'+'.join(slug(t) for t in targets)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"negative_prompt": ", ".join(targets)}))
        return [path]

    @contextmanager
    def apply(self, pipe, artifacts: list[Path]):
        yield pipe, json.loads(artifacts[0].read_text())["negative_prompt"]

    def generate(self, handle, prompts: list[str], **kwargs):
        pipe, negative = handle
        return pipe(prompts, negative_prompt=[negative] * len(prompts), **kwargs)
