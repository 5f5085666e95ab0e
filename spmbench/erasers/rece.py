"""RECE (Gong et al., 2024): UCE, then rounds of closed-form adversarial embeddings erased in turn.

UCE maps the target's token embeddings c to the guide's outputs, but another embedding e may still
make the edited key/value projections W' produce the target's ORIGINAL outputs W c. Each round finds
the one that does best, jointly over every cross-attention key and value projection, in closed form
(ridge regression):

    e = argmin_e sum_W |W' e - W c|^2 + lambda_reg |e|^2 = (sum W'^T W' + lambda_reg I)^-1 sum W'^T W c

(row by row for the target's tokens), adds it to the erase set, mapped to the same guide outputs as
the target, and solves the UCE closed form again from the ORIGINAL weights with the enlarged erase
set and the preserve set. `rounds=0` is UCE exactly. The artifact is a weight delta, like UCE's.

Settings: guide ("" = the empty prompt), preserve (prompts kept), lam (0.5, UCE's pull towards the
original weights), rounds (3), lambda_reg (1e-3: a small ridge, as in the paper, so that the found
embedding is set by the edited weights rather than shrunk towards zero).

SDXL as UCE (its concatenated encoders' states, d = 2048 for SDXL base); SD3 refused as UCE is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spmbench.erasers.base import Eraser, require_counts
from spmbench.erasers.delta import applied, save_delta
from spmbench.erasers.uce import NOT_ON_SD3, UCESettings, closed_form, cross_attention_projections, edit_rows


def adversarial_embedding(
    edited: list[torch.Tensor], original: list[torch.Tensor], target: torch.Tensor, lambda_reg: float
) -> torch.Tensor:
    """The embeddings (n, d) whose outputs through the `edited` projections best reproduce the
    `original` projections' outputs of `target` (n, d), all projections jointly, ridge `lambda_reg`."""
    d = target.shape[1]
    gram = lambda_reg * torch.eye(d, dtype=torch.float64, device=target.device)
    cross = torch.zeros(d, d, dtype=torch.float64, device=target.device)
    for w_new, w in zip(edited, original, strict=True):
        w_new, w = w_new.double(), w.double()
        gram += w_new.T @ w_new
        cross += w_new.T @ w
    return torch.linalg.solve(gram, cross @ target.double().T).T.to(target.dtype)


def rece_edit(
    weights: dict[str, torch.Tensor],
    erase: torch.Tensor,
    guide: torch.Tensor,
    preserve: torch.Tensor,
    lam: float,
    rounds: int,
    lambda_reg: float,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The edited projections after UCE and `rounds` rounds, and the embeddings found, one per round."""
    edited = {n: closed_form(w, erase, guide, preserve, lam) for n, w in weights.items()}
    c, g, found = erase, guide, []
    for _ in range(rounds):
        e = adversarial_embedding(list(edited.values()), list(weights.values()), erase, lambda_reg)
        found.append(e)
        c, g = torch.cat([c, e]), torch.cat([g, guide])  # e is erased towards the target's guide
        edited = {n: closed_form(w, c, g, preserve, lam) for n, w in weights.items()}
    return edited, found


@dataclass(frozen=True)
class RECESettings(UCESettings):
    """UCE's settings, plus rounds of adversarial embeddings and the ridge that finds them."""

    rounds: int = 3
    lambda_reg: float = 1e-3

    def __post_init__(self):
        require_counts(self, "rounds", least=0)


class RECE(Eraser):
    name = "rece"
    Settings = RECESettings
    unsupported = dict.fromkeys(("sd3", "flux"), NOT_ON_SD3)

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings: RECESettings) -> None:
        c, g, p = edit_rows(pipe, targets, settings.guide, settings.preserve)
        layers = cross_attention_projections(pipe.unet)
        weights = {name: layer.weight.detach().float() for name, layer in layers.items()}
        device = next(iter(weights.values())).device
        edited, _ = rece_edit(
            weights, c.to(device), g.to(device), p.to(device), settings.lam, settings.rounds, settings.lambda_reg
        )
        deltas = {f"{name}.weight": edited[name] - w for name, w in weights.items()}
        save_delta(path, deltas, method="rece", targets=list(targets), settings=asdict(settings))

    def apply(self, pipe, artifacts: list[Path]):
        return applied(pipe, artifacts)
