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


def tiny_clip_config(tokenizer, projection_dim: int, width: int):
    """A 2-layer CLIP text encoder's config of the given width over `tokenizer` (SDXL's and SD3's encoders)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


def random_spm(model, targets=("snoopy",), seed: int = 0, scale: float = 0.5):
    """An SPM on `model` with random, non-zero up factors (a fresh one's are zero), reproducible by seed."""
    import spm

    s = spm.SPM.init(model, list(targets), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    s.layers = {n: (d, scale * torch.randn(u.shape, generator=gen)) for n, (d, u) in s.layers.items()}
    return s


def tiny_sdxl_components(seed: int = 0, hidden: tuple[int, int] = (16, 24)):
    """A tiny SDXL: SDXL's block layout (no attention in the first down block, layers_per_block 2, more
    transformer layers deeper down), two CLIP text encoders whose penultimate states are concatenated
    (cross-attention dim = the sum of their widths), the second with a projection (the pooled embedding),
    and the added time ids ("text_time"); SDXL's Euler scheduler, its second tokenizer padding with "!"."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), CLIPTokenizer.from_pretrained(TINY_TOKENIZER, pad_token="!")
    projection_dim, time_dim = 16, 4

    text_encoder, text_encoder_2 = (
        CLIPTextModel(tiny_clip_config(tokenizer, projection_dim, hidden[0])),
        CLIPTextModelWithProjection(tiny_clip_config(tokenizer, projection_dim, hidden[1])),
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        cross_attention_dim=sum(hidden), norm_num_groups=4, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + projection_dim,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    )
    return dict(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, scheduler=scheduler,
    )  # fmt: skip


def save_tiny_sdxl_pipeline(path, seed: int = 0, hidden: tuple[int, int] = (16, 24)):
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**tiny_sdxl_components(seed, hidden)).save_pretrained(path)
    return path


def tiny_t5_tokenizer(max_length: int = 256):
    """A tiny T5-style tokenizer built offline: T5's special tokens and ids (<pad> 0, </s> 1, <unk> 2), '</s>'
    appended, padding with <pad> at the end, over the stored tiny CLIP tokenizer's whole words (lower-cased)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted({t[: -len("</w>")] for t in tiny_tokenizer().get_vocab() if t.endswith("</w>")} - {""})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def tiny_t5_encoder(tokenizer, width: int):
    """A 2-layer T5 encoder of the given width over a `tiny_t5_tokenizer` (SD3's and FLUX.1's third/second encoder)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=width, d_ff=32, d_kv=8, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )  # fmt: skip


def tiny_latent_vae(**family):
    """A VAE of 4 latent channels that halves 16 px images, with a family's own `shift_factor`, `scaling_factor`."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16, **family,
    )  # fmt: skip


def tiny_sd3_components(seed: int = 0, hidden: tuple[int, int] = (16, 24), t5_width: int = 48):
    """A tiny SD3 (diffusers' own tiny SD3 test configs, smaller): an MMDiT SD3Transformer2DModel of two joint
    blocks (the last one context_pre_only, as in every SD3), two CLIP encoders with projections (their
    penultimate states side by side, zero-padded to T5's width; their projections concatenated: the pooled
    embedding), a T5 encoder with a T5-style tokenizer padding to 256 tokens, a VAE with SD3's shift and
    scale, and SD3's flow-matching Euler scheduler (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer, tokenizer_3 = tiny_tokenizer(), tiny_t5_tokenizer()
    projection_dim = 16

    t5 = tiny_t5_encoder(tokenizer_3, t5_width)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
        joint_attention_dim=t5_width, caption_projection_dim=8, pooled_projection_dim=2 * projection_dim,
        out_channels=4, pos_embed_max_size=8,
    )  # fmt: skip
    vae = tiny_latent_vae(shift_factor=0.0609, scaling_factor=1.5035)
    return dict(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(tiny_clip_config(tokenizer, projection_dim, hidden[0])), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(tiny_clip_config(tokenizer, projection_dim, hidden[1])),
        tokenizer_2=CLIPTokenizer.from_pretrained(TINY_TOKENIZER, pad_token="!"),
        text_encoder_3=t5, tokenizer_3=tokenizer_3,
    )  # fmt: skip


def save_tiny_sd3_pipeline(path, seed: int = 0):
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**tiny_sd3_components(seed)).save_pretrained(path)
    return path


def tiny_flux_components(seed: int = 0, clip_width: int = 16, t5_width: int = 48, guidance_embeds: bool = True):
    """A tiny FLUX.1 (diffusers' own tiny Flux test configs, smaller): a FluxTransformer2DModel of two double-stream
    and two single-stream blocks with FLUX.1-dev's guidance embedding (none: [schnell]'s), a CLIP encoder (its pooled output: the pooled
    embedding), a T5 encoder with a T5-style tokenizer, a VAE with FLUX.1's shift and scale (2x downsampling here,
    so 16 px images pack into 4 x 4 tokens), and FLUX.1-dev's flow-matching scheduler (shifted by image size)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_t5_tokenizer(max_length=512)
    t5 = tiny_t5_encoder(tokenizer_2, t5_width)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=t5_width, pooled_projection_dim=clip_width, guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    vae = tiny_latent_vae(shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return dict(
        transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder=CLIPTextModel(tiny_clip_config(tokenizer, 16, clip_width)), tokenizer=tokenizer,
        text_encoder_2=t5, tokenizer_2=tokenizer_2,
    )  # fmt: skip


def save_tiny_flux_pipeline(path, seed: int = 0):
    from diffusers import FluxPipeline

    FluxPipeline(**tiny_flux_components(seed)).save_pretrained(path)
    return path
