"""Prompts -> the states a Stable Diffusion pipeline conditions its UNet on.

The one tokenize-and-encode of `spm` and the tools built on it: training, Facilitated Transport and
the baselines all condition on exactly what the pipeline itself would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


log = logging.getLogger(__name__)


@torch.no_grad()
def encode_prompts(
    pipe: DiffusionPipeline, prompts: str | Sequence[str], return_ids: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's conditioning states for `prompts`, as the pipeline computes them.

    Args:
        pipe: a Stable Diffusion pipeline, or anything with its `tokenizer` and `text_encoder`.
        prompts: one prompt or several; each is padded (and truncated) to the tokenizer's context.
        return_ids: also return the token ids.

    Returns:
        The states (N, L, D), on the text encoder's device and in its dtype; with `return_ids`, the
        pair (states, ids), the ids (N, L) on the CPU.
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    warn_if_truncated(tokenizer, prompts, tokens)
    # Masked only where the encoder asks for it, as diffusers' pipelines do (CLIP is not).
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    device = text_encoder.device
    # [0]: the states the UNet is conditioned on (CLIP's last hidden state; a projection for some encoders)
    states = text_encoder(tokens.input_ids.to(device), attention_mask=None if mask is None else mask.to(device))[0]
    return (states, tokens.input_ids) if return_ids else states


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
