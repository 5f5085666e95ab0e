"""Erasers: every method (SPM and the baselines) behind one fit/apply interface, one file each."""

from spmbench.erasers.base import ERASERS, Eraser
from spmbench.erasers.negative_prompt import NegativePrompt
from spmbench.erasers.none import Original
from spmbench.erasers.sld import PRESETS, SLD
from spmbench.erasers.spm import SPMEraser
from spmbench.erasers.uce import UCE


ERASERS.add("none", Original())
ERASERS.add("spm", SPMEraser(transport=True))
ERASERS.add("spm-noft", SPMEraser(transport=False))
ERASERS.add("negprompt", NegativePrompt())
ERASERS.add("uce", UCE())
for _preset in PRESETS:
    ERASERS.add(f"sld-{_preset}", SLD(_preset))

__all__ = ["ERASERS", "Eraser"]
