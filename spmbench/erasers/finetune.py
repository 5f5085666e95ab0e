"""The fine-tuning that ESD and Concept Ablation share: a resumable loop over a trained copy of the
UNet (`finetune`), the guided DDIM sampler both draw x_t with (`rollout`), and their noise and
prediction helpers. Checkpoints go through `spm.Checkpoint`: tied to the fit's settings, atomic."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from spm import Checkpoint


def predict(unet: nn.Module, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
    """eps(x, t, cond) in float32, whatever the UNet's dtype; `x` is broadcast over the conditions."""
    x = x.expand(len(cond), -1, -1, -1) if len(x) == 1 else x
    return unet(x.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample.float()


@torch.no_grad()
def rollout(
    unet: nn.Module, ddim, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, guidance: float, steps: int
) -> torch.Tensor:
    """The first `steps` of `ddim`'s timesteps of classifier-free guided DDIM sampling from x."""
    for t in ddim.timesteps[:steps]:
        e_u, e_c = predict(unet, torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
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
