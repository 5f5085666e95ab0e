"""The toy worlds by version: what training needs to know of each, and where each one's files live.

World 2 is the shipped default (every committed table was made with it); world 3 is the larger
world of issue 19, trained into its own folders so that world 2's weights are never touched.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType


HERE = Path(__file__).parent


@dataclass(frozen=True)
class World:
    version: int
    data_module: str  # batches, labels, judge heads, dialects, tokenizer corpus
    derivatives: tuple[str, ...]  # fine-tuned stages, in training order
    merges: dict[str, tuple[str, str]]  # a merged model and the two fine-tunes it averages
    weights: Path
    checkpoints: Path
    reader_dialects: tuple[str, str]  # what the VAE and the judge see: (usual, palette-shifted)
    tokenizer_vocab: int
    # How the world's models sample (saved in each pipeline folder): a diffusers scheduler on SD's noise
    # schedule, and its steps. World 3 samples with DPM-Solver++ (2M) in 15 steps: on its final base, at 192
    # prompts per caption form, a tie with DDIM's 30 steps on every judged head (paired, 95 %) in 0.60x the
    # time on a loaded machine (0.53x on the 24,000-step base; reports/bench/toy3_sampler_cpu.md). 10 steps
    # lose 3.6 points of styled characters. World 2 keeps DDIM 30: its tables were made so.
    sampler: str = "DDIMScheduler"
    sampling_steps: int = 30

    @property
    def data(self) -> ModuleType:
        return importlib.import_module(self.data_module)

    def models(self) -> tuple[str, ...]:
        """Every shipped model's name, base first."""
        return ("toy-base", *(f"toy-{d}" for d in self.derivatives), *(f"toy-{m}" for m in self.merges))


WORLDS = {
    2: World(2, "spmbench.toy.data", ("pastel", "verbose"), {}, HERE / "weights", HERE / "checkpoints",
             ("base", "pastel"), 600),
    3: World(3, "spmbench.toy.v3.data", ("pastel", "verbose", "dreambooth", "newconcept", "continued"),
             {"merge": ("pastel", "verbose")}, HERE / "v3" / "weights", HERE / "v3" / "checkpoints",
             ("world", "world_pastel"), 1000, "DPMSolverMultistepScheduler", 15),
}  # fmt: skip
DEFAULT_WORLD = 2


def get(version: int) -> World:
    if version not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(map(str, WORLDS))}, not {version}")
    return WORLDS[version]
