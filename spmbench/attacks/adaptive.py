"""The adaptive attack on SPM with Facilitated Transport: UnlearnDiffAtk (spmbench.attacks.uda) that also
drives FT's permeability down. FT decides the membrane's strength from the prompt, so a prompt that names the
target (FT's token overlap: gamma 1) meets the whole membrane: this attack's prompt is its adversarial tokens
alone, never the target's words, and its loss adds `gamma_weight` times the gamma FT gives the prompt
(differentiable in the prompt's states: spm.Transport.of_states). Against an eraser without FT it is the
same search without the gamma term.
"""

from __future__ import annotations

from dataclasses import dataclass

from spmbench.attacks.base import ATTACKS
from spmbench.attacks.uda import UDA, UDASettings


@dataclass(frozen=True)
class AdaptiveSettings(UDASettings):
    gamma_weight: float = 1.0


class AdaptiveFT(UDA):
    name = "adaptive-ft"
    Settings = AdaptiveSettings
    adaptive = True
    keeps_target = False


ATTACKS.add("adaptive-ft", AdaptiveFT())
