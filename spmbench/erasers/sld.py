"""Safe Latent Diffusion (Schramowski et al., CVPR 2023) as a sampling-time guidance, four presets.

With eps_u, eps_p, eps_s the predictions for the empty, the user's and the safety-concept prompt:

    scale  = where(eps_p - eps_s >= threshold, 0, clamp(sld_scale * |eps_p - eps_s|, max=1))
    g_safe = scale * (eps_s - eps_u) + momentum_scale * v;   v <- beta * v + (1 - beta) * g_safe
    eps    = eps_u + s * (eps_p - eps_u - [step >= warmup] * g_safe)

The presets' warm-ups count steps of the paper's 50-step sampling; a generation of n steps waits the same
fraction of its sampling (`warmup_for`), so sld-weak's 15 is 5 at toy world v3's 15 steps (unscaled, it waited
all 15 and never acted) and 9 at world v2's 30.

Implemented with a forward hook on the UNet (no pipeline fork): the hook runs the safety prompt on
the same latents and hands the pipeline a conditional prediction eps_p - g_safe, so the pipeline's
own classifier-free guidance yields the formula above.

SDXL: the same hook; the safety prompt's call gets its pooled embedding and the pipeline's own added time
ids (those of its conditional half). SD3 is refused: the presets' thresholds and scales are set on a UNet's
noise predictions, and SD3's transformer predicts flow-matching velocities.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from spm import Conditioning, encode_prompts
from spm.files import write_text_atomic
from spmbench.erasers.base import Eraser, targets_prompt


PAPER_STEPS = 50  # the sampling steps the presets' warm-ups were set for (SLD's paper, SD 1.x's default)


def warmup_for(preset_warmup: int, steps: int) -> int:
    """The warm-up of a preset at `steps` sampling steps: the same fraction of the sampling as at the paper's 50,
    to the nearest step with halves up (never guiding before the paper's fraction), and at most steps - 1 so
    that every preset guides at least the last step (a preset is a guidance, not a no-op)."""
    nearest = (2 * preset_warmup * steps + PAPER_STEPS) // (2 * PAPER_STEPS)
    return max(0, min(steps - 1, nearest))


@dataclass(frozen=True)
class SLDPreset:
    warmup_steps: int
    sld_scale: float
    threshold: float
    momentum_scale: float
    momentum_beta: float


PRESETS = {
    "weak": SLDPreset(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SLDPreset(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SLDPreset(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SLDPreset(0, 5000.0, 1.0, 0.5, 0.7),
}


class SafetyGuidance:
    """The hook's state for one generation: step count and momentum."""

    def __init__(self, preset: SLDPreset, concept_embeds: torch.Tensor | Conditioning):
        """concept_embeds: the safety concept's conditioning, as `spm.encode_prompts` gives it."""
        self.preset, self.concept_embeds = preset, concept_embeds
        self.reset()

    def reset(self, steps: int = PAPER_STEPS) -> None:
        """A new generation of `steps` sampling steps: step count and momentum start over, and the warm-up is the
        preset's scaled to `steps` (`warmup`, the one in effect)."""
        self.step, self.momentum, self.busy = 0, None, False
        self.sampling = False  # set by `apply`'s generate for the pipeline call it guides
        self.warmup = warmup_for(self.preset.warmup_steps, steps)

    def safety_term(self, eps_u: torch.Tensor, eps_p: torch.Tensor, eps_s: torch.Tensor) -> torch.Tensor:
        """g_safe for this step (zero during warm-up), updating the momentum."""
        p = self.preset
        # |.|: the scale is in [0, 1] (without it, elements far below the threshold got large
        # negative scales that pushed every prompt, not just the concept's, off the image manifold)
        scale = torch.clamp((eps_p - eps_s).abs() * p.sld_scale, max=1.0)
        scale = torch.where(eps_p - eps_s >= p.threshold, torch.zeros_like(scale), scale)
        guidance = (eps_s - eps_u) * scale
        momentum = torch.zeros_like(guidance) if self.momentum is None else self.momentum
        guidance = guidance + p.momentum_scale * momentum
        self.momentum = p.momentum_beta * momentum + (1 - p.momentum_beta) * guidance
        active = self.step >= self.warmup
        self.step += 1
        return guidance if active else torch.zeros_like(guidance)

    def safety_kwargs(self, sample: torch.Tensor, half: int, kwargs: dict) -> dict:
        """The UNet's conditioning for the safety prompt on `half` latents; SDXL's with its pooled embedding
        and the time ids the pipeline gave the conditional half of this call."""
        concept = self.concept_embeds
        if not isinstance(concept, Conditioning):
            return {"encoder_hidden_states": concept.to(sample).expand(half, -1, -1)}
        added = dict(kwargs.get("added_cond_kwargs") or {})
        if concept.pooled is not None:
            added = {**added, "text_embeds": concept.pooled.to(sample).expand(half, -1)}
            added["time_ids"] = added["time_ids"][half:]
        return {"encoder_hidden_states": concept.states.to(sample).expand(half, -1, -1), "added_cond_kwargs": added}

    def hook(self, unet, args, kwargs, output):
        # SLD is a guidance of classifier-free sampling: it reads the pipeline's (uncond, cond) halves. Other UNet
        # calls (an attack's loss on conditional predictions only) see the UNet as it is; the hook's own call too.
        if self.busy or not self.sampling:
            return output
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        predicted = output[0] if isinstance(output, tuple) else output.sample  # return_dict=False gives a tuple
        eps_u, eps_p = predicted.chunk(2)
        half = sample.shape[0] // 2
        self.busy = True
        try:
            eps_s = unet(sample[half:], timestep, **self.safety_kwargs(sample, half, kwargs)).sample
        finally:
            self.busy = False
        # The pipeline then forms eps_u + s * (cond - eps_u) = eps_u + s * (eps_p - eps_u - g_safe).
        guided = torch.cat([eps_u, eps_p - self.safety_term(eps_u, eps_p, eps_s)])
        if isinstance(output, tuple):
            return (guided, *output[1:])
        output.sample = guided
        return output


class SLD(Eraser):
    artifact_suffix = ".json"
    unsupported = MappingProxyType(
        {
            "sd3": "its guidance thresholds and scales are set on a UNet's noise predictions; SD3's transformer "
            "predicts flow-matching velocities (and has no UNet to hook)",
            "flux": "it guides classifier-free sampling, which FLUX.1 does not do (its guidance is embedded), and its "
            "thresholds and scales are set on a UNet's noise predictions, not flow-matching velocities",
        }
    )

    def __init__(self, preset: str = "medium"):
        self.preset = PRESETS[preset]
        self.name = f"sld-{preset}"

    def fit_one(self, pipe, targets: tuple[str, ...], path: Path, resolution: int, settings) -> None:
        """Nothing to learn; the artifact records the safety concept and preset, and that the preset's warm-up
        counts steps of 50-step sampling (a generation's own is scaled to its steps when it runs)."""
        record = {
            "safety_concept": targets_prompt(pipe, targets, self.name),
            "preset": asdict(self.preset),
            "warmup_counts_steps_of": PAPER_STEPS,
        }
        write_text_atomic(path, json.dumps(record))

    @contextmanager
    def apply(self, pipe, artifacts: list[Path]):
        concept = json.loads(artifacts[0].read_text())["safety_concept"]
        with torch.no_grad():
            embeds = encode_prompts(pipe, [concept])
        guidance = SafetyGuidance(self.preset, embeds)
        handle = pipe.unet.register_forward_hook(guidance.hook, with_kwargs=True)

        def generate(prompts: list[str], **kwargs):
            if kwargs.get("guidance_scale", 7.5) <= 1:
                raise ValueError("SLD works through classifier-free guidance: use a guidance_scale above 1")
            custom = kwargs.get("timesteps")  # a pipeline given its timesteps samples those; else 50 by default
            guidance.reset(len(custom) if custom is not None else kwargs.get("num_inference_steps") or PAPER_STEPS)
            guidance.sampling = True
            try:
                return pipe(prompts, **kwargs)
            finally:
                guidance.sampling = False

        generate.guidance = guidance  # the hook's state, for inspection
        try:
            yield generate
        finally:
            handle.remove()
