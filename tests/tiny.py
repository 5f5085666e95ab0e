"""Tiny, real diffusers/transformers models, built at small configs (diffusers' testing style)."""

from __future__ import annotations

from pathlib import Path

import torch


# A CLIP BPE tokenizer (`</w>` word ends, printable-ASCII base, 246 tokens, a 20-token context) trained on a
# few captions, stored as a real model's tokenizer files are (as diffusers' tests load a tiny one): the
# benchmark's toy world trains its tokenizers with the same builder, and its tests rebuild this one from it.
TINY_TOKENIZER = Path(__file__).parent / "tiny_tokenizer"


def tiny_tokenizer():
    """The stored tiny CLIP tokenizer."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TINY_TOKENIZER)


def tiny_components(seed: int = 0, cross_dim: int = 16):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cross_dim, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_pipeline(path, seed: int = 0, cross_dim: int = 16):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_components(seed, cross_dim), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(path)
    return path
