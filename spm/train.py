"""Training one SPM: the erasing loss with Latent Anchoring (spec section 4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spm.adapter import SPM
from spm.checkpoint import Checkpoint, CheckpointError
from spm.encoding import Conditioning, encode, is_flux, is_sd3, is_sdxl, unconditional
from spm.membrane import attach
from spm.models import denoiser, native_resolution


if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DiffusionPipeline


class NonFiniteLoss(ValueError):
    """Training diverged: a loss (or the factors) became NaN or infinite. The last checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting, defaulting to the paper's SD 1.4 setting.

    Attributes:
        iterations: optimisation steps (batch 1).
        lr, weight_decay: AdamW.
        warmup_steps, restarts: cosine schedule with hard restarts after a linear warm-up.
        eta: negative-guidance strength of the erasing target.
        anchor_weight: lambda, the weight of the Latent Anchoring loss.
        num_anchors: random anchor embeddings per step (the empty prompt is always added).
        legacy_anchors: the released code's anchors instead: by a batching quirk, 2 random ones and the
            empty prompt twice (so it weighs half the anchoring loss); num_anchors is then ignored.
        legacy_schedule: the released code's trajectory instead: the rollout on DDIM's 'leading' grid
            without offset (900, 800, ..., 0 at T = 10) rather than the pipeline scheduler's, and the UNet
            queried at timestep 999 - floor(k * 1000 / T) after k rollout steps (noisier than the latent
            is) rather than at the latent's own timestep.
        vocabulary_anchors: more anchors per step (ours, default 0: the paper has none), each a prompt
            of 1-3 words drawn from the tokenizer's vocabulary, never the targets' own words. Random
            directions in embedding space lie far from every real prompt; on the toy world they left
            other characters' names unprotected.
        anchor_scale: rho range; anchors are rescaled to rho * ||c_tar||.
        adversarial_every: ours, default 0 (off; the paper has none): every this many steps, a search of
            `adversarial_steps` Adam steps (lr `adversarial_lr`) over `adversarial_tokens` free token
            embeddings finds a prompt that makes the model with the membrane (as it is then) predict the
            target's noise (the frozen model's, on the step's x_t), in the spirit of AdvUnlearn and Receler;
            searches alternate between tokens before the target prompt and tokens alone. The two latest
            prompts' states join the erasing loss at every step (same erasing target as c_tar's). One text
            encoder's pipelines only (SD 1.x/2.x, the toy world).
        rollout_steps: T of the DDIM schedule the x_t rollout is drawn from.
        rollout_guidance: CFG scale of that rollout. FLUX.1, which samples without CFG: the guidance its [dev]
            transformer embeds (distilled from CFG; 3.5 is its pipeline's default), in every call of the training.
        rollout_reuse: ours, default 1 (the spec's loop: a rollout per iteration). R > 1: one rollout serves R
            iterations. At every R-th step, each of the next R iterations draws its depth k, and
            `rollout_trajectories` noises are rolled out together, in one batch per DDIM step (each only as deep
            as its iterations need); iteration j then trains on trajectory j mod `rollout_trajectories` at its
            own k: the latent a k-step rollout from that noise gives, with the membrane as it was up to R - 1
            steps before. The UNet calls of the rollouts drop R-fold; their sample-forwards stay the spec's
            (one trajectory per iteration) or drop too (fewer trajectories). A rollout's iterations share
            its size; each trajectory has its own target.
        rollout_trajectories: noises per rollout when rollout_reuse > 1; 0 (default): one per iteration (R),
            1: one trajectory that all R iterations draw their x_t from.
        resolutions: training sizes in pixels, one drawn per step. None: 256-448 for a 512-px model,
            else the model's native size.
        rank, alpha: membrane rank and LoRA alpha (scale = alpha / rank).
        dtype: "float32" or "bfloat16" (autocast of the UNet forwards).
        gradient_checkpointing: recompute the UNet's (transformer's) block activations in the backward pass instead
            of keeping them (diffusers' own checkpointing): the same SPM in less memory and more time, for large
            models (FLUX.1's grad call holds 6 sequences of 4608 tokens through 57 blocks at 1024 px).
        seed: every random draw comes from it; the same seed gives the same SPM on CPU.
        checkpoint_every: steps between resumable checkpoints (0: never).
    """

    iterations: int = 3000
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    restarts: int = 3
    eta: float = 1.0
    anchor_weight: float = 1000.0
    num_anchors: int = 4
    legacy_anchors: bool = False
    legacy_schedule: bool = False
    vocabulary_anchors: int = 0
    anchor_scale: tuple[float, float] = (0.8, 1.2)
    adversarial_every: int = 0
    adversarial_steps: int = 5
    adversarial_tokens: int = 3
    adversarial_lr: float = 0.1
    rollout_steps: int = 30
    rollout_guidance: float = 3.0
    rollout_reuse: int = 1
    rollout_trajectories: int = 0
    resolutions: tuple[int, ...] | None = None
    rank: int = 1
    alpha: float = 1.0
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self):
        # Each message starts with the field's name: the CLI turns it into the option's name.
        for name in ("legacy_anchors", "legacy_schedule", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', not {self.dtype!r}")
        for name in ("lr", "weight_decay", "eta", "anchor_weight", "rollout_guidance", "alpha", "adversarial_lr"):
            _check_number(name, getattr(self, name), integer=False)
        if self.lr <= 0:
            raise ValueError(f"lr must be greater than 0, not {self.lr}")
        if self.adversarial_lr <= 0:
            raise ValueError(f"adversarial_lr must be greater than 0, not {self.adversarial_lr}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be greater than 0, not {self.alpha} (the membrane's scale is alpha / rank)")
        least = {
            "iterations": 1, "rank": 1, "rollout_steps": 2, "num_anchors": 0, "vocabulary_anchors": 0,
            "warmup_steps": 0, "restarts": 0, "checkpoint_every": 0,
            "adversarial_every": 0, "adversarial_steps": 1, "adversarial_tokens": 1,
            "weight_decay": 0, "eta": 0, "anchor_weight": 0, "rollout_reuse": 1, "rollout_trajectories": 0,
        }  # fmt: skip
        for name, minimum in least.items():
            _check_number(name, getattr(self, name), integer=name not in ("weight_decay", "eta", "anchor_weight"))
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be at least {minimum}, not {getattr(self, name)}")
        if self.rollout_trajectories > self.rollout_reuse:
            raise ValueError(
                f"rollout_trajectories must be at most rollout_reuse ({self.rollout_reuse}), the iterations one "
                f"rollout serves, not {self.rollout_trajectories}"
            )
        _check_number("seed", self.seed, integer=True)
        if not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise ValueError(f"seed must be between -2**63 and 2**64 - 1, not {self.seed}")
        scale = tuple(self.anchor_scale) if isinstance(self.anchor_scale, (list, tuple)) else ()
        if (
            len(scale) != 2
            or not all(_is_number(v) and math.isfinite(v) for v in scale)
            or not 0 < scale[0] <= scale[1]
        ):
            raise ValueError(
                f"anchor_scale must be two finite numbers (low, high) with 0 < low <= high, not {self.anchor_scale}"
            )
        if self.resolutions is not None and not isinstance(self.resolutions, (list, tuple)):
            raise ValueError(
                f"resolutions must be a list of sizes in pixels, e.g. [256, 320], not {self.resolutions!r}"
            )
        for size in self.resolutions or ():
            if not (_is_number(size, integer=True) and size > 0):
                raise ValueError(f"resolutions must be positive whole numbers of pixels, not {self.resolutions}")

    def resolved_resolutions(self, pipe) -> tuple[int, ...]:
        if self.resolutions:
            return tuple(self.resolutions)
        native = native_resolution(pipe)
        return (256, 320, 384, 448) if native == 512 else (native,)


def _is_number(value, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check_number(name: str, value, integer: bool) -> None:
    """A setting that is a finite number: NaN or infinity would turn the whole SPM into NaN, and the
    optimiser refuses a value beyond float32's range only mid-step, with a traceback."""
    if not _is_number(value, integer):
        raise ValueError(f"{name} must be {'a whole number' if integer else 'a number'}, not {value!r}")
    if not (math.isfinite(value) and abs(value) <= torch.finfo(torch.float32).max):
        raise ValueError(f"{name} must be a finite number, not {value}")


def sample_anchors(c_tar: torch.Tensor, n: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """Latent Anchoring: random directions, kept with probability 1 - cos(a, c_tar), norm rho * ||c_tar||."""
    if n == 0:
        return c_tar.new_zeros((0, *c_tar.shape))
    anchors = []
    target = c_tar.flatten().float().cpu()
    while len(anchors) < n:
        a = torch.randn(target.shape, generator=gen)
        keep = torch.rand((), generator=gen) < 1 - F.cosine_similarity(a, target, dim=0)
        rho = torch.empty(()).uniform_(*scale, generator=gen)
        if keep:
            anchors.append(a / a.norm() * rho * target.norm())
    return torch.stack(anchors).view(n, *c_tar.shape).to(c_tar)


def _random_anchors(c_tar: Conditioning, n: int, scale: tuple[float, float], gen: torch.Generator) -> Conditioning:
    """`sample_anchors` on the whole conditioning: for SDXL one random direction in the joint space of the
    per-token states and the pooled embedding (both are the text embedding the UNet sees), split back."""
    if c_tar.pooled is None:
        return Conditioning(sample_anchors(c_tar.states[0], n, scale, gen))
    states, pooled = c_tar.states[0], c_tar.pooled[0]
    joint = sample_anchors(torch.cat([states.flatten(), pooled]), n, scale, gen)
    return Conditioning(joint[:, : states.numel()].view(n, *states.shape), joint[:, states.numel() :])


def _check_flux_sizes(pipe, resolutions: tuple[int, ...]) -> None:
    """FLUX.1 packs its latents into 2 x 2 patches: a size that is not a multiple of twice the VAE's factor (16 px)
    would be cut by the pipeline, and cannot be packed in training."""
    unit = 2 * pipe.vae_scale_factor
    bad = [r for r in resolutions if r % unit] if is_flux(pipe) else []
    if bad:
        raise ValueError(
            f"resolution {bad[0]} px: FLUX.1 trains at multiples of {unit} px; give e.g. {bad[0] // unit * unit or unit}"
        )


def _image_tokens(pipe, resolutions: tuple[int, ...]) -> int | None:
    """FLUX.1's packed latent tokens at the one training size (its scheduler's shift depends on it); None for
    several sizes or another family."""
    if not is_flux(pipe) or len(resolutions) != 1:
        return None
    return (resolutions[0] // (2 * pipe.vae_scale_factor)) ** 2


def _draw_size(resolutions: tuple[int, ...], gen: torch.Generator, vae_scale: int) -> tuple[int, int]:
    """Latent height and width, each drawn from `resolutions` (non-square, as the released code). One
    size needs one draw: seeded runs at a model's single native size stay as they were."""
    height = resolutions[int(torch.randint(len(resolutions), (), generator=gen))]
    width = resolutions[int(torch.randint(len(resolutions), (), generator=gen))] if len(resolutions) > 1 else height
    return height // vae_scale, width // vae_scale


def anchor_vocabulary(tokenizer, targets: list[str]) -> list[str]:
    """Whole words of the tokenizer's vocabulary (letters only), without the targets' words. CLIP's
    BPE marks a word's last piece with '</w>'; other tokenizers' tokens are read as they decode."""
    taken = {w.lower() for t in targets for w in t.split()}
    vocab = tokenizer.get_vocab()
    words = {t[: -len("</w>")] for t in vocab if t.endswith("</w>")} or {
        tokenizer.convert_tokens_to_string([t]).strip() for t in vocab
    }
    return sorted(w for w in words if w.isalpha() and len(w) > 1 and w.lower() not in taken)


def sample_vocabulary_prompts(vocabulary: list[str], n: int, gen: torch.Generator) -> list[str]:
    """`n` prompts of 1-3 words drawn uniformly from `vocabulary`."""
    prompts = []
    for _ in range(n):
        length = int(torch.randint(1, 4, (), generator=gen))
        prompts.append(" ".join(vocabulary[int(i)] for i in torch.randint(len(vocabulary), (length,), generator=gen)))
    return prompts


def _run_settings(targets, surrogate, cfg: TrainConfig, pipe) -> dict:
    """What a checkpoint of this run is tied to."""
    config = asdict(cfg)
    del config["gradient_checkpointing"]  # memory, not the result: a run resumes with it switched either way
    if not cfg.legacy_schedule:  # off, it changes nothing: checkpoints from before it existed stay resumable
        del config["legacy_schedule"]
    if not cfg.adversarial_every:  # likewise
        for name in ADVERSARIAL:
            del config[name]
    if cfg.rollout_reuse == 1:  # likewise (the number of trajectories means nothing then)
        del config["rollout_reuse"], config["rollout_trajectories"]
    return {"targets": targets, "surrogate": surrogate, "config": config, "model": _model_name(pipe)}


ADVERSARIAL = ("adversarial_every", "adversarial_steps", "adversarial_tokens", "adversarial_lr")


def _model_name(pipe) -> str:
    # A pipeline loaded with from_pretrained(pathlib.Path(...)) keeps the Path, which JSON cannot encode.
    return str(pipe.name_or_path)


# The DDIM grid of SD 1.x/2.x's scheduler files (PNDM's or DDIM's): "leading" spacing offset by one, and no
# alpha of one past the last step. Another sampler's config (DPM-Solver's: "linspace", offset 0) describes its
# own grid, not DDIM's, so a DDIM built from it takes these instead.
SD_DDIM_GRID = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}


def ddim_scheduler(pipe: DiffusionPipeline, **overrides) -> DDIMScheduler:
    """A DDIM scheduler on the pipeline's noise schedule (betas, prediction type) with the timesteps a DDIM-config
    pipeline of that schedule samples: a DDIM config is taken as it is, any other sampler's gets SD's DDIM grid
    (`SD_DDIM_GRID`). `overrides` go last."""
    from diffusers import DDIMScheduler

    config = pipe.scheduler.config
    grid = {} if isinstance(pipe.scheduler, DDIMScheduler) else SD_DDIM_GRID
    # DDIM clips x0 to [-1, 1] unless told not to: right for pixels, wrong for latents. SD 1.x/2.x scheduler
    # files say clip_sample: false; a config without the field (an Euler or DEIS one, as SDXL models ship)
    # would clip. A config that has it is taken as it is.
    latent = {} if "clip_sample" in config else {"clip_sample": False}
    return DDIMScheduler.from_config(config, **(grid | latent | overrides))


def _rollout_schedule(pipe, cfg: TrainConfig) -> tuple:
    """The DDIM scheduler the x_t rollout steps with, and the UNet's query timestep after k of its steps."""
    if not cfg.legacy_schedule:
        ddim = ddim_scheduler(pipe)
        ddim.set_timesteps(cfg.rollout_steps)
        return ddim, lambda k: ddim.timesteps[k]
    # The released code builds its DDIM with the library's defaults (no offset) and reads the query
    # timestep off a 1000-step grid: 999 - floor(k * 1000 / T) for SD's 1000 training timesteps.
    ddim = ddim_scheduler(pipe, timestep_spacing="leading", steps_offset=0)
    ddim.set_timesteps(cfg.rollout_steps)
    n = ddim.config.num_train_timesteps
    return ddim, lambda k: torch.tensor(n - 1 - k * n // cfg.rollout_steps)


class FlowRollout:
    """SD3's and FLUX.1's trajectory (flow matching): the FlowMatchEulerDiscreteScheduler's sigmas for `steps` steps
    (with the pipeline's shift), from pure noise at sigma 1 to the data at sigma 0. After k Euler steps of the
    model's velocity the latent is at sigma_k, x_t = (1 - sigma_k) x0 + sigma_k noise, and the model is queried at
    that sigma's timestep (1000 sigma_k): its own, as the DDIM rollout of the other families. FLUX.1's scheduler is
    set as its pipeline sets it: on the pipeline's sigma grid, shifted (FLUX.1 [dev]'s `use_dynamic_shifting`) for
    `image_tokens` packed latent tokens, which one training size fixes."""

    init_noise_sigma = 1.0

    def __init__(self, pipe, steps: int, image_tokens: int | None = None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        dynamic = scheduler.config.get("use_dynamic_shifting", False)
        if dynamic and image_tokens is None:
            raise ValueError(
                "the scheduler shifts its sigmas by image size (use_dynamic_shifting): train at one resolution "
                "(TrainConfig(resolutions=(1024,)), say)"
            )
        if is_flux(pipe):  # as FluxPipeline sets them: its own sigma grid, shifted for the image size if dynamic
            mu = _flux_shift(scheduler, image_tokens) if dynamic else None
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        else:
            scheduler.set_timesteps(steps)
        self.sigmas, self.timesteps = scheduler.sigmas.float(), scheduler.timesteps.float()

    def step(self, velocity: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """One Euler step from sigma_i to sigma_{i+1} (the scheduler's own step, without its step-index state)."""
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * velocity


def _flux_shift(scheduler, image_tokens: int) -> float:
    """The shift mu the Flux pipeline gives its scheduler for `image_tokens` latent tokens."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler.config
    return calculate_shift(image_tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)


class FluxCall:
    """FLUX.1's transformer called on latents as the other families' are, (N, C, h, w) in, velocity out: packed into
    2 x 2 patches as a token sequence with the image tokens' positional ids and zero ids for the text tokens, the
    timestep in [0, 1], and the guidance its [dev] model embeds; as FluxPipeline calls it."""

    def __init__(self, pipe, guidance: float):
        self.pipe, self.model, self.guidance = pipe, pipe.transformer, guidance

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        from diffusers import FluxPipeline

        n, channels, height, width = x.shape
        packed = FluxPipeline._pack_latents(x, n, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(n, height // 2, width // 2, x.device, x.dtype)
        text_ids = torch.zeros(cond.states.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = torch.full((n,), self.guidance, device=x.device) if self.model.config.guidance_embeds else None
        velocity = self.model(
            hidden_states=packed, encoder_hidden_states=cond.states, pooled_projections=cond.pooled,
            # the rollout's timesteps live on the host (on the 0-1000 scale)
            timestep=(t.to(x.device) / 1000).expand(n), img_ids=image_ids, txt_ids=text_ids, guidance=guidance,
            return_dict=False,
        )[0]  # fmt: skip
        scale = self.pipe.vae_scale_factor
        return FluxPipeline._unpack_latents(velocity, height * scale, width * scale, scale)


@dataclass
class Rollout:
    """The x_t of the iterations one rollout serves (see TrainConfig.rollout_reuse), in iteration order.

    Attributes:
        targets: (N,) the target index of each trajectory; iteration j's is targets[j % N].
        depths: (n,) each iteration's rollout depth k.
        latents: (n, C, h, w) each iteration's x_t: its trajectory after k steps.
    """

    targets: torch.Tensor
    depths: torch.Tensor
    latents: torch.Tensor

    def target(self, j: int) -> int:
        return int(self.targets[j % len(self.targets)])

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of it: a run killed within a rollout's iterations resumes on the same latents
        (they cannot be rebuilt: they were made by the membrane as it was at the rollout's step)."""
        return {"rollout_targets": self.targets, "rollout_depths": self.depths, "rollout_latents": self.latents.cpu()}

    @classmethod
    def from_state(cls, saved: dict, device) -> Rollout:
        return cls(saved["rollout_targets"], saved["rollout_depths"], saved["rollout_latents"].to(device))


def _roll_out(
    guided_step: Callable[[torch.Tensor, int, Conditioning], torch.Tensor],
    c_targets: Conditioning,
    c_empty: Conditioning,
    cfg: TrainConfig,
    gen,
    iterations: int,
    shape: tuple,
    device,
    init_noise_sigma: float,
) -> Rollout:
    """Draw the next `iterations` iterations' targets, size, depths and noises, and roll them out (no grad).

    `guided_step(x, i, cond)` takes the latents one CFG step of the membrane-on model (cond: the uncond halves,
    then the cond ones). One iteration is the spec's rollout, with its draws in the order the spec's loop made
    them (target, size, depth, noise): a seeded run at rollout_reuse 1 gives what it gave before the option."""
    channels, resolutions, vae_scale = shape
    count = min(cfg.rollout_trajectories or cfg.rollout_reuse, iterations)
    targets = torch.tensor([int(torch.randint(len(c_targets), (), generator=gen)) for _ in range(count)])
    height, width = _draw_size(resolutions, gen, vae_scale)
    depths = torch.tensor([int(torch.randint(1, cfg.rollout_steps, (), generator=gen)) for _ in range(iterations)])
    noises = [torch.randn(1, channels, height, width, generator=gen) for _ in range(count)]
    x = torch.cat(noises).to(device) * init_noise_sigma
    # each trajectory only as deep as the deepest of its iterations
    deepest = [int(depths[n::count].max()) for n in range(count)]
    latents = [None] * iterations
    with torch.no_grad():
        for i in range(max(deepest)):
            going = [n for n in range(count) if deepest[n] > i]
            cond = Conditioning.cat([c_empty.expand(len(going)), c_targets[targets[going].tolist()]])
            stepped = guided_step(x[going], i, cond)
            x = stepped if len(going) == count else x.index_copy(0, torch.tensor(going, device=x.device), stepped)
            for j in torch.nonzero(depths == i + 1).flatten().tolist():
                latents[j] = x[j % count]
    return Rollout(targets, depths, torch.stack(latents))


def train(
    pipe: DiffusionPipeline,
    targets: list[str],
    surrogate: str = "",
    config: TrainConfig = TrainConfig(),
    checkpoint: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> SPM:
    """Train an SPM that erases `targets` (one drawn per step) towards `surrogate` ("" = erase).

    Args:
        pipe: a Stable Diffusion (1.x, 2.x, XL or 3) pipeline; its UNet (SD3: transformer) and text encoders
            stay frozen. SDXL's UNet calls get the pooled embeddings and the time ids of the drawn size, as its
            pipeline passes them. SD3 trains on its own objective: the rollout follows its flow-matching
            sigmas, and the losses are on velocity predictions (see FlowRollout).
        targets: the concept prompts, e.g. ["Snoopy"]; they are stored for Facilitated Transport.
        surrogate: the concept to replace the targets with (erase-to-replace), or "".
        config: hyperparameters.
        checkpoint: file for resumable checkpoints, written every `checkpoint_every` steps, and the
            trained factors once finished (a failed save of the SPM, on a full disk, then loses no
            training: delete the file once the SPM is saved); one from the same settings is resumed.
        progress: show a progress bar with the loss terms.
        callback: called after every step with (step, {"erase": ..., "anchor": ..., "lr": ...}).

    Returns:
        The trained SPM, with provenance (model, settings) in its metadata.

    Raises:
        NonFiniteLoss: the loss or the factors became NaN or infinite (the step is named); the last
            checkpoint is kept, nothing is returned.
    """
    if not targets:
        raise ValueError("give at least one target concept to erase")
    model = denoiser(pipe)  # the UNet; SD3's transformer
    if model.dtype != torch.float32:
        raise ValueError(
            f"train() needs the pipeline in float32 (its UNet is {model.dtype}): load it with "
            "dtype=torch.float32; for bfloat16 compute use TrainConfig(dtype='bfloat16')"
        )
    cfg = config
    if cfg.legacy_schedule and (is_sd3(pipe) or is_flux(pipe)):
        raise ValueError(
            "legacy_schedule is the released code's DDIM trajectory: SD3 and FLUX.1 (flow matching) have none"
        )
    _check_flux_sizes(pipe, cfg.resolved_resolutions(pipe))
    if cfg.adversarial_every and (is_sd3(pipe) or is_sdxl(pipe) or is_flux(pipe)):
        raise ValueError(
            "adversarial_every searches prompts in one text encoder's token embeddings: SD 1.x/2.x pipelines only"
        )
    model.requires_grad_(False)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False)
    spm = SPM.init(model, targets, cfg.rank, cfg.alpha, cfg.seed)
    attached = attach(pipe, spm, transport=False)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    try:
        _optimise(
            pipe, attached, targets, surrogate, cfg, Path(checkpoint) if checkpoint else None, progress, callback
        )
        layers = {
            name: (layer.down[0].detach().cpu().clone(), layer.up[0].detach().cpu().clone())
            for name, layer in attached.layers.items()
        }
    finally:
        attached.detach()
        if cfg.gradient_checkpointing:
            model.disable_gradient_checkpointing()
    provenance = {
        "base_model": _model_name(pipe),
        "surrogate": surrogate,
        "train_config": asdict(cfg),
        "spm_version": _version(),
    }
    return SPM(list(targets), layers, cfg.alpha, provenance)


def _optimise(
    pipe, attached, targets, surrogate, cfg: TrainConfig, checkpoint: Path | None, progress: bool, callback
) -> None:
    from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

    # 1. Trainable factors, optimiser, schedule, one generator for every random draw.
    model = denoiser(pipe)
    device = model.device
    params = [p for layer in attached.layers.values() for p in (layer.down[0], layer.up[0])]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, cfg.warmup_steps, cfg.iterations, cfg.restarts)
    gen = torch.Generator().manual_seed(cfg.seed)
    resolutions, flux = cfg.resolved_resolutions(pipe), FluxCall(pipe, cfg.rollout_guidance) if is_flux(pipe) else None
    flow = FlowRollout(pipe, cfg.rollout_steps, _image_tokens(pipe, resolutions)) if is_sd3(pipe) or flux else None
    ddim, query_timestep = (flow, lambda k: flow.timesteps[k]) if flow else _rollout_schedule(pipe, cfg)
    c_targets = encode(pipe, list(targets))[0]
    # "" is the pipeline's unconditional branch: SDXL base conditions it on zeros, not on the empty prompt's states
    c_empty = unconditional(pipe)
    c_neu = encode(pipe, [surrogate])[0] if surrogate else c_empty
    vocabulary = anchor_vocabulary(pipe.tokenizer, list(targets)) if cfg.vocabulary_anchors else []
    ckpt = Checkpoint(checkpoint, _run_settings(targets, surrogate, cfg, pipe), cfg.checkpoint_every)
    state = {"params": params, "opt": opt, "sched": sched, "gen": gen}
    # the latest adversarial prompts' states, one per layout (before the target, alone): checkpointed with the rest
    adversarial = [torch.zeros(2, *c_targets.states.shape[1:], device=device)] if cfg.adversarial_every else []
    if adversarial:
        state["adversarial"] = adversarial
    start, saved_extra = ckpt.resume(state)
    saved = start  # the step of the checkpoint on disk (0: none): a diverged run names it
    if start and not _finite(params):  # left by a diverged run (before these checks): it cannot be resumed
        raise CheckpointError(f"checkpoint {checkpoint} holds NaN or infinite weights: delete it to start over")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

    def guided_step(x, i: int, cond: Conditioning):
        """One rollout step of the latents `x` (n trajectories), CFG with the membrane on; `cond`: n uncond, n cond."""
        t = ddim.timesteps[i]
        if flux:  # FLUX.1 samples without CFG: the conditional half alone, its guidance embedded
            guided = unet(x, t, cond[len(x) :], torch.ones(1, 1))
        else:
            uncond, conditioned = unet(x if len(x) == 1 else torch.cat([x, x]), t, cond, torch.ones(1, 1)).chunk(2)
            guided = uncond + cfg.rollout_guidance * (conditioned - uncond)
        # SD3: the same CFG and losses, on velocities (noise - x0) instead of noise predictions
        return flow.step(guided, i, x) if flow else ddim.step(guided, t, x).prev_sample

    def unet(x, t, cond: Conditioning, gamma):
        if flux:
            with attached.permeable(gamma), autocast:
                return flux(x.expand(len(cond), -1, -1, -1), t, cond).float()
        if flow:  # SD3's transformer: a velocity, conditioned on the text tokens and the pooled embedding
            with attached.permeable(gamma), autocast:
                return model(
                    x.expand(len(cond), -1, -1, -1), encoder_hidden_states=cond.states, pooled_projections=cond.pooled,
                    # the rollout's timesteps live on the host: SD3 embeds them on their own device
                    timestep=t.to(x.device).expand(len(cond)), return_dict=False,
                )[0].float()  # fmt: skip
        pixels = (x.shape[2] * pipe.vae_scale_factor, x.shape[3] * pipe.vae_scale_factor)  # SDXL's time ids
        with attached.permeable(gamma), autocast:
            return pipe.unet(x.expand(len(cond), -1, -1, -1), t, **cond.unet_kwargs(*pixels)).sample.float()

    reuse, rollout = cfg.rollout_reuse, None
    if start % reuse:  # killed within a rollout's iterations: its latents are in the checkpoint
        if "rollout_latents" not in saved_extra:
            raise CheckpointError(f"checkpoint {checkpoint} has no rollout latents: delete it to start over")
        rollout = Rollout.from_state(saved_extra, device)
    channels = model.config.in_channels // 4 if flux else model.config.in_channels  # FLUX.1's: 2 x 2 patches
    shape = (channels, resolutions, pipe.vae_scale_factor)
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not progress, desc="SPM")
    for step in bar:
        # 2-3. A target, a size, the rollout depth k ~ U{1..T-1}, and x_t: k DDIM steps of the membrane-on model,
        # CFG on c_tar; at rollout_reuse R, those of the next R iterations at every R-th step.
        if step % reuse == 0:
            rollout = _roll_out(guided_step, c_targets, c_empty, cfg, gen, min(reuse, cfg.iterations - step), shape,
                                device, ddim.init_noise_sigma)  # fmt: skip
        drawn, k, x = rollout.target(step % reuse), int(rollout.depths[step % reuse]), rollout.latents[step % reuse]
        c_tar, x = c_targets[drawn][None], x[None]
        t = query_timestep(k)
        random_anchors, empties = (2, 2) if cfg.legacy_anchors else (cfg.num_anchors, 1)
        anchors = [_random_anchors(c_tar, random_anchors, cfg.anchor_scale, gen), c_empty.expand(empties)]
        if vocabulary:
            anchors.append(encode(pipe, sample_vocabulary_prompts(vocabulary, cfg.vocabulary_anchors, gen))[0])
        anchors = Conditioning.cat(anchors)
        # 4. Frozen predictions (membrane closed), then the membrane's, with grad.
        with torch.no_grad():
            frozen = unet(x, t, Conditioning.cat([c_neu, c_tar, anchors]), torch.zeros(1, 1))
        e_neu, e_tar, e_anchor = frozen[:1], frozen[1:2], frozen[2:]
        erased = e_neu - cfg.eta * (e_tar - e_neu)
        if adversarial and step % cfg.adversarial_every == 0:  # a new search, in the layout it is the turn of
            layout = (step // cfg.adversarial_every) % 2
            text = targets[drawn] if layout == 0 else ""
            with_membrane = lambda c, x=x, t=t: unet(x, t, c, torch.ones(1, 1))  # noqa: E731
            adversarial[0][layout] = _adversarial_states(pipe, with_membrane, text, e_tar, cfg, gen)[0]
        # the searches made so far (one at the first step, then both layouts' latest)
        attacks = Conditioning(adversarial[0][: min(2, step // cfg.adversarial_every + 1)]) if adversarial else None
        pred = unet(
            x, t, Conditioning.cat([c_tar, anchors, *([attacks] if attacks is not None else [])]), torch.ones(1, 1)
        )
        loss_erase = F.mse_loss(pred[:1], erased)
        loss_anchor = F.mse_loss(pred[1 : 1 + len(anchors)], e_anchor)
        loss = loss_erase + cfg.anchor_weight * loss_anchor
        if attacks is not None:  # the adversarial prompts are erased towards c_tar's target: they make the concept
            loss_adversarial = F.mse_loss(pred[1 + len(anchors) :], erased.expand(len(attacks), -1, -1, -1))
            loss = loss + loss_adversarial
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # The loss terms are read on the host every step anyway (the callback and the progress bar take
        # floats), so checking them costs no extra device sync; they are read before opt.step, so a
        # non-finite loss never reaches the factors, and no checkpoint is written after it.
        erase, anchor = loss_erase.item(), loss_anchor.item()
        for value in (erase, anchor, loss.item()):
            if not math.isfinite(value):
                raise NonFiniteLoss(_diverged(f"loss became {value}", step + 1, cfg, ckpt, saved))
        opt.step()
        sched.step()
        logs = {"erase": erase, "anchor": anchor, "lr": sched.get_last_lr()[0]}
        if attacks is not None:
            logs["adversarial"] = loss_adversarial.item()
        bar.set_postfix(erase=f"{logs['erase']:.4g}", anchor=f"{logs['anchor']:.3g}")
        if callback:
            callback(step, logs)
        # 5. A resumable checkpoint.
        if ckpt.due(step + 1):
            _check_factors(params, step + 1, cfg, ckpt, saved)
            ckpt.save(step + 1, state, **(rollout.state() if (step + 1) % reuse else {}))
            saved = step + 1
    _check_factors(params, cfg.iterations, cfg, ckpt, saved)
    if saved < cfg.iterations:  # the factors, until the caller has saved the SPM: a full disk loses no training
        ckpt.save_finished(cfg.iterations, {"params": params, "gen": gen})


def _adversarial_states(pipe, predict, text: str, goal: torch.Tensor, cfg: TrainConfig, gen) -> torch.Tensor:
    """(1, L, D) states of a prompt of `adversarial_tokens` free token embeddings before the tokens of `text`
    (the target prompt, or "": the free tokens alone), searched for `adversarial_steps` Adam steps so that `predict`
    (the model with the membrane, on this step's x_t) gives `goal` (the frozen model's noise for the target).
    Starts from random vocabulary tokens; only the embeddings get gradients (the factors are left alone)."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    table = text_encoder.get_input_embeddings().weight.detach()
    words = tokenizer(text, add_special_tokens=False).input_ids if text else []
    length = tokenizer.model_max_length
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(table)) if i not in special])
    start = ordinary[torch.randint(len(ordinary), (cfg.adversarial_tokens,), generator=gen)]
    body = ([tokenizer.bos_token_id] + start.tolist() + words)[: length - 1] + [tokenizer.eos_token_id]
    ids = torch.tensor([body + [tokenizer.pad_token_id] * (length - len(body))], device=text_encoder.device)
    positions = list(range(1, 1 + min(cfg.adversarial_tokens, length - 2)))
    soft = table[start[: len(positions)]].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([soft], lr=cfg.adversarial_lr)
    for _ in range(cfg.adversarial_steps):
        states = soft_states(text_encoder, ids, positions, soft)
        loss = F.mse_loss(predict(Conditioning(states)), goal)
        (soft.grad,) = torch.autograd.grad(loss, [soft])
        optimiser.step()
    with torch.no_grad():
        return soft_states(text_encoder, ids, positions, soft)


def soft_states(text_encoder, ids: torch.Tensor, positions: list[int], soft: torch.Tensor) -> torch.Tensor:
    """The text encoder's states (N, L, D) for `ids` (N, L), with the token embeddings at `positions` replaced by
    `soft` (len(positions), D): differentiable with respect to `soft`; the rest is the encoder's own."""

    def replace(_module, _inputs, output):
        output = output.clone()
        output[:, positions] = soft.to(output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        return text_encoder(ids.to(text_encoder.device))[0]
    finally:
        handle.remove()


def _check_factors(params: list[torch.Tensor], step: int, cfg: TrainConfig, ckpt: Checkpoint, saved: int) -> None:
    """Finite losses can still overflow the gradients into the factors: checked before every checkpoint
    and at the end, in one device sync each (every step would sync the device for 2 * layers tensors)."""
    if not _finite(params):
        raise NonFiniteLoss(_diverged("the weights became NaN or infinite", step, cfg, ckpt, saved))


def _finite(params: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def _diverged(what: str, step: int, cfg: TrainConfig, ckpt: Checkpoint, saved: int) -> str:
    kept = f"the checkpoint at step {saved} is kept" if ckpt.path is not None and saved else "no checkpoint was saved"
    return f"{what} at step {step}: lower lr (now {cfg.lr}) or anchor_weight (now {cfg.anchor_weight}); {kept}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spm-erasing")
    except PackageNotFoundError:
        return "0+unknown"
