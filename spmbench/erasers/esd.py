"""ESD (Gandikota et al., ICCV 2023): erase a concept by negative-guidance self-distillation.

A frozen copy of the original UNet eps_0 teaches the fine-tuned one eps_theta to predict, for the
target prompt c, the noise of the original model guided AWAY from c:

    L = || eps_theta(x_t, c, t) - [eps_0(x_t, "", t) - eta (eps_0(x_t, c, t) - eps_0(x_t, "", t))] ||^2

x_t comes from the model being trained: a random number k of the T DDIM steps (`rollout_steps`)
of eps_theta, classifier-free guided towards c (`guidance_scale`), from pure noise; the training
step is then taken at that x_t and the DDIM timestep t_k. With several targets, one is drawn per
iteration. Two variants: ESD-x fine-tunes the cross-attention layers (parameters named `attn2`),
ESD-u every other UNet parameter. The paper's setting: 1000 iterations of Adam at lr 1e-5, eta 1.

The artifact is the weight delta W' - W over the trained parameters (`delta.py`), so it also
applies to other models of the family; the loss of every iteration is in its metadata ("losses").

The fine-tuning loop and the guided DDIM sampler are shared with Concept Ablation (`finetune.py`).

SDXL: the same loss, every UNet call conditioned as the SDXL pipeline conditions it (both encoders' states,
the pooled embedding, the added time ids of the fitted resolution); "" is the pipeline's own unconditional
branch (zeros for SDXL base). ESD-u leaves out SDXL's added embedding too (`add_embedding`: the pooled text
and time ids, a text-conditioned input like the time embedding the authors leave out). SD3 is refused.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spm import Conditioning
from spm.files import training_kept_in
from spmbench.erasers.base import Eraser, require_counts, require_positive
from spmbench.erasers.delta import applied, save_delta
from spmbench.erasers.finetune import (
    NOT_ON_SD3,
    conditioning,
    ddim_for,
    finetune,
    fit_settings,
    latent_noise,
    predict,
    rollout,
    unconditional,
)


def cross_attention(name: str) -> bool:
    return ".attn2." in f".{name}."


def unconditional_layers(name: str) -> bool:
    """ESD-u's set, as in the authors' code: all but cross-attention, the time embedding and the
    output block (conv_norm_out / conv_out in diffusers' names); on SDXL also its added embedding
    (pooled text and time ids: text-conditioned, as the time embedding is conditioning)."""
    return not (
        cross_attention(name) or name.startswith(("time_embedding.", "add_embedding.", "conv_norm_out.", "conv_out."))
    )


VARIANTS: dict[str, Callable[[str], bool]] = {
    "x": cross_attention,  # ESD-x: the cross-attention layers only
    "u": unconditional_layers,  # ESD-u: the rest, but for time embedding and output
}


class FinetunedEraser(Eraser):
    """What ESD and Concept Ablation share: fit = resumable fine-tuning (`train`) stored as a weight
    delta; apply = that delta. Subclasses set `name`, `Settings`, `checkpoint_every` and implement `train`."""

    checkpoint_every: int
    unsupported = dict.fromkeys(("sd3", "flux"), NOT_ON_SD3)

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings) -> None:
        ckpt = self.checkpoint_path(path)
        deltas, losses = self.train(pipe, targets, resolution, settings, ckpt)
        cfg = asdict(settings)
        with training_kept_in(ckpt):
            save_delta(path, deltas, method=self.name, targets=list(targets), settings=cfg, losses=losses)
        ckpt.unlink(missing_ok=True)

    @abstractmethod
    def train(
        self, pipe, targets: tuple[str, ...], resolution: int, settings, checkpoint: Path | None = None
    ) -> tuple[dict[str, torch.Tensor], list[float]]:
        """The deltas (trained minus original, by parameter name) and per-iteration losses."""

    def apply(self, pipe, artifacts: list[Path]):
        return applied(pipe, artifacts)


@dataclass(frozen=True)
class ESDSettings:
    """The paper's setting: 1000 iterations of Adam at lr 1e-5, eta (negative_guidance) 1, x_t from
    up to `rollout_steps` DDIM steps guided at `guidance_scale`."""

    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0
    rollout_steps: int = 50
    guidance_scale: float = 3.0
    seed: int = 0

    def __post_init__(self):
        require_counts(self, "iterations", "rollout_steps")
        require_positive(self, "lr")


class ESD(FinetunedEraser):
    Settings = ESDSettings
    checkpoint_every = 200

    def __init__(self, variant: str = "x"):
        if variant not in VARIANTS:
            raise ValueError(f"ESD variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant, self.name = variant, f"esd-{variant}"

    def train(
        self, pipe, targets: tuple[str, ...], resolution: int, settings: ESDSettings, checkpoint: Path | None = None
    ) -> tuple[dict[str, torch.Tensor], list[float]]:
        """The deltas and per-iteration losses of an ESD fit."""
        cfg = asdict(settings)
        gen = torch.Generator().manual_seed(int(cfg["seed"]))
        ddim = ddim_for(pipe)
        ddim.set_timesteps(int(cfg["rollout_steps"]))
        c_targets, c_empty = conditioning(pipe, targets), unconditional(pipe)
        eta, guidance = cfg["negative_guidance"], cfg["guidance_scale"]

        def step_loss(trained: nn.Module, gen: torch.Generator) -> torch.Tensor:
            i = int(torch.randint(len(targets), (), generator=gen))
            c = c_targets[i : i + 1]
            k = int(torch.randint(len(ddim.timesteps), (), generator=gen))  # DDIM steps already taken
            x = latent_noise(pipe, 1, resolution, gen) * ddim.init_noise_sigma
            x = rollout(trained, ddim, x, c, c_empty, guidance, k, resolution)  # x_t from the model being trained
            t = ddim.timesteps[k]
            with torch.no_grad():
                e_c, e_empty = predict(pipe.unet, x, t, Conditioning.cat([c, c_empty]), resolution).chunk(2)
            return F.mse_loss(predict(trained, x, t, c, resolution), e_empty - eta * (e_c - e_empty))

        return finetune(
            pipe, VARIANTS[self.variant], step_loss, int(cfg["iterations"]), cfg["lr"], gen, self.name,
            checkpoint, self.checkpoint_every, fit_settings(pipe, self.name, targets, cfg, resolution),
        )  # fmt: skip
