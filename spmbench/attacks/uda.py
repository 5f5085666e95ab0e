"""UnlearnDiffAtk-style white-box attack (Zhang et al., 2024): optimise a few prompt token embeddings so that
the erased model predicts, on noised latents of the target's images, the noise the original model predicts
from the target prompt; each step runs the embeddings projected to their nearest real tokens (straight-through,
as in PEZ), so the loss followed is the discrete prompt's. The attack returns the discrete prompts.

The erased model is whatever the eraser's `apply` leaves in the pipeline: its UNet and text encoder, edited or
wrapped in place (SPM's membranes, ESD's or UCE's weights). Where the eraser is SPM with Facilitated Transport,
the permeability is computed from the adversarial prompt's states at every step, so the gradient passes through
FT's gamma as the deployed model would compute it. Inference-time erasers that act only in `generate`
(negative prompts, SLD) are attacked through their model's weights, which they leave as they are: the attack
ignores them (it is not adaptive to them) and the found prompts are then generated with them in effect.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import spm
from spmbench.attacks.base import (
    ATTACKS,
    Attack,
    AttackSettings,
    Erased,
    Generation,
    require_nonnegative,
    seeded,
)
from spmbench.attacks.text import check_supported, encode_soft, ids_for, nearest, prompt_of, vocabulary
from spmbench.erasers.base import require_counts, require_positive
from spmbench.erasers.finetune import ddim_for


@dataclass(frozen=True)
class SoftPromptSettings(AttackSettings):
    """The budget (steps, tokens, restarts, seed) and: Adam's learning rate on the token embeddings; the
    reference set, `images` made by the original model from the target times `timesteps` noise levels each;
    `batch` of them per step. Every attack built on this search (uda, adaptive-ft, p4d) has these."""

    lr: float = 0.1
    images: int = 2
    timesteps: int = 8
    batch: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "lr")
        require_counts(self, "images", "timesteps", "batch")


@dataclass(frozen=True)
class UDASettings(SoftPromptSettings):
    """The search's settings and `gamma_weight`, how much FT's permeability of the prompt adds to the loss
    (0: the attack ignores the defence)."""

    gamma_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative(self, "gamma_weight")


@dataclass(frozen=True)
class Reference:
    """Noised latents of the target's images, their timesteps and the original model's noise for them."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


@torch.no_grad()
def reference(pipe, target: str, generation: Generation, settings: SoftPromptSettings) -> Reference:
    """What the erased model should reproduce, made by the original model: `images` samples of the target
    prompt, each noised at `timesteps` random levels, with the original's (conditional) noise prediction."""
    seeds = [settings.seed * 1000 + i for i in range(settings.images)]
    clean = pipe(
        [target] * settings.images, num_inference_steps=generation.steps, guidance_scale=generation.guidance,
        height=generation.resolution, width=generation.resolution, output_type="latent",
        generator=[seeded(s) for s in seeds],
    ).images  # fmt: skip
    states = spm.encode_prompts(pipe, [target])
    draw, levels = seeded(settings.seed), pipe.scheduler.config.num_train_timesteps
    latents, timesteps, noise = [], [], []
    for _ in range(settings.timesteps):
        t = torch.randint(0, levels, (len(clean),), generator=draw)
        x = noised(pipe, clean, torch.randn(clean.shape, generator=draw).to(clean), t)
        latents.append(x)
        timesteps.append(t)
        noise.append(pipe.unet(x, t.to(x.device), encoder_hidden_states=states.expand(len(x), -1, -1)).sample)
    return Reference(torch.cat(latents), torch.cat(timesteps), torch.cat(noise))


def noised(pipe, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The training q(x_t | x_0) on the pipeline's noise schedule: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. Not the
    pipeline scheduler's own add_noise: a DPM-Solver's looks t up among its sampling timesteps and noises every
    other t at its last one (toy world v3's pipelines); DDIM's takes any training timestep."""
    return ddim_for(pipe).add_noise(clean, noise, t.to(clean.device))


def defence_gamma(generate, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor | None:
    """SPM with Facilitated Transport: the (1, k) permeability the deployed model gives this prompt,
    differentiable in its states; None for any other eraser (its UNet runs as applied)."""
    if not isinstance(generate, spm.AttachedSPMs) or generate.transport is None:
        return None
    return generate.transport.of_states(states, ids) * generate.weights


class UDA(Attack):
    """`tokens` adversarial tokens before the target prompt (UnlearnDiffAtk's layout), `restarts` prompts."""

    name = "uda"
    Settings = UDASettings
    keeps_target = True  # the adversarial tokens go before the target prompt; False: they are the whole prompt
    # The loss runs SPM with FT at the gamma FT gives the prompt being optimised; False: the membrane at its fixed
    # weights whatever the prompt (the attack does not see FT; its prompts are still generated with FT on).
    through_transport = True

    def find(self, pipe, erased: Erased, target: str, generation: Generation, settings) -> list[str]:
        check_supported(pipe, self.name)
        if not isinstance(settings, self.Settings):
            settings = self.settings(settings)
        text = target if self.keeps_target else ""
        allowed = vocabulary(pipe.tokenizer, () if self.keeps_target else (target,))
        goal = reference(pipe, target, generation, settings)
        with erased() as generate:
            return [self._search(pipe, generate, goal, text, allowed, settings, r) for r in range(settings.restarts)]

    def _search(self, pipe, generate, goal: Reference, text: str, allowed, settings: UDASettings, restart: int) -> str:
        """One restart: the prompt with the lowest loss over the whole reference set, of the last step's and the
        step with the lowest batch loss."""
        draw = seeded(settings.seed * 7919 + restart + 1)
        table = pipe.text_encoder.get_input_embeddings().weight.detach()
        words = allowed[torch.randint(len(allowed), (settings.tokens,), generator=draw)]
        soft = table[words].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([soft], lr=settings.lr)
        positions = list(range(1, 1 + settings.tokens))
        best_loss, best_words = math.inf, words
        for _ in range(settings.steps):
            words = nearest(soft, table, allowed)
            ids = ids_for(pipe.tokenizer, words.tolist(), text)
            states = encode_soft(pipe.text_encoder, ids, positions, soft + (table[words] - soft).detach())
            batch = torch.randint(len(goal), (settings.batch,), generator=draw)
            loss = self._loss(pipe, generate, states, ids, goal, batch, settings)
            if loss.item() < best_loss:
                best_loss, best_words = loss.item(), words
            (soft.grad,) = torch.autograd.grad(loss, [soft])  # the models' own parameters get no gradients
            optimiser.step()
        candidates = {prompt_of(pipe.tokenizer, w.tolist(), text) for w in (best_words, nearest(soft, table, allowed))}
        return min(sorted(candidates), key=lambda p: self.prompt_loss(pipe, generate, p, goal, settings))

    def _loss(self, pipe, generate, states, ids, goal: Reference, rows, settings: UDASettings) -> torch.Tensor:
        """The erased model's noise prediction against the original's on the rows of the reference set, plus
        `gamma_weight` times FT's permeability of the prompt."""
        gamma = defence_gamma(generate, states, ids) if self.through_transport else None
        with nullcontext() if gamma is None else generate.permeable(gamma):
            x, t = goal.latents[rows], goal.timesteps[rows].to(goal.latents.device)
            predicted = pipe.unet(x, t, encoder_hidden_states=states.expand(len(rows), -1, -1)).sample
        loss = F.mse_loss(predicted.float(), goal.noise[rows].float())
        if gamma is not None and settings.gamma_weight:
            loss = loss + settings.gamma_weight * gamma.mean()
        return loss

    @torch.no_grad()
    def prompt_loss(self, pipe, generate, prompt: str, goal: Reference, settings: UDASettings) -> float:
        """The loss of a prompt string as the pipeline encodes it, over the whole reference set."""
        states, ids = spm.encode_prompts(pipe, [prompt], return_ids=True)
        rows = torch.arange(len(goal)).split(settings.batch)
        total = sum(self._loss(pipe, generate, states, ids, goal, r, settings).item() * len(r) for r in rows)
        return total / len(goal)


ATTACKS.add("uda", UDA())
