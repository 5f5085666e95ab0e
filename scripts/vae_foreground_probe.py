"""Probe (issue 19, world v3's shape bars): train a toy VAE with each pixel's reconstruction loss weighted
1 + K x its foreground fraction (K = 0: the VAE stage's unweighted loss), with the VAE stage's recipe otherwise
(base dialect renders only), and every 500 steps print how often world v3's judge reads the shape of the card's
object and styled-object scenes (200 per split) after the VAE: the ceiling the card's shape bars sit under.

    python scripts/vae_foreground_probe.py K STEPS      # e.g. 8 1500; 0 1500 for the unweighted curve

The foreground is the renderer's own: the scene rendered with its seed again over flat black and white
backgrounds (the background draws its random numbers as usual, so the shapes land where they did).
Session 25 (one seed, 2026-12-02): K = 8 read styled objects 46.5 / 41.5 % (train / test) at 500 steps and
60.0 / 54.5 % at 1,000, 71.5 / 63.5 % at 1,500; the VAE stage's own recipe (all dialects, unweighted) 16.0 / 15.0 and 41.0 / 36.5 %.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from spmbench.toy import models, train, worlds
from spmbench.toy.data import to_tensor
from spmbench.toy.measure import judge_predictions
from spmbench.toy.v3 import captions, card, data, render


def flat_painter(value: float):
    """The world's painter with every background replaced by `value` after drawing it (same random draws)."""

    def background(img, scene, rng):
        render._background(img, scene, rng)
        img[:] = value

    return dataclasses.replace(render.PAINTER, background=background)


BLACK, WHITE = flat_painter(0.0), flat_painter(255.0)


def weighted_batch(rng: np.random.Generator, n: int, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n renders in [-1, 1] and each pixel's loss weight 1 + k x its foreground fraction."""
    images, weights = [], []
    for _ in range(n):
        _, scene = captions.sample(rng, split="train", mix=data.DIALECTS["base"]["mix"])
        seed = int(rng.integers(2**31))
        images.append(render.render(scene, seed))
        over_black, over_white = (p.render(scene, seed).astype(np.float32) for p in (BLACK, WHITE))
        weights.append(1.0 - (over_white - over_black).mean(-1) / 255.0)
    return to_tensor(images) * 2 - 1, 1.0 + k * torch.from_numpy(np.stack(weights))[:, None]


@torch.no_grad()
def shape_read(vae, judge) -> dict[str, float]:
    """% of the card's object and styled-object scenes whose shape the judge reads after the VAE."""
    out = {}
    for form in ("object", "styled-object"):
        for split in ("train", "test"):
            scenes = [s for _, s in card.prompts_for(form, 200, split)]
            images = to_tensor([render.render(s, i) for i, s in enumerate(scenes)])
            read = judge_predictions(judge, models.reconstruct(vae, images).cpu())["subject"]
            right = read == data.label_tensors(scenes)["subject"]
            out[f"{form} ({split})"] = round(100 * float(right.float().mean()), 1)
    return out


def main(k: float, steps: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = models.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-4, weight_decay=0.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    judge = models.load_judge(worlds.get(3).weights / "judge").eval()
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 3e-4 * train._warmup(step, 200)
        x, weight = weighted_batch(rng, 64, k)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(models.sample_latent(posterior, gen)).sample
        error = ((rec - x).abs() + (rec - x).square()) * weight
        loss = error.mean() / weight.mean() + 1e-4 * posterior.kl().mean() / x[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            mse = F.mse_loss(rec, x).item()
            print(
                f"K={k:g} step {step + 1} ({time.time() - start:.0f} s) mse {mse:.4f}", shape_read(vae.eval(), judge)
            )
            vae.train()
    vae.save_pretrained(f"vae_fg{k:g}")  # in the working folder


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]))
