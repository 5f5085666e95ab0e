"""Attach SPMs to a pipeline, call it with per-prompt permeability, merge statically, detach."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from spm.adapter import FAMILIES, SPM, first_nonfinite, layer_names, named_for, unet_family
from spm.layers import MembraneLayer, PermeabilityState, base_of, layer_shapes
from spm.models import denoiser
from spm.transport import Transport


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class SPMMismatchError(ValueError):
    """An SPM does not fit the model it is applied to."""


def check_fit(spm: SPM, unet: nn.Module, label: str = "SPM") -> dict[str, nn.Module]:
    """The model's membrane layers by kohya name, after checking `spm` covers exactly them.

    Raises SPMMismatchError naming the first mismatching layer, ValueError naming the first layer with
    NaN or infinite weights; nothing is modified.
    """
    if not math.isfinite(spm.alpha):
        raise ValueError(f"{label} has alpha {spm.alpha}: give a finite alpha")
    family = unet_family(unet)
    if spm.family != family:
        raise SPMMismatchError(
            f"{label} is an SPM for {FAMILIES[spm.family]} and the model is {FAMILIES[family]}: an SPM applies only "
            "to models of the family it was trained on; train one on this model"
        )
    layers = {name: unet.get_submodule(path) for name, path in layer_names(unet).items()}
    for name in sorted(set(layers) | set(spm.layers)):
        if name not in layers:
            raise SPMMismatchError(
                f"{label} has layer '{name}' that the model lacks: trained for another architecture"
            )
        if name not in spm.layers:
            raise SPMMismatchError(
                f"{label} has no weights for model layer '{name}': trained for another architecture"
            )
        down, up = spm.layers[name]
        want_down, want_up = layer_shapes(layers[name], down.shape[0])
        if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
            raise SPMMismatchError(
                f"{label} layer '{name}' has shapes down {tuple(down.shape)} / up {tuple(up.shape)}, "
                f"the model needs {want_down} / {want_up}"
            )
    bad = first_nonfinite(
        {f"{name}.{side}": t for name, pair in spm.layers.items() for side, t in zip(("down", "up"), pair)}
    )
    if bad is not None:
        raise ValueError(f"{label} layer '{bad}' holds NaN or infinite weights (a diverged training?): retrain it")
    return layers


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class AttachedSPMs:
    """SPMs attached to a pipeline's UNet. Call it like the pipeline; it sets each prompt's gamma.

    Example:
        >>> attached = spm.attach(pipe, [spm.SPM.load("snoopy.safetensors")])
        >>> images = attached(["a photo of Snoopy", "a photo of a cat"], num_inference_steps=30).images
        >>> attached.detach()   # the pipeline is exactly as before
    """

    def __init__(
        self,
        pipe: DiffusionPipeline | nn.Module,
        spms: Sequence[SPM],
        transport: bool,
        legacy: bool,
        weights: Sequence[float] | None,
        similarity: str = "paper",
        least: float = 0.0,
    ):
        # A bare UNet (no text side) takes SPMs at fixed weights: timing or merging needs no pipeline.
        self.pipe, self.unet = pipe, denoiser(pipe)  # SD3: the transformer
        self.spms = [named_for(s, self.unet) for s in spms]
        self.weights = torch.tensor(_weights_for(self.spms, weights))
        self.detached = False
        if transport and not hasattr(pipe, "text_encoder"):
            raise ValueError(
                "Facilitated Transport needs the pipeline's text encoder: pass the pipeline, not its UNet"
            )
        if any(isinstance(m, MembraneLayer) for m in self.unet.modules()):
            raise ValueError(
                "this pipeline already has SPMs attached: detach() them first, then attach all SPMs at once"
            )
        fits = [
            check_fit(s, self.unet, f"SPM #{i} ({', '.join(s.targets) or 'no targets'})")
            for i, s in enumerate(self.spms)
        ]
        self.state = PermeabilityState()
        self.state.legacy = legacy
        self.state.default = self.weights[None]  # direct UNet/pipeline calls run at the fixed weights
        targets = [s.targets for s in self.spms]
        self.transport = Transport(targets, pipe, similarity, least=least) if transport else None
        self.paths = layer_names(self.unet)
        for name, layer in fits[0].items():
            wrapper = MembraneLayer(base_of(layer), self.state)
            for spm in self.spms:
                down, up = spm.layers[name]
                wrapper.add_branch(down, up, spm.scale)
            wrapper.packed()  # the one-off packing at attach, not in the first generation's first step
            _set_module(self.unet, self.paths[name], wrapper)

    @property
    def layers(self) -> dict[str, MembraneLayer]:
        return {name: self.unet.get_submodule(path) for name, path in self.paths.items()}

    def permeability(self, prompts: str | list[str]) -> torch.Tensor:
        """(B, k) gammas: Facilitated Transport times the weights, or the weights alone without FT."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.transport is None:
            return self.weights.expand(len(prompts), -1).clone()
        return self.transport(prompts) * self.weights

    @contextmanager
    def permeable(self, gamma: torch.Tensor) -> Iterator[None]:
        """Within the block, every UNet call uses `gamma` (B, k), tiled over CFG copies."""
        previous, self.state.gamma = self.state.gamma, gamma
        try:
            yield
        finally:
            self.state.gamma = previous

    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, **pipe_kwargs):
        """Run the pipeline with each prompt's own permeability (and the same on its negative branch)."""
        if self.detached:
            raise RuntimeError("these SPMs were detached from the pipeline: attach() them again to use them")
        if self.pipe is self.unet:
            raise TypeError("these SPMs are attached to a bare UNet: call the UNet itself, within permeable(gamma)")
        gamma = self.permeability(prompt)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        for key in ("prompt_2", "prompt_3"):  # SDXL's, SD3's, FLUX.1's other encoders' own prompts: the most permeable
            other = pipe_kwargs.get(key)
            if other is not None:
                gamma = torch.maximum(
                    gamma, self.permeability([other] * len(prompts) if isinstance(other, str) else other)
                )
        gamma = gamma.repeat_interleave(num_images_per_prompt, dim=0)
        with self.permeable(gamma):
            return self.pipe(prompt=prompt, num_images_per_prompt=num_images_per_prompt, **pipe_kwargs)

    def detach(self) -> None:
        """Put the original layers back; the pipeline is exactly as before `attach`. A second call does nothing."""
        if self.detached:
            return
        for name, layer in self.layers.items():
            _set_module(self.unet, self.paths[name], layer.base_layer)
        self.detached = True


def _weights_for(spms: Sequence[SPM], weights: Sequence[float] | None) -> list[float]:
    """One weight per SPM (default 1), or a one-line error."""
    if not spms:
        raise ValueError("no SPMs given: pass at least one")
    if weights is None:
        return [1.0] * len(spms)
    if len(weights) != len(spms):
        raise ValueError(f"{len(weights)} weights given for {len(spms)} SPMs: give one weight per SPM")
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights {weights}: give a finite weight per SPM")
    return weights


def attach(
    pipe: DiffusionPipeline | nn.Module,
    spms: SPM | Sequence[SPM],
    transport: bool = True,
    legacy: bool = False,
    weights: Sequence[float] | None = None,
    similarity: str = "paper",
    least: float = 0.0,
) -> AttachedSPMs:
    """Attach one or more SPMs to a Stable Diffusion pipeline (any with unet/tokenizer/text_encoder; SDXL, and
    SD3 with its transformer, too).

    Args:
        pipe: a diffusers pipeline; or a bare UNet with `transport=False`, called directly within
            `permeable(gamma)` (a benchmark of the UNet forward needs no text side).
        spms: the SPMs; each keeps its own branch (gamma_i s_i U_i D_i x).
        transport: Facilitated Transport on (per-prompt gamma) or off (gamma = weights).
        legacy: reproduce the released code's gamma^2 and factor-sum combination.
        weights: a fixed multiplier per SPM (default 1).
        similarity: FT's prompt similarity: "paper" (the cosine of the padded hidden states) or
            "relative" (that cosine rescaled so the empty prompt scores 0; see spm.transport).
        least: FT's least permeability, which no prompt lowers: least + (1 - least) * gamma (0: the paper's).

    Raises:
        SPMMismatchError: an SPM does not cover exactly this UNet's membrane layers; nothing is attached.
    """
    return AttachedSPMs(pipe, [spms] if isinstance(spms, SPM) else spms, transport, legacy, weights, similarity, least)


class MergedSPMs:
    """SPMs baked into the UNet weights (FT-free deployment); `undo()` restores the exact originals."""

    def __init__(self, unet: nn.Module, spms: Sequence[SPM], weights: Sequence[float] | None):
        weights = _weights_for(spms, weights)
        spms = [named_for(s, unet) for s in spms]
        fits = [check_fit(s, unet, f"SPM #{i}") for i, s in enumerate(spms)]
        self.originals: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in fits[0].items():
                base = base_of(layer)
                self.originals[name] = base.weight.detach().clone()
                scratch = MembraneLayer(base, PermeabilityState())
                for spm in spms:
                    scratch.add_branch(*spm.layers[name], spm.scale)
                base.weight += scratch.delta_weight(weights)
        self.layers = {name: base_of(layer) for name, layer in fits[0].items()}

    def undo(self) -> None:
        with torch.no_grad():
            for name, base in self.layers.items():
                base.weight.copy_(self.originals[name])


def merge(
    pipe_or_unet: DiffusionPipeline | nn.Module, spms: SPM | Sequence[SPM], weights: Sequence[float] | None = None
) -> MergedSPMs:
    """W <- W + sum_i w_i s_i U_i D_i on every membrane layer; returns a handle whose `undo()` reverts it."""
    unet = denoiser(pipe_or_unet)
    return MergedSPMs(unet, [spms] if isinstance(spms, SPM) else spms, weights)
