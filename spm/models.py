"""Resolve a model (a local diffusers directory or a hub id) and load its pipeline."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


# The SD 1.x UNet (diffusers UNet2DConditionModel arguments): build it on the meta device to count
# an SPM's layers, or with random weights to time it, without downloading anything.
SD1_UNET_CONFIG = {
    "sample_size": 64,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


# The SDXL base UNet (stabilityai/stable-diffusion-xl-base-1.0's unet/config.json), for the same uses.
SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


# The SD3 medium transformer (stabilityai/stable-diffusion-3-medium-diffusers' transformer/config.json), for the
# same uses: an MMDiT of 24 joint blocks, 1536 wide, reading 4096-wide text tokens (CLIP-L/G + T5-XXL).
SD3_TRANSFORMER_CONFIG = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}


# The FLUX.1 [dev] transformer (black-forest-labs/FLUX.1-dev's transformer/config.json), for the same uses: 19
# double-stream and 38 single-stream blocks, 3072 wide, reading T5-XXL's 4096-wide tokens and CLIP-L's pooled vector.
FLUX_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}


def denoiser(pipe):
    """The network an SPM attaches to: a pipeline's UNet, or its transformer (SD3, FLUX.1); a bare model as it is."""
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if model is not None:
            return model
    return pipe


def resolve_model(model: str) -> str:
    """A local diffusers directory or a hub id ('org/name'), as diffusers' from_pretrained takes it."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{model} is not a diffusers pipeline directory (no model_index.json)")
        return str(path)
    if path.exists():
        raise ValueError(f"{model} is a file, not a diffusers pipeline directory")
    if _looks_like_path(model):
        raise ValueError(f"no such directory: {model} (give a local diffusers pipeline directory)")
    if model.count("/") == 1 and all(model.split("/")):
        return model
    raise ValueError(
        f"{model!r} is neither a local diffusers directory nor a hub id (org/name): give one of those; "
        "for a benchmark's model name, ask the registry that defines it for the model's source"
    )


def _looks_like_path(model: str) -> bool:
    # hub ids have exactly one '/'; anything else with a separator is meant as a local path
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """Load a Stable Diffusion pipeline with its safety checker off (the protocol measures raw output)."""
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, **_no_safety_checker(source))
    pipe.set_progress_bar_config(disable=True)
    # diffusers before `dtype=` (it was `torch_dtype=`) ignores it and loads what the files hold
    return pipe.to(device) if denoiser(pipe).dtype == dtype else pipe.to(device, dtype)


def _no_safety_checker(source: str) -> dict:
    """The arguments that turn a pipeline's safety checker off, for pipelines that have one (SDXL has none,
    and diffusers warns about arguments a pipeline does not take)."""
    import diffusers

    name = diffusers.DiffusionPipeline.load_config(source).get("_class_name", "")
    pipeline_class = getattr(diffusers, name, None)
    if pipeline_class is not None and "safety_checker" not in inspect.signature(pipeline_class.__init__).parameters:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def native_resolution(pipe: DiffusionPipeline) -> int:
    """The pixel size the UNet (or SD3's transformer) was trained at (512 for SD 1.x, 32 for the toy world); FLUX.1's
    transformer states none: its pipeline's default (1024 px)."""
    latent = getattr(denoiser(pipe).config, "sample_size", None) or pipe.default_sample_size
    return int(latent * pipe.vae_scale_factor)


def device_problem(device: str) -> str | None:
    """What is wrong with a --device value on this machine, or None."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available on this machine; use --device cpu"
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None
