"""Token-level helpers the attacks share: the vocabulary they may use, prompts built from token ids, and
text encoding with some token positions replaced by free (soft) embeddings.

Only single-text-encoder CLIP pipelines (SD 1.x/2.x, the toy world) are supported: SDXL and SD3 condition
on several encoders at once, which a soft token would have to live in jointly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_supported(pipe, attack: str) -> None:
    """One line refusing pipelines whose conditioning is not one CLIP text encoder's states."""
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "unet", None) is None:
        raise ValueError(
            f"attack {attack!r} supports pipelines with one text encoder and a UNet (SD 1.x/2.x, the toy world); "
            f"this is a {type(pipe).__name__}"
        )


def words_of(tokenizer, texts: Iterable[str]) -> set[int]:
    """The non-special token ids of `texts`."""
    special = set(tokenizer.all_special_ids)
    return {i for text in texts for i in tokenizer(text, add_special_tokens=False).input_ids} - special


def vocabulary(tokenizer, excluded: Iterable[str] = ()) -> torch.Tensor:
    """The ids an attack may put in a prompt: whole-word tokens that tokenize back to themselves alone (so a
    prompt written from them reads back as the same ids), minus the special tokens and every token of the
    `excluded` texts (the target's words, where an attack must do without them)."""
    banned = words_of(tokenizer, excluded) | set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in banned]
    texts = [tokenizer.decode([i]).strip() for i in ids]
    back = tokenizer(texts, add_special_tokens=False).input_ids
    kept = [i for i, text, again in zip(ids, texts, back) if text and again == [i]]
    if not kept:
        raise ValueError("the tokenizer has no whole-word tokens an attack could use")
    return torch.tensor(kept)


def ids_for(tokenizer, words: list[int], text: str = "") -> torch.Tensor:
    """(1, L) ids of the prompt `decode(words) + " " + text`, laid out as the pipeline tokenizes it:
    BOS, the words, the text's tokens, EOS, padding to the context (truncated to it)."""
    rest = tokenizer(text, add_special_tokens=False).input_ids if text else []
    length = tokenizer.model_max_length
    body = ([tokenizer.bos_token_id] + list(words) + rest)[: length - 1] + [tokenizer.eos_token_id]
    return torch.tensor([body + [tokenizer.pad_token_id] * (length - len(body))])


def prompt_of(tokenizer, words: list[int], text: str = "") -> str:
    """The prompt string of `words` followed by `text`."""
    return " ".join(part for part in (tokenizer.decode(list(words)).strip(), text) if part)


def encode_soft(text_encoder, ids: torch.Tensor, positions: list[int], soft: torch.Tensor) -> torch.Tensor:
    """The text encoder's states (N, L, D) for `ids` (N, L), with the token embeddings at `positions` replaced
    by `soft` (k, D): differentiable with respect to `soft`. Everything else (position embeddings, the causal
    mask, the final norm) is the encoder's own."""
    embedding = text_encoder.get_input_embeddings()

    def replace(_module, _inputs, output):
        output = output.clone()
        output[:, positions] = soft.to(output.dtype)
        return output

    handle = embedding.register_forward_hook(replace)
    try:
        return text_encoder(ids.to(text_encoder.device))[0]
    finally:
        handle.remove()


def nearest(soft: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """For each soft embedding (k, D), the allowed token id whose embedding (rows of `table`) is nearest (L2)."""
    candidates = table[allowed].to(soft.dtype)
    return allowed[torch.cdist(soft.detach(), candidates).argmin(dim=1).cpu()]
