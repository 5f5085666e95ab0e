"""Erasers: every method (SPM and the baselines) behind one fit/apply interface, one file each."""

from spmbench.erasers.base import ERASERS, Eraser
from spmbench.erasers.concept_ablation import ConceptAblation
from spmbench.erasers.esd import ESD
from spmbench.erasers.negative_prompt import NegativePrompt
from spmbench.erasers.none import Original
from spmbench.erasers.rece import RECE
from spmbench.erasers.released import load_released
from spmbench.erasers.sld import PRESETS, SLD
from spmbench.erasers.spm import SPMEraser, SPMHardened, SPMNoAnchor
from spmbench.erasers.uce import UCE


ERASERS.add("none", Original())
ERASERS.add("spm", SPMEraser(transport=True))
ERASERS.add("spm-rel", SPMEraser(similarity="relative"))
ERASERS.add("spm-noft", SPMEraser(transport=False))
ERASERS.add("negprompt", NegativePrompt())
ERASERS.add("uce", UCE())
ERASERS.add("rece", RECE())
ERASERS.add("esd-x", ESD("x"))
ERASERS.add("esd-u", ESD("u"))
ERASERS.add("ca", ConceptAblation())
for _preset in PRESETS:
    ERASERS.add(f"sld-{_preset}", SLD(_preset))
BUILTIN = tuple(ERASERS.names())  # what `--erasers all` runs; released checkpoints are named explicitly
# Ablations of SPM that `spmbench paper` runs (its ablation tables) and `run` only when named.
ABLATIONS = ("spm-noanchor",)
ERASERS.add("spm-noanchor", SPMNoAnchor())
ERASERS.add("spm-hardened", SPMHardened())  # ours (issue 20): run when named; `--erasers all` is unchanged
load_released(registry=ERASERS)  # YAML files: spmbench/erasers/released/, SPMBENCH_ERASERS


def family_problem(cells) -> str | None:
    """One line naming the first of a run's cells (runner.Cell) whose eraser cannot run on its model's
    family (Eraser.unsupported), and what to leave out; None when every cell can run."""
    for cell in cells:
        problem = ERASERS.get(cell.eraser).family_problem(cell.model.family)
        if problem:
            fix = f"leave {cell.eraser} out of --erasers or {cell.model.name} out of --models"
            return f"{problem} ({cell.model.name}); {fix}"
    return None


__all__ = ["ABLATIONS", "BUILTIN", "ERASERS", "Eraser", "family_problem"]
