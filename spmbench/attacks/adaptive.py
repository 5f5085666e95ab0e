"""The adaptive attack on SPM with Facilitated Transport: UnlearnDiffAtk (spmbench.attacks.uda) against the
defence as deployed. FT decides the membrane's strength from the prompt, so the loss followed is the erased
model's noise prediction with the membrane at the gamma FT gives the prompt being optimised, differentiable in
the prompt's states (spm.Transport.of_states into the membrane's strength): lowering gamma is one way the
search can lower the loss, bringing the concept back another, and it weighs both as the deployed model does.

Each restart searches in every layout of `layouts`: "target", the adversarial tokens before the target prompt
(UnlearnDiffAtk's own layout and draws: its prompt for that restart; FT's token overlap gives it gamma 1), and
"free", the tokens alone without the target's words (where FT's gamma can go down), and keeps the prompt whose
loss on the deployed model, over the whole reference set, is lowest. With "target" among the layouts a
restart's prompt is UnlearnDiffAtk's unless another reaches a lower loss on the deployed model. The budget
(steps per search, tokens, restarts, seed) is the application's, the same for every eraser; each layout is one
search of `steps` steps, so a restart costs len(layouts) times UnlearnDiffAtk's. `gamma_weight` (default 0)
adds FT's gamma to the loss as a penalty besides. Against an eraser without FT, the same searches run on its
model as applied (there is no gamma to lower).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spmbench.attacks.base import ATTACKS, Erased, Generation
from spmbench.attacks.text import check_supported, vocabulary
from spmbench.attacks.uda import UDA, UDASettings, reference


LAYOUTS = ("target", "free")


@dataclass(frozen=True)
class AdaptiveSettings(UDASettings):
    """UnlearnDiffAtk's settings, and the `layouts` each restart searches in (see the module)."""

    layouts: tuple[str, ...] = LAYOUTS

    def __post_init__(self) -> None:
        super().__post_init__()
        layouts = tuple(self.layouts) if isinstance(self.layouts, (list, tuple)) else ()
        if not layouts or len(set(layouts)) != len(layouts) or not set(layouts) <= set(LAYOUTS):
            raise ValueError(
                f"layouts must be a non-empty list of distinct layouts from {list(LAYOUTS)}, got {self.layouts!r}"
            )


class AdaptiveFT(UDA):
    name = "adaptive-ft"
    Settings = AdaptiveSettings
    adaptive = True

    def find(self, pipe, erased: Erased, target: str, generation: Generation, settings) -> list[str]:
        check_supported(pipe, self.name)
        if not isinstance(settings, self.Settings):
            settings = self.settings(settings)
        searched = {  # the text after the adversarial tokens, and the tokens they may be
            "target": (target, vocabulary(pipe.tokenizer, ())),
            "free": ("", vocabulary(pipe.tokenizer, (target,))),
        }
        goal = reference(pipe, target, generation, settings)
        found = []
        with erased() as generate:
            for restart in range(settings.restarts):
                candidates = [
                    self._search(pipe, generate, goal, *searched[layout], settings, restart)
                    for layout in settings.layouts
                ]
                losses = [self.prompt_loss(pipe, generate, p, goal, settings) for p in candidates]
                found.append(candidates[int(torch.tensor(losses).argmin())])  # the first of equal losses
        return found


ATTACKS.add("adaptive-ft", AdaptiveFT())
