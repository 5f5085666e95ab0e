"""The fine-tuning that ESD and Concept Ablation share: a resumable loop over a trained copy of the
UNet (`finetune`), the guided DDIM sampler both draw x_t with (`rollout`), and their noise, conditioning
and prediction helpers. Checkpoints go through `spm.Checkpoint`: tied to the fit's settings, atomic.

Conditions are `spm.Conditioning`s, so one loop serves SD 1.x/2.x (the text encoder's states) and SDXL
(both encoders' states, the pooled embedding, and the added time ids the pipeline passes for the image size).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from spm import Checkpoint, Conditioning, encode_prompts
from spm.train import ddim_scheduler


if TYPE_CHECKING:
    from diffusers import DDIMScheduler


# Why ESD and Concept Ablation refuse SD3 and FLUX.1: both are defined on a UNet's noise prediction and DDIM steps.
NOT_ON_SD3 = (
    "its fine-tuning is defined on a UNet's noise predictions along DDIM steps; SD3 and FLUX.1 are flow-matching "
    "transformers (velocities, no UNet), for which it is not implemented"
)


def conditioning(pipe, prompts: Sequence[str]) -> Conditioning:
    """What the pipeline conditions its UNet on for `prompts` (SD 1.x/2.x: states only; SDXL: with pooled)."""
    encoded = encode_prompts(pipe, list(prompts))
    return encoded if isinstance(encoded, Conditioning) else Conditioning(encoded)


def unconditional(pipe) -> Conditioning:
    """The pipeline's own unconditional branch, which "" stands for: the empty prompt's states, or zeros for an
    SDXL pipeline that forces them (`force_zeros_for_empty_prompt`, SDXL base), as its `encode_prompt` does
    and as `spm.train` takes it."""
    empty = conditioning(pipe, [""])
    if empty.pooled is not None and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return Conditioning(torch.zeros_like(empty.states), torch.zeros_like(empty.pooled))
    return empty


def ddim_for(pipe) -> DDIMScheduler:
    """A DDIM scheduler on the pipeline's noise schedule, on the grid a DDIM-config pipeline samples whatever
    sampler the pipeline ships (toy world v3's DPM-Solver too), never clipping latents: `spm.train`'s."""
    return ddim_scheduler(pipe)


def predict(unet: nn.Module, x: torch.Tensor, t, cond: Conditioning, pixels: int) -> torch.Tensor:
    """eps(x, t, cond) in float32, whatever the UNet's dtype; `x` is broadcast over the conditions; `pixels`:
    the image size SDXL's added time ids say (original = target size, no crop, as its pipeline passes)."""
    x = x.expand(len(cond), -1, -1, -1) if len(x) == 1 else x
    pooled = None if cond.pooled is None else cond.pooled.to(unet.dtype)
    kwargs = Conditioning(cond.states.to(unet.dtype), pooled).unet_kwargs(pixels, pixels)
    return unet(x.to(unet.dtype), t, **kwargs).sample.float()


@torch.no_grad()
def rollout(
    unet: nn.Module,
    ddim,
    x: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    guidance: float,
    steps: int,
    pixels: int,
) -> torch.Tensor:
    """The first `steps` of `ddim`'s timesteps of classifier-free guided DDIM sampling from x."""
    both = Conditioning.cat([uncond, cond])
    for t in ddim.timesteps[:steps]:
        e_u, e_c = predict(unet, torch.cat([x, x]), t, both, pixels).chunk(2)
        x = ddim.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


def latent_noise(pipe, n: int, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """Pure noise latents for `resolution`-pixel images, drawn on the CPU (reproducible on any device)."""
    size = resolution // pipe.vae_scale_factor
    return torch.randn(n, pipe.unet.config.in_channels, size, size, generator=gen).to(pipe.unet.device)


def fit_settings(pipe, method: str, targets: tuple[str, ...], cfg: dict, resolution: int) -> list:
    """What a fit's checkpoint is tied to: resuming it under anything else would mix two fits."""
    return [method, list(targets), cfg, resolution, str(pipe.name_or_path)]


def finetune(
    pipe,
    trainable: Callable[[str], bool],
    step_loss: Callable[[nn.Module, torch.Generator], torch.Tensor],
    iterations: int,
    lr: float,
    gen: torch.Generator,
    desc: str,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    settings: list | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Adam on the `trainable` parameters of a float32 copy of `pipe.unet` (so `pipe` is never
    touched), one `step_loss(trained_unet, gen)` per iteration. Returns the deltas (trained minus
    original, by parameter name) and the losses. A checkpoint made with the same `settings` is resumed."""
    trained = copy.deepcopy(pipe.unet).float().requires_grad_(False)
    params = {name: p for name, p in trained.named_parameters() if trainable(name)}
    if not params:
        raise ValueError(f"{desc}: no UNet parameter is selected for training")
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=float(lr))
    ckpt = Checkpoint(checkpoint, settings, checkpoint_every)
    state = {"params": list(params.values()), "opt": opt, "gen": gen}
    start, extra = ckpt.resume(state)
    losses = list(extra.get("losses", []))
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=desc)
    for step in bar:
        loss = step_loss(trained, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if ckpt.due(step + 1) and step + 1 < iterations:
            ckpt.save(step + 1, state, losses=losses)
    if start < iterations:  # the trained weights, until the caller has saved them: a full disk loses no training
        ckpt.save_finished(iterations, {"params": state["params"], "gen": gen}, losses=losses)
    originals = dict(pipe.unet.named_parameters())
    deltas = {name: p.detach() - originals[name].detach().float() for name, p in params.items()}
    return deltas, losses
