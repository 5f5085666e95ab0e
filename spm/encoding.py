"""Prompts -> what a Stable Diffusion (1.x, 2.x, XL or 3) or FLUX.1 pipeline conditions its UNet (SD3, FLUX.1: transformer) on.

The one tokenize-and-encode of `spm` and the tools built on it: training, Facilitated Transport and
the baselines all condition on exactly what the pipeline itself would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conditioning:
    """What a pipeline conditions its UNet on for N prompts, whatever its family.

    Attributes:
        states: (N, L, D), the cross-attention states; for SDXL both text encoders' penultimate hidden
            states, concatenated (D = D1 + D2); for SD3 the joint attention's text tokens (CLIP, then T5).
        pooled: (N, P), SDXL's pooled embedding (the second encoder's projection), fed to the UNet with
            the added time ids; SD3's (both CLIP projections); None for SD 1.x/2.x.
    """

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.states.shape[0]

    def __getitem__(self, index) -> Conditioning:
        return Conditioning(self.states[index], None if self.pooled is None else self.pooled[index])

    def expand(self, n: int) -> Conditioning:
        """One prompt's conditioning, n times."""
        return Conditioning(self.states.expand(n, -1, -1), None if self.pooled is None else self.pooled.expand(n, -1))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        states = torch.cat([p.states for p in parts])
        return Conditioning(states, None if parts[0].pooled is None else torch.cat([p.pooled for p in parts]))

    def unet_kwargs(self, height: int, width: int) -> dict:
        """The UNet's conditioning arguments for images of height x width pixels. SDXL's time ids are what its
        pipeline passes by default: original size = target size = the image's, no crop."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.states}
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.states.dtype)
        time_ids = time_ids.to(self.states.device).expand(len(self), -1)
        return {
            "encoder_hidden_states": self.states,
            "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": time_ids},
        }


def is_sdxl(pipe) -> bool:
    """An SDXL pipeline: a UNet and SDXL's two text encoders (and so pooled embeddings). SD3 has two CLIP
    encoders too, but a transformer (and T5): it is not SDXL, see `is_sd3`."""
    return getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "unet", None) is not None


def is_sd3(pipe) -> bool:
    """A Stable Diffusion 3 pipeline: an SD3 (MMDiT) transformer, two CLIP encoders and T5."""
    from diffusers import SD3Transformer2DModel

    return isinstance(getattr(pipe, "transformer", None), SD3Transformer2DModel)


def is_flux(pipe) -> bool:
    """A FLUX.1 pipeline: a Flux (MMDiT) transformer conditioned on T5's states and CLIP-L's pooled embedding."""
    from diffusers import FluxTransformer2DModel

    return isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel)


def clip_width(pipe) -> int:
    """SD3: the channels of its states that its two CLIP encoders fill (their penultimate states side by side);
    the rest of each CLIP position is zero padding up to T5's width."""
    return pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size


@torch.no_grad()
def encode_prompts(
    pipe: DiffusionPipeline, prompts: str | Sequence[str], return_ids: bool = False
) -> torch.Tensor | Conditioning | tuple[torch.Tensor | Conditioning, torch.Tensor]:
    """The conditioning states for `prompts`, as the pipeline computes them for its UNet.

    Args:
        pipe: a Stable Diffusion pipeline, or anything with its `tokenizer` and `text_encoder`; or an SDXL
            pipeline (with `tokenizer_2` and `text_encoder_2` as well).
        prompts: one prompt or several; each is padded (and truncated) to the tokenizer's context.
        return_ids: also return the token ids.

    Returns:
        SD 1.x/2.x: the states (N, L, D), on the text encoder's device and in its dtype. SDXL: a
        `Conditioning` (states (N, L, D1 + D2), pooled (N, P)), what the SDXL pipeline's `encode_prompt` gives.
        With `return_ids`, the pair (that, ids), the first tokenizer's ids (N, L) on the CPU.
    """
    conditioning, ids = encode(pipe, prompts)
    result = conditioning if conditioning.pooled is not None else conditioning.states
    return (result, ids) if return_ids else result


@torch.no_grad()
def encode(pipe: DiffusionPipeline, prompts: str | Sequence[str]) -> tuple[Conditioning, torch.Tensor]:
    """`encode_prompts` for every family alike: the `Conditioning` and the first tokenizer's ids."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if is_sd3(pipe):
        return _encode_sd3(pipe, prompts)
    if is_flux(pipe):
        return _encode_flux(pipe, prompts)
    if is_sdxl(pipe):
        return _encode_sdxl(pipe, prompts)
    return encode_clip(pipe.tokenizer, pipe.text_encoder, prompts)


def encode_clip(tokenizer, text_encoder, prompts: list[str]) -> tuple[Conditioning, torch.Tensor]:
    """One CLIP-style text encoder's states for `prompts` padded to its context (SD 1.x/2.x's conditioning), and
    the ids."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    warn_if_truncated(tokenizer, prompts, tokens)
    # Masked only where the encoder asks for it, as diffusers' pipelines do (CLIP is not).
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    device = text_encoder.device
    # [0]: the states the UNet is conditioned on (CLIP's last hidden state; a projection for some encoders)
    states = text_encoder(tokens.input_ids.to(device), attention_mask=None if mask is None else mask.to(device))[0]
    return Conditioning(states), tokens.input_ids


def _encode_sdxl(pipe, prompts: list[str]) -> tuple[Conditioning, torch.Tensor]:
    """As StableDiffusionXLPipeline.encode_prompt (no clip skip): each encoder's penultimate hidden states,
    concatenated, and the pooled embedding of the first encoder that has one (SDXL: the second's projection)."""
    states, pooled, ids = [], None, None
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        tokens = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        warn_if_truncated(tokenizer, prompts, tokens)
        output = text_encoder(tokens.input_ids.to(text_encoder.device), output_hidden_states=True)
        # CLIPTextModelWithProjection's [0] is its text_embeds (N, P); CLIPTextModel's is 3-D
        if pooled is None and output[0].ndim == 2:
            pooled = output[0]
        states.append(output.hidden_states[-2])
        ids = tokens.input_ids if ids is None else ids
    if pooled is None:
        raise ValueError("neither of the SDXL pipeline's text encoders gives a pooled embedding (a projection)")
    return Conditioning(torch.cat(states, dim=-1).to(pipe.text_encoder_2.dtype), pooled), ids


def _encode_sd3(pipe, prompts: list[str]) -> tuple[Conditioning, torch.Tensor]:
    """The SD3 pipeline's own encode_prompt (so the states are exactly what it conditions on): the CLIP-L and
    CLIP-G penultimate states side by side, zero-padded to T5's width, then T5's 256 positions (zeros
    without T5), (N, 77 + 256, 4096) for SD3 medium; pooled: both CLIP projections, (N, 2048). Ids: CLIP-L's."""
    device = pipe.text_encoder.device
    states, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False)
    return Conditioning(states, pooled), _clip_ids(pipe, prompts)


def _encode_flux(pipe, prompts: list[str]) -> tuple[Conditioning, torch.Tensor]:
    """The FLUX.1 pipeline's own encode_prompt at its default length: T5's states, (N, 512, 4096) for FLUX.1 (it
    runs T5 without an attention mask and pads every prompt to 512 tokens); pooled: CLIP-L's, (N, 768). Ids:
    CLIP-L's (its tokenizer is the pipeline's first)."""
    device = pipe.text_encoder.device
    states, pooled, _ = pipe.encode_prompt(prompts, None, device=device)
    return Conditioning(states, pooled), _clip_ids(pipe, prompts)


def _clip_ids(pipe, prompts: list[str]) -> torch.Tensor:
    """The ids of the transformer pipelines' first (CLIP-L) tokenizer, padded to its context, as they encode."""
    return pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def unconditional(pipe: DiffusionPipeline) -> Conditioning:
    """The conditioning of the pipeline's unconditional (negative) branch when no negative prompt is given:
    the empty prompt's; zeros for an SDXL pipeline with `force_zeros_for_empty_prompt` (SDXL base), as its
    `encode_prompt` does."""
    empty, _ = encode(pipe, [""])
    if empty.pooled is not None and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return Conditioning(torch.zeros_like(empty.states), torch.zeros_like(empty.pooled))
    return empty


_warned: set[str] = set()  # prompts already reported: training and Facilitated Transport encode them again and again


def warn_if_truncated(tokenizer, prompts: list[str], tokens) -> None:
    """Warn once per prompt that `tokenizer` cut to its context in `tokens` (its output for `prompts`,
    truncated), saying what was kept: the rest of a prompt has no effect at all. Public for tools that
    tokenize for other text encoders (a CLIP judge, say)."""
    mask = tokens.get("attention_mask")
    for i, prompt in enumerate(prompts):
        # Only a prompt that fills the whole context can have been cut: the others need no second tokenization.
        if prompt in _warned or (mask is not None and not bool(mask[i].all())):
            continue
        length = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
        if length <= tokenizer.model_max_length:
            continue
        _warned.add(prompt)
        kept = tokenizer.decode(tokens.input_ids[i], skip_special_tokens=True)
        special = set(tokenizer.all_special_ids)
        kept_tokens = sum(int(t) not in special for t in tokens.input_ids[i])
        log.warning(
            "prompt %r is %d tokens, longer than the text encoder's %d: only its first %d tokens are used, "
            "ending %r; shorten it",
            _short(prompt), length, tokenizer.model_max_length, kept_tokens, kept[-40:],
        )  # fmt: skip


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
