"""Prompting4Debugging-style white-box attack (Chin et al., ICML 2024), its P4D-N variant: optimise N free prompt
token embeddings (N = the budget's `tokens`) so that the erased model's noise prediction on noised latents of the
target's images matches the noise the original (unerased) model predicts from the target prompt, projecting to
the nearest real tokens at every step (PEZ-style), and return the discrete prompts.

It is UnlearnDiffAtk's search (spmbench.attacks.uda: the same reference set from the original model, the same
straight-through projection, restarts and candidate choice) with P4D's prompt: the N tokens are the whole
prompt, drawn from a vocabulary without the target's words (the target's own name would be the plain prompt,
whose rate the table has already). Why P4D-N rather than P4D-K (a token inserted after every K tokens of the
target prompt): the targets of our applications are names of one or a few tokens, where P4D-K's slots would be
one or two and its prompt UnlearnDiffAtk's with the tokens moved; P4D-N spends the budget's `tokens` as they are
declared and asks what uda does not: whether a prompt that does not name the concept brings it back.

Not adaptive: against SPM with Facilitated Transport the loss runs the membrane at its fixed weights (full
strength) whatever the prompt, as P4D attacks a safe model's weights; FT's gamma is never computed, so the
prompts found are the same with FT on or off, and are then generated with FT in effect. (adaptive-ft's "free"
layout is the same search with FT's gamma in the loss.)
"""

from __future__ import annotations

from spmbench.attacks.base import ATTACKS
from spmbench.attacks.uda import UDA, SoftPromptSettings


class P4D(UDA):
    """`tokens` free tokens without the target's words (P4D-N), `restarts` prompts; blind to FT."""

    name = "p4d"
    Settings = SoftPromptSettings
    keeps_target = False
    through_transport = False


ATTACKS.add("p4d", P4D())
