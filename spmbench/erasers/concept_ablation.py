"""Concept Ablation, model-based (Kumari et al., ICCV 2023): make the target prompt produce the
anchor concept's distribution, as the original model's own predictions define it.

Images of the anchor concept c (e.g. "a dog" for "Snoopy"; "" = unconditional) are generated once
by the original model (latents x_0, classifier-free guided DDIM). Then, on their noised versions
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at random t, the fine-tuned model's prediction for a
target prompt c* is pulled onto the frozen original's prediction for the anchor:

    L = || eps_theta(x_t, c*, t) - sg(eps_0(x_t, c, t)) ||^2

Trained: the cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`), the paper's
default "cross-attention" variant. The artifact is the weight delta over them (`delta.py`), with
every iteration's loss in its metadata ("losses").

Defaults, SD-scale: the paper fine-tunes at lr 2e-6 with batch 8 for a few hundred steps on 200
generated anchor images; we take 400 iterations (the upper end, so the target is ablated rather
than only dented), 200 anchor images of 50 DDIM steps at guidance 7.5 (the usual SD sampling).
Smaller models override these in their spec (`eraser_settings`).

SDXL: the same, with every UNet call conditioned as its pipeline conditions it (`finetune.py`) and the
anchor images guided against the pipeline's own unconditional branch. SD3 is refused (`finetune.NOT_ON_SD3`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spm import Conditioning
from spmbench.erasers.base import require_counts, require_positive
from spmbench.erasers.esd import FinetunedEraser
from spmbench.erasers.finetune import (
    conditioning,
    ddim_for,
    finetune,
    fit_settings,
    latent_noise,
    predict,
    rollout,
    unconditional,
)


def key_value(name: str) -> bool:
    return ".attn2.to_k." in f".{name}" or ".attn2.to_v." in f".{name}"


def anchor_conditioning(pipe, anchor: str) -> Conditioning:
    """The anchor's conditioning; "" is the pipeline's unconditional branch (zeros for SDXL base)."""
    return unconditional(pipe) if anchor == "" else conditioning(pipe, [anchor])


@torch.no_grad()
def anchor_latents(
    pipe, anchor: str, n: int, resolution: int, steps: int, guidance: float, gen: torch.Generator, batch: int = 8
) -> torch.Tensor:
    """x_0 latents of `n` images of `anchor` from the original model (`steps` guided DDIM steps)."""
    ddim = ddim_for(pipe)
    ddim.set_timesteps(steps)
    c_anchor, c_empty = anchor_conditioning(pipe, anchor), unconditional(pipe)
    chunks = []
    for start in range(0, n, batch):
        size = min(batch, n - start)
        x = latent_noise(pipe, size, resolution, gen) * ddim.init_noise_sigma
        cond, uncond = c_anchor.expand(size), c_empty.expand(size)
        chunks.append(rollout(pipe.unet, ddim, x, cond, uncond, guidance, steps, resolution))
    return torch.cat(chunks)


@dataclass(frozen=True)
class ConceptAblationSettings:
    """anchor: the concept the targets are ablated to ("" = unconditional); anchor_images generated
    by the original model with `sample_steps` DDIM steps at `guidance_scale`; batch_size per step."""

    anchor: str = ""
    iterations: int = 400
    lr: float = 2e-6
    batch_size: int = 8
    anchor_images: int = 200
    sample_steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0

    def __post_init__(self):
        require_counts(self, "iterations", "batch_size", "anchor_images", "sample_steps")
        require_positive(self, "lr")


class ConceptAblation(FinetunedEraser):
    name = "ca"
    Settings = ConceptAblationSettings
    checkpoint_every = 100

    def train(
        self,
        pipe,
        targets: tuple[str, ...],
        resolution: int,
        settings: ConceptAblationSettings,
        checkpoint: Path | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[float]]:
        """The deltas and per-iteration losses of a Concept Ablation fit."""
        from diffusers import DDIMScheduler

        cfg = asdict(settings)
        gen = torch.Generator().manual_seed(int(cfg["seed"]))
        # Drawn before any resumed generator state, so a resumed fit regenerates the same images.
        x0 = anchor_latents(
            pipe, cfg["anchor"], int(cfg["anchor_images"]), resolution, int(cfg["sample_steps"]),
            cfg["guidance_scale"], gen,
        )  # fmt: skip
        noise_schedule = DDIMScheduler.from_config(pipe.scheduler.config)  # add_noise: the training q(x_t | x_0)
        c_targets, c_anchor = conditioning(pipe, targets), anchor_conditioning(pipe, cfg["anchor"])
        n, device = int(cfg["batch_size"]), x0.device

        def step_loss(trained: nn.Module, gen: torch.Generator) -> torch.Tensor:
            images = x0[torch.randint(len(x0), (n,), generator=gen).to(device)]
            t = torch.randint(noise_schedule.config.num_train_timesteps, (n,), generator=gen).to(device)
            noise = torch.randn(images.shape, generator=gen).to(device)
            x_t = noise_schedule.add_noise(images, noise, t)
            c = c_targets[torch.randint(len(targets), (n,), generator=gen).to(c_targets.states.device)]
            with torch.no_grad():
                goal = predict(pipe.unet, x_t, t, c_anchor.expand(n), resolution)
            return F.mse_loss(predict(trained, x_t, t, c, resolution), goal)

        return finetune(
            pipe, key_value, step_loss, int(cfg["iterations"]), cfg["lr"], gen, self.name,
            checkpoint, self.checkpoint_every, fit_settings(pipe, self.name, targets, cfg, resolution),
        )  # fmt: skip
