"""Attacks: red-teaming an erased model, one file each, behind one interface (`Attack.find` -> prompts).

- `uda`: white-box prompt optimisation in the style of UnlearnDiffAtk (spmbench.attacks.uda);
- `adaptive-ft`: the same, adaptive to SPM's Facilitated Transport (spmbench.attacks.adaptive);
- `p4d`: the same search with Prompting4Debugging's free tokens (P4D-N), not adaptive (spmbench.attacks.p4d);
- `rab`: model-agnostic concept vectors searched into tokens, in the style of Ring-A-Bell (spmbench.attacks.rab).
"""

from spmbench.attacks.adaptive import AdaptiveFT
from spmbench.attacks.base import ATTACKS, Attack, AttackSettings, Generation
from spmbench.attacks.p4d import P4D
from spmbench.attacks.rab import RingABell
from spmbench.attacks.uda import UDA


__all__ = ["ATTACKS", "AdaptiveFT", "Attack", "AttackSettings", "Generation", "P4D", "RingABell", "UDA"]
