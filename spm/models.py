"""Resolve a model name (registry alias, hub id or local diffusers directory) and load its pipeline."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


# The toy world ships inside this distribution, beside `spm/`: a file path, not an import.
TOY_WEIGHTS = Path(__file__).resolve().parent.parent / "spmbench" / "toy" / "weights"

# Short names for the protocol's real models (SD 1.x family unless noted).
HUB_ALIASES = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "dreamshaper-8": "Lykon/dreamshaper-8",
    "realistic-vision-5.1": "SG161222/Realistic_Vision_V5.1_noVAE",
    "altdiffusion": "BAAI/AltDiffusion",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
}
TOY_MODELS = ("toy-base", "toy-pastel", "toy-verbose")

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


def resolve_model(model: str) -> str:
    """A local directory, a toy-world name, an alias from HUB_ALIASES, or a hub id ('org/name')."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{model} is not a diffusers pipeline directory (no model_index.json)")
        return str(path)
    if _looks_like_path(model):
        if path.exists():
            raise ValueError(f"{model} is a file, not a diffusers pipeline directory")
        raise ValueError(f"no such directory: {model} (give a local diffusers pipeline directory)")
    if model in TOY_MODELS:
        path = TOY_WEIGHTS / model
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"toy model {model!r} is not trained yet: run `spmbench toy train` (expected {path})"
            )
        return str(path)
    if model in HUB_ALIASES:
        return HUB_ALIASES[model]
    if "/" in model and not Path(model).exists() and model.count("/") == 1:
        return model
    known = list(TOY_MODELS) + list(HUB_ALIASES)
    close = difflib.get_close_matches(model, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(
        f"unknown model {model!r}: {hint}give a local diffusers directory, a hub id or one of {', '.join(known)}"
    )


def _looks_like_path(model: str) -> bool:
    # hub ids have exactly one '/'; anything else with a separator is meant as a local path
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """Load a Stable Diffusion pipeline with its safety checker off (the protocol measures raw output)."""
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # diffusers before `dtype=` (it was `torch_dtype=`) ignores it and loads what the files hold
    return pipe.to(device) if pipe.unet.dtype == dtype else pipe.to(device, dtype)


def native_resolution(pipe: DiffusionPipeline) -> int:
    """The pixel size the UNet was trained at (512 for SD 1.x, 32 for the toy world)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


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
