"""Tiny, real diffusers/transformers models, built at small configs (diffusers' testing style)."""

from __future__ import annotations

import json

import torch


CORPUS = [
    "a photo of a dog",
    "a photo of a cat",
    "a painting of a house",
    "snoopy the dog",
    "mickey the mouse",
    "a red car on the road",
    "a picture of a tree in the style of van gogh",
]


def bpe_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A CLIP-style BPE tokenizer (`</w>` word ends, printable-ASCII base) trained on `texts`. The
    library's tests build their own: spm and its tests never depend on the benchmark's toy world."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab_size, end_of_word_suffix="</w>", show_progress=False)
    )
    merges = [
        tuple(m) if not isinstance(m, str) else tuple(m.split()) for m in json.loads(bpe.to_str())["model"]["merges"]
    ]
    base = [chr(c) for c in range(33, 127)]
    tokens = base + [c + "</w>" for c in base] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tiny_tokenizer():
    """A CLIP BPE tokenizer trained on a few sentences, with a 20-token context."""
    return bpe_tokenizer(CORPUS * 5, vocab_size=250, max_length=20)


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
