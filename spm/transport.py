"""Facilitated Transport: how permeable each SPM is for a given prompt (spec section 3).

gamma_i(p) = max over c in C_i of max(s_cos(p, c), s_tok(p, c)), where s_cos is the cosine between
the flattened, padded last hidden states of the text encoder, and s_tok the fraction of c's
(non-special) tokens that p contains. Computed with the model's own tokenizer and text encoder.
SDXL: s_cos on the states its UNet's cross-attention reads, both encoders' concatenated (see `_encode`).
SD3: s_cos on the CLIP part of its text tokens only, T5's padded tail left out (see `_encode`).
SD3 and FLUX.1: s_tok on the whole prompt's CLIP-L tokens, not only its first 77: their T5 reads up to 256 or 512
tokens, so a target word past CLIP's context still conditions the image, and must still open the membrane.
FLUX.1: s_cos on its CLIP-L encoder's last hidden states, as on SD 1.x (see `similarity_inputs`).

`similarity="relative"` (ours, an option) rescales s_cos so that the empty prompt scores 0 and the
target itself 1: s_rel = (s_cos(p, c) - s_cos("", c)) / (1 - s_cos("", c)). The full padded
sequences share their BOS and padding positions, so the paper's s_cos of an unrelated prompt is far
above 0 (on the toy text encoder: the empty prompt 0.81, another character's name 0.91), and
non-targets pass through the membrane at nearly full strength.

`least` (ours, an option; 0: the paper's gamma) is the permeability no prompt goes below:
gamma' = least + (1 - least) * gamma. Every similarity of the text encoder's states can be lowered by a
prompt that still makes the concept (on the toy world, prompts of unrelated words found by an attack made
Barkley on the original model with a relative gamma of 0): a least permeability is what such a prompt cannot lower, paid
for by non-targets meeting the membrane at that strength (which Latent Anchoring must hold).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from spm.encoding import Conditioning, clip_width, encode, encode_clip, is_flux, is_sd3


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, list[set[int]]]:
    """Flattened padded states (N, L*D) in float32 and each prompt's set of non-special token ids.

    SDXL: the states are both text encoders' per-token states, concatenated, exactly what the UNet's
    cross-attention reads (77 x 2048 for SDXL base); the pooled embedding is left out. That keeps the
    paper's definition (and `relative`'s calibration) as on SD 1.x, and it is the input the membrane's
    cross-attention layers see, while the pooled embedding only shifts the time embedding of the resnets,
    where there is no membrane, and comes from the second encoder alone. Token ids are the first tokenizer's
    (the second one pads with '!', a token that is not special).
    """
    conditioning, ids = similarity_inputs(pipe, prompts)
    special = set(pipe.tokenizer.all_special_ids)
    return _compared_states(pipe, conditioning.states).float().flatten(1), [set(row.tolist()) - special for row in ids]


@torch.no_grad()
def similarity_inputs(pipe, prompts: list[str]) -> tuple[Conditioning, torch.Tensor]:
    """What FT reads of `prompts`: the conditioning the pipeline encodes and the first tokenizer's ids; for FLUX.1
    its CLIP-L encoder's last hidden states instead. FLUX.1 conditions its tokens on T5 alone, padded to 512
    positions without a mask (the padding states, alike across prompts, would pull every cosine up, as SD3's T5
    tail would), and reads CLIP-L only as one pooled vector; CLIP-L's states are the paper's definition, on the
    same encoder as SD 1.x's, and cost one small encoder call."""
    if is_flux(pipe):
        return encode_clip(pipe.tokenizer, pipe.text_encoder, prompts)
    return encode(pipe, prompts)


def _compared_states(pipe, states: torch.Tensor) -> torch.Tensor:
    """The part of the states s_cos compares. SD3 (N, 77 + 256, 4096): its CLIP part only, the 77 CLIP
    positions x the CLIP-L + CLIP-G channels (77 x 2048 for SD3 medium, SDXL's definition), without the zero
    columns that pad them to T5's width and without T5's 256 positions. The SD3 pipeline runs T5 without an
    attention mask and pads every prompt to 256 tokens, so a short prompt's T5 part is mostly padding states,
    alike across prompts: in the full sequence they would outweigh the words (256 of 333 positions) and pull
    every cosine up, giving non-targets more of the membrane. A cosine over non-padding T5 tokens only
    is not defined for prompts of different lengths without choosing an alignment; the CLIP part is, keeps
    the paper's definition (and `relative`'s calibration) as on SD 1.x and SDXL, and exists also when T5
    is dropped (the pipeline then feeds zeros there). Other families: all of the states."""
    if not is_sd3(pipe):
        return states
    return states[:, : pipe.tokenizer_max_length, : clip_width(pipe)]


SIMILARITIES = ("paper", "relative")


class Transport:
    """Per-prompt permeabilities for a fixed list of SPMs, with their targets encoded once by `pipe`'s
    tokenizer and text encoder (a pipeline, or anything with those two)."""

    def __init__(
        self, targets_per_spm: list[list[str]], pipe: DiffusionPipeline, similarity: str = "paper", least: float = 0.0
    ):
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}: choose one of {', '.join(SIMILARITIES)}")
        if isinstance(least, bool) or not isinstance(least, (int, float)) or not 0 <= least <= 1:
            raise ValueError(
                f"least must be a number in [0, 1] (the permeability no prompt goes below), not {least!r}"
            )
        self.least = float(least)
        if not targets_per_spm:
            raise ValueError("Facilitated Transport needs at least one SPM")
        for i, targets in enumerate(targets_per_spm):
            if not targets:
                raise ValueError(
                    f"SPM #{i} has no target prompts, which Facilitated Transport needs: "
                    "pass targets=[...] when loading it, or attach with transport=False"
                )
        self.pipe = pipe
        flat = [t for targets in targets_per_spm for t in targets]
        self.owner = torch.tensor([i for i, targets in enumerate(targets_per_spm) for _ in targets])
        self.k = len(targets_per_spm)
        hidden, self.target_tokens = _encode(pipe, flat)
        self.target_hidden = F.normalize(hidden, dim=1)
        # s_cos of the empty prompt per target: 0 leaves the paper's cosine unchanged.
        self.floor = torch.zeros(len(flat))
        if similarity == "relative":
            empty, _ = _encode(pipe, [""])
            self.floor = (F.normalize(empty, dim=1) @ self.target_hidden.T)[0].cpu()

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), k) permeabilities in [0, 1]."""
        if not prompts:
            return torch.zeros(0, self.k)
        conditioning, ids = similarity_inputs(self.pipe, prompts)
        if is_sd3(self.pipe) or is_flux(self.pipe):  # T5 reads past CLIP's context: s_tok counts the whole prompt
            ids = [self.pipe.tokenizer(p, add_special_tokens=False, verbose=False).input_ids for p in prompts]
        return self.of_states(conditioning.states, ids)

    def of_states(self, states: torch.Tensor, ids) -> torch.Tensor:
        """(N, k) permeabilities of N prompts given as the states the pipeline conditions on (N, L, D; FLUX.1: its
        CLIP-L states, see `similarity_inputs`) and their first tokenizer's ids (N, L), or each prompt's ids as a
        list: what `__call__` gives for the prompts, differentiable with respect
        to `states` (s_tok, a count of token ids, has no gradient). For tools that optimise prompts in
        embedding space against Facilitated Transport (an adaptive attack)."""
        special = set(self.pipe.tokenizer.all_special_ids)
        hidden = _compared_states(self.pipe, states).float().flatten(1)
        tokens = [set(row.tolist() if isinstance(row, torch.Tensor) else row) - special for row in ids]
        s_cos = F.normalize(hidden, dim=1) @ self.target_hidden.T.to(hidden.device)
        floor = self.floor.to(s_cos.device)
        s_cos = (s_cos - floor) / (1 - floor).clamp(min=1e-6)
        s_tok = torch.tensor(
            [[len(p & c) / max(len(c), 1) for c in self.target_tokens] for p in tokens], device=s_cos.device
        )
        per_target = torch.maximum(s_cos, s_tok).clamp(0, 1).cpu()
        if self.least:  # what no prompt lowers; 0 leaves the gammas exactly as they were
            per_target = self.least + (1 - self.least) * per_target
        gamma = torch.zeros(len(tokens), self.k)
        return gamma.scatter_reduce(1, self.owner.expand(len(tokens), -1), per_target, reduce="amax")
