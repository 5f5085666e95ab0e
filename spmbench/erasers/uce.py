"""UCE (Gandikota et al., 2024): a closed-form edit of the cross-attention key/value projections.

For each `attn2.to_k` / `attn2.to_v` weight W, with erased token embeddings c_i mapped to their
guide's outputs v_i = W g_i, and preserved embeddings c_p kept where they are:

    W' = (lam W + sum_i v_i c_i^T + sum_p W c_p c_p^T) (lam I + sum_i c_i c_i^T + sum_p c_p c_p^T)^-1

i.e. the least-squares solution of sum_i |W' c_i - v_i|^2 + sum_p |W' c_p - W c_p|^2 + lam |W' - W|_F^2.
The artifact is the weight delta W' - W (`delta.py`), so it also applies to other models of the family.

SDXL: the same edit of its `attn2.to_k` / `to_v`, whose inputs are both text encoders' penultimate states,
concatenated (2048-d for SDXL base): the rows are those states (`spm.encode_prompts(...).states`), picked by
the first tokenizer's end token (both tokenizers split a prompt alike; the second pads with "!"). The
pooled embedding feeds no cross-attention and is not edited. SD3 is refused (`NOT_ON_SD3`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from spm import Conditioning, encode_prompts
from spmbench.erasers.base import Eraser
from spmbench.erasers.delta import applied, save_delta


# Why UCE and RECE refuse SD3 and FLUX.1: there is no projection that reads the text encoders' states.
NOT_ON_SD3 = (
    "its closed-form edit targets a UNet's cross-attention K/V projections (which read the text encoders' "
    "states); an MMDiT's joint attention (SD3, FLUX.1) has none: its text tokens are re-projected and transformed "
    "block by block"
)


def cross_attention_projections(unet: nn.Module) -> dict[str, nn.Linear]:
    """The key and value projections of every cross-attention (`attn2`) layer."""
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, nn.Linear) and ".attn2." in f".{name}" and name.endswith(("to_k", "to_v"))
    }


@torch.no_grad()
def _encode(pipe, prompt: str) -> tuple[torch.Tensor, int]:
    """The text encoder's outputs over the whole padded context, (L, d), and the index of the
    prompt's last word token (0, the start token, for an empty prompt)."""
    encoded, ids = encode_prompts(pipe, prompt, return_ids=True)
    states = encoded.states if isinstance(encoded, Conditioning) else encoded  # SDXL: both encoders', concatenated
    hidden = states[0].float()
    first_end = int((ids[0] == pipe.tokenizer.eos_token_id).nonzero()[0])
    return hidden, first_end - 1


def aligned_embeddings(pipe, text: str, guide: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows UCE edits, as the authors' code picks them: from the last word token through every
    end/padding token after it (they carry the whole prompt in a causal text encoder), with the
    guide's rows aligned on the last word tokens. Returns (text rows, guide rows), (n, d) each;
    `guide=None` maps the text to itself (a preserved concept)."""
    h_text, last_text = _encode(pipe, text)
    h_guide, last_guide = _encode(pipe, text if guide is None else guide)
    farthest, length = max(last_text, last_guide), h_text.shape[0]
    return (
        h_text[last_text : length - (farthest - last_text)],
        h_guide[last_guide : length - (farthest - last_guide)],
    )


def edit_rows(pipe, targets, guide: str, preserve) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Erased rows c, their guide rows g, and preserved rows p for the closed form."""
    pairs = [aligned_embeddings(pipe, t, guide) for t in targets]
    c, g = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
    keep = [aligned_embeddings(pipe, q)[0] for q in preserve]
    return c, g, (torch.cat(keep) if keep else c.new_zeros(0, c.shape[1]))


def closed_form(
    weight: torch.Tensor, erase: torch.Tensor, guide: torch.Tensor, preserve: torch.Tensor, lam: float
) -> torch.Tensor:
    """W' for one projection; erase/guide (n, d) aligned row by row, preserve (m, d)."""
    w = weight.double()
    c, g, p = erase.double(), guide.double(), preserve.double()
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    left = lam * w + (w @ g.T) @ c + (w @ p.T) @ p
    right = lam * eye + c.T @ c + p.T @ p
    return torch.linalg.solve(right, left.T).T.to(weight.dtype)  # left @ right^-1, right symmetric


@dataclass(frozen=True)
class UCESettings:
    """guide: what the targets are mapped to ("" = the empty prompt); preserve: prompts kept where
    they are; lam: the pull towards the original weights."""

    guide: str = ""
    preserve: tuple[str, ...] = ()
    lam: float = 0.5


class UCE(Eraser):
    name = "uce"
    Settings = UCESettings
    unsupported = dict.fromkeys(("sd3", "flux"), NOT_ON_SD3)

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings: UCESettings) -> None:
        c, g, p = edit_rows(pipe, targets, settings.guide, settings.preserve)
        deltas = {}
        for name, layer in cross_attention_projections(pipe.unet).items():
            w = layer.weight.detach().float()
            edited = closed_form(w, c.to(w.device), g.to(w.device), p.to(w.device), settings.lam)
            deltas[f"{name}.weight"] = edited - w
        save_delta(path, deltas, method="uce", targets=list(targets), settings=asdict(settings))

    def apply(self, pipe, artifacts: list[Path]):
        return applied(pipe, artifacts)
