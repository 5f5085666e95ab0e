"""Architectures of the toy Stable Diffusion family: the real diffusers/transformers classes, small.

32x32 RGB images -> AutoencoderKL -> 4x8x8 latents; a CLIP text encoder of width 64 over a BPE
tokenizer trained on the world's captions; a UNet2DConditionModel whose cross-attention transformer
blocks carry exactly the layer kinds an SPM attaches to on SD 1.x.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from spm.files import write_text_atomic


# The longest caption of any dialect is 16 tokens with its start/end tokens (tested); room to spare.
MAX_LENGTH = 32
# The family's guidance, as its specs in spmbench/models/ give it; with the world's sampling steps it is
# written into every model folder (generation_config.json) so that `spm generate` samples as the suite does.
GUIDANCE_SCALE = 3.0
TEXT_WIDTH = 64


def build_tokenizer(texts: list[str], vocab_size: int = 600, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """Train a CLIP-style BPE (`</w>` word ends, printable-ASCII base) on the caption corpus. The trainer
    breaks ties between equally frequent pairs in hash order, which varies between processes: on a corpus
    with such ties the merges' order (so the token ids) varies, hence trained tokenizers are kept as files.
    spm's test fixture (tests/tiny_tokenizer) is this builder's output on a few captions."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

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


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def build_vae(latent_channels: int = 4) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
    )


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU it goes through pinned memory without blocking: a copy
    from pageable memory waits for every kernel queued before it, and a training step's few small
    copies (random draws, labels) kept the host from queueing the next step's work ahead."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def sample_latent(posterior, gen: torch.Generator) -> torch.Tensor:
    noise = to_device(torch.randn(posterior.mean.shape, generator=gen), posterior.mean.device)
    return posterior.mean + posterior.std * noise


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Images in [0, 1] through the VAE and back, in [0, 1] on the VAE's device: decoded from the
    latent mean, or with `gen` from a sample of the latent distribution."""
    posterior = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist
    z = posterior.mean if gen is None else sample_latent(posterior, gen)
    return (vae.decode(z).sample.float().clamp(-1, 1) + 1) / 2


def build_unet(latent_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_scheduler(sampler: str = "DDIMScheduler") -> SchedulerMixin:
    """SD 1.x's noise schedule (scaled-linear betas, 1000 steps, epsilon prediction), sampled with DDIM
    or DPM-Solver++ (2M, diffusers' defaults)."""
    noise = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    if sampler == "DDIMScheduler":
        return DDIMScheduler(**noise, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if sampler == "DPMSolverMultistepScheduler":
        return DPMSolverMultistepScheduler(**noise, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"sampler must be DDIMScheduler or DPMSolverMultistepScheduler, not {sampler!r}")


def generation_defaults(sampling_steps: int) -> dict:
    """What a model folder's generation_config.json says (spm's CLI reads it)."""
    return {"guidance_scale": GUIDANCE_SCALE, "num_inference_steps": sampling_steps}


class Judge(nn.Module):
    """A small CNN with one classification head per attribute of the toy world."""

    def __init__(self, heads: dict[str, int], width: int = 48):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.GroupNorm(8, 2 * c), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GroupNorm(8, 2 * c), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.GroupNorm(8, 4 * c), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(4 * c, n) for name, n in heads.items()})
        self.head_sizes = dict(heads)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features for FID and paired distances; `images` in [0, 1], shape (N, 3, 32, 32)."""
        return self.features(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.embed(images)
        return {name: head(feats) for name, head in self.heads.items()}


def save_judge(judge: Judge, directory: Path, world: int = 2) -> None:
    """The judge's weights, and its heads and the world version whose attributes they read."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(directory / "judge.safetensors"))
    write_text_atomic(directory / "judge.json", json.dumps({"heads": judge.head_sizes, "world": world}, indent=1))


def load_judge(directory: Path) -> Judge:
    from safetensors.torch import load_file

    judge = Judge(json.loads((directory / "judge.json").read_text())["heads"])
    judge.load_state_dict(load_file(str(directory / "judge.safetensors")))
    return judge.eval()
