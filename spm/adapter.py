"""One SPM in memory and on disk.

On disk: safetensors with kohya / A1111 LoRA key names (`lora_unet_<path_with_underscores>.lora_down
.weight`, `.lora_up.weight`, `.alpha`), as the released SPMs use, so a file also loads as a plain LoRA
in diffusers' `load_lora_weights` and in web UIs. SD 1.x/2.x paths are diffusers' module paths; SDXL's
are kohya's SDXL names (SDXL's original UNet blocks, `input_blocks_4_1_...`), see `layer_names`.
SD3 and FLUX.1: diffusers' own LoRA layout instead (`transformer.<module.path>.lora_A.weight`, `.lora_B.weight`,
no alpha keys), the one diffusers' SD3 and Flux `load_lora_weights` read: it converts no kohya names for SD3, and
refuses a key without 'lora' in it (a kohya `.alpha`). Metadata holds the target prompts (needed by Facilitated Transport), rank, alpha and our provenance.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from spm.files import save_safetensors_atomic
from spm.layers import init_down, layer_shapes, membrane_targets


FORMAT_VERSION = "1"
PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "transformer."  # SD3 and FLUX.1 files: diffusers' LoRA layout, see the module docstring


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, or None: such weights turn every image black."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def kohya_name(module_path: str) -> str:
    """'down_blocks.0.attentions.0.proj_in' -> 'down_blocks_0_attentions_0_proj_in'."""
    return module_path.replace(".", "_")


# The families an SPM file can be for, told apart by its layer names (so released files need no metadata).
FAMILIES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX.1"}
DIFFUSERS_LAYOUT = ("sd3", "flux")  # the families whose files use diffusers' LoRA layout and module paths
# SD3's membrane layers are named by their diffusers module paths, all inside the joint blocks.
SD3_BLOCKS = "transformer_blocks."
FLUX_SINGLE_BLOCKS = "single_transformer_blocks."  # FLUX.1's have these beside its double-stream transformer_blocks
# kohya's SDXL LoRAs name layers after SDXL's original (SGM) UNet, not diffusers': the web UIs read these
# names, and diffusers' SDXL loader maps them back (lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers).
SGM_BLOCKS = ("input_blocks_", "middle_block_", "output_blocks_")


def unet_family(unet: nn.Module) -> str:
    """'sd3' for SD3's transformer, 'flux' for FLUX.1's, 'sdxl' for a UNet conditioned on added text and time
    embeddings (SDXL's "text_time"), else 'sd'."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if isinstance(unet, SD3Transformer2DModel):
        return "sd3"
    if isinstance(unet, FluxTransformer2DModel):
        return "flux"
    return "sdxl" if getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time" else "sd"


def sgm_path(module_path: str, layers_per_block: int) -> str:
    """A diffusers path inside a transformer block -> SDXL's original one, as kohya names SDXL layers:
    'down_blocks.1.attentions.0.X' -> 'input_blocks.4.1.X' (input_blocks.0 is conv_in, then each down block
    holds layers_per_block (resnet, attention) pairs and a downsampler), 'mid_block.attentions.0.X' ->
    'middle_block.1.X', 'up_blocks.0.attentions.2.X' -> 'output_blocks.2.1.X' (up blocks hold one more)."""
    block, *rest = module_path.split(".")
    per_block = layers_per_block + 1
    if block == "mid_block" and rest[:2] == ["attentions", "0"]:
        return ".".join(["middle_block", "1", *rest[2:]])
    if block in ("down_blocks", "up_blocks") and len(rest) > 3 and rest[1] == "attentions":
        i, j = int(rest[0]), int(rest[2])
        index = 1 + i * per_block + j if block == "down_blocks" else i * per_block + j
        return ".".join(["input_blocks" if block == "down_blocks" else "output_blocks", str(index), "1", *rest[3:]])
    raise ValueError(f"layer {module_path} is not in an SDXL UNet's down, mid or up attentions: not an SDXL UNet?")


def layer_names(unet: nn.Module) -> dict[str, str]:
    """The UNet's membrane layers: kohya name (without 'lora_unet_') -> module path, in order.

    SD 1.x/2.x: the diffusers path with underscores, as kohya's SD LoRAs and the released SPMs name them;
    SDXL: kohya's SDXL names (SGM blocks: input_blocks / middle_block / output_blocks); SD3 and FLUX.1: the module
    paths themselves (their files use diffusers' layout, see the module docstring).
    """
    paths = list(membrane_targets(unet))
    family = unet_family(unet)
    if family in DIFFUSERS_LAYOUT:
        return {p: p for p in paths}
    if family == "sd":
        return {kohya_name(p): p for p in paths}
    layers_per_block = unet.config.layers_per_block
    if not isinstance(layers_per_block, int):  # per-block counts: kohya's naming assumes one count
        raise ValueError(f"SDXL UNets with per-block layers_per_block {layers_per_block} are not supported")
    return {kohya_name(sgm_path(p, layers_per_block)): p for p in paths}


def _sgm_named(names) -> bool:
    return any(name.startswith(SGM_BLOCKS) for name in names)


def _diffusers_named_sdxl(names) -> bool:
    """SDXL's layers under diffusers' names: its first down block has no attention (SD 1.x/2.x's has), and
    its deeper blocks stack several transformer blocks (SD 1.x/2.x's have one each)."""
    unet_names = [n for n in names if n.startswith(("down_blocks_", "mid_block_", "up_blocks_"))]
    if not unet_names:
        return False
    stacked = any(re.search(r"_transformer_blocks_[1-9]", n) for n in unet_names)
    return stacked or not any(n.startswith("down_blocks_0_attentions_") for n in unet_names)


def named_for(spm: SPM, unet: nn.Module) -> SPM:
    """`spm` with its layers under `unet`'s names. An SDXL SPM under diffusers' module names (the layout the
    released SPM code's SDXL script writes, `down_blocks_1_attentions_0_...`) gets kohya's SDXL names when
    its names are exactly the SDXL model's diffusers names; any other SPM is returned as it is."""
    if _sgm_named(spm.layers) or unet_family(unet) != "sdxl":
        return spm
    renamed = {kohya_name(path): name for name, path in layer_names(unet).items()}
    if set(spm.layers) != set(renamed):
        return spm
    return replace(spm, layers={renamed[name]: factors for name, factors in spm.layers.items()})


@dataclass
class SPM:
    """A semi-permeable membrane: rank-r factors for every membrane layer of a UNet.

    Attributes:
        targets: the concept strings it erases (Facilitated Transport compares prompts to these).
        layers: kohya layer name -> (down, up) factors.
        alpha: the LoRA alpha; the branch scale is alpha / rank.
        provenance: where it came from (base model, training settings, ...), free-form JSON.
    """

    targets: list[str]
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    alpha: float = 1.0
    provenance: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return next(iter(self.layers.values()))[0].shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def family(self) -> str:
        """The model family it was trained for, read off its layer names: 'flux', 'sd3', 'sdxl' (kohya's SGM names
        or diffusers' names, see `named_for`) or 'sd' (SD 1.x/2.x)."""
        if any(name.startswith(FLUX_SINGLE_BLOCKS) for name in self.layers):
            return "flux"
        if any(name.startswith(SD3_BLOCKS) for name in self.layers):
            return "sd3"
        return "sdxl" if _sgm_named(self.layers) or _diffusers_named_sdxl(self.layers) else "sd"

    @property
    def num_parameters(self) -> int:
        return sum(d.numel() + u.numel() for d, u in self.layers.values())

    @classmethod
    def init(cls, unet: nn.Module, targets: list[str], rank: int = 1, alpha: float = 1.0, seed: int = 0) -> SPM:
        """A fresh SPM for `unet`: D Kaiming-uniform, U = 0, so it changes nothing until trained."""
        gen = torch.Generator().manual_seed(seed)
        layers = {}
        for name, path in layer_names(unet).items():
            down_shape, up_shape = layer_shapes(unet.get_submodule(path), rank)
            layers[name] = (init_down(down_shape, gen), torch.zeros(up_shape))
        if not layers:
            raise ValueError("the UNet has no Linear/Conv2d layers inside Transformer2DModel blocks: not an SD UNet?")
        return cls(list(targets), layers, alpha)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically and byte-reproducibly as safetensors (kohya keys, fp32 unless the factors are another
        dtype); spm.files.DiskFullError when it does not fit."""
        tensors, diffusers_layout = {}, self.family in DIFFUSERS_LAYOUT
        for name, (down, up) in self.layers.items():
            # diffusers' layout has no alpha keys: diffusers' SD3 loader refuses them and reads alpha = rank, so the
            # scale alpha / rank is folded into lora_B (and alpha = rank stored): the same weights in both loaders
            if diffusers_layout:
                tensors[f"{DIFFUSERS_PREFIX}{name}.lora_A.weight"] = down.detach().contiguous().cpu()
                tensors[f"{DIFFUSERS_PREFIX}{name}.lora_B.weight"] = (up.detach() * self.scale).contiguous().cpu()
                continue
            tensors[f"{PREFIX}{name}.lora_down.weight"] = down.detach().contiguous().cpu()
            tensors[f"{PREFIX}{name}.lora_up.weight"] = up.detach().contiguous().cpu()
            tensors[f"{PREFIX}{name}.alpha"] = torch.tensor(float(self.alpha))
        metadata = {
            "prompts": json.dumps(self.targets),
            "rank": str(self.rank),
            "alpha": str(float(self.rank) if diffusers_layout else self.alpha),
            "spm_format_version": FORMAT_VERSION,
            "spm_provenance": json.dumps(self.provenance),
        }
        save_safetensors_atomic(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, targets: list[str] | None = None) -> SPM:
        """Read an SPM file (ours or the released layout). `targets` overrides the stored prompts."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SPM file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise ValueError(f"{path}: not a safetensors file ({e}); give an SPM .safetensors file") from None
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise ValueError(f"{path}: tensor {bad} holds NaN or infinite values (a diverged training?): retrain it")
        layers, alphas = {}, set()
        for key in tensors:
            layout = _layout_of(key)
            if layout is None:
                continue
            prefix, down_suffix, up_suffix = layout
            name = key[len(prefix) : -len(down_suffix)]
            up_key = f"{prefix}{name}{up_suffix}"
            if up_key not in tensors:
                raise ValueError(f"{path}: layer {name} has {down_suffix[1:]} but no {up_suffix[1:]}")
            layers[name] = (tensors[key].float(), tensors[up_key].float())
            alpha_key = f"{prefix}{name}.alpha"
            # no alpha anywhere: the LoRA convention, alpha = rank (scale 1)
            rank = tensors[key].shape[0]
            alphas.add(float(tensors[alpha_key]) if alpha_key in tensors else float(metadata.get("alpha", rank)))
        if not layers:
            raise ValueError(
                f"{path}: no '{PREFIX}*.lora_down.weight' or '{DIFFUSERS_PREFIX}*.lora_A.weight' keys: "
                "not an SPM/LoRA file"
            )
        if not all(math.isfinite(a) for a in alphas):
            raise ValueError(f"{path}: alpha is {sorted(alphas)}, not a finite number; fix the file's alpha")
        if len(alphas) > 1:
            raise ValueError(f"{path}: layers disagree on alpha ({sorted(alphas)}); per-layer alpha is not supported")
        stored = _parse_prompts(path, metadata.get("prompts", ""))
        provenance = _parse_provenance(path, metadata)
        return cls(list(targets) if targets is not None else stored, layers, alphas.pop(), provenance)


# (key prefix, down suffix, up suffix): kohya's layout (SD 1.x/2.x, SDXL), and diffusers' (SD3, FLUX.1).
LAYOUTS = ((PREFIX, ".lora_down.weight", ".lora_up.weight"), (DIFFUSERS_PREFIX, ".lora_A.weight", ".lora_B.weight"))


def _layout_of(key: str) -> tuple[str, str, str] | None:
    """The layout whose down-factor key `key` is, or None for any other key."""
    for layout in LAYOUTS:
        if key.startswith(layout[0]) and key.endswith(layout[1]):
            return layout
    return None


def _metadata_json(path: Path, field: str, raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata field {field!r} is not valid JSON ({e}); fix or remove it") from None


def _parse_provenance(path: Path, metadata: dict) -> dict:
    provenance = _metadata_json(path, "spm_provenance", metadata.get("spm_provenance", "{}"))
    if not isinstance(provenance, dict):
        raise ValueError(f"{path}: metadata field 'spm_provenance' is not a JSON object; fix or remove it")
    return provenance


def _parse_prompts(path: Path, raw: str) -> list[str]:
    """Ours is a JSON list; the released files store one comma-separated string."""
    raw = raw.strip()
    if raw.startswith("["):
        return [str(p) for p in _metadata_json(path, "prompts", raw)]
    return [p.strip() for p in raw.split(",") if p.strip()]
