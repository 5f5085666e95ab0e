"""Released checkpoints of other methods as erasers, registered by a YAML file, without code.

A user with, say, an AdvUnlearn text encoder or an ESD UNet (full weights, diffusers layout) writes

    name: advunlearn-nudity
    text_encoder: /path/to/text_encoder            # a component directory or a .safetensors file
    unet: /path/to/unet/diffusion_pytorch_model.safetensors   # and/or
    targets: [nudity]                              # what it was trained to erase
    note: AdvUnlearn, nudity, released weights     # optional

into `spmbench/erasers/released/` or a folder named by SPMBENCH_ERASERS (pathsep-separated); relative
paths are relative to the YAML file. fit only checks (targets, paths) and returns the weight files;
apply loads them into the pipeline's components (strictly: same keys and shapes) and restores the
originals on exit. Safetensors only: pickled checkpoints (.ckpt/.pt/.bin) are never loaded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from spmbench.erasers.base import Eraser
from spmbench.registry import Registry
from spmbench.specs import SpecError, SpecKind, build, load


RELEASED_DIR = Path(__file__).parent / "released"
COMPONENTS = ("text_encoder", "unet")
# The weight file of a diffusers / transformers component directory, in order of preference.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # also a directory name in a run


@dataclass(frozen=True)
class Released(Eraser):
    """A released checkpoint: whole-component weights that replace the pipeline's own."""

    name: str
    targets: tuple[str, ...]
    text_encoder: str | None = None
    unet: str | None = None
    note: str = ""
    origin: str = ""  # the YAML file it was registered from

    def components(self) -> dict[str, Path]:
        """component -> the safetensors file (or shard index) to load; missing paths are errors."""
        out = {}
        for component in COMPONENTS:
            where = getattr(self, component)
            if where is not None:
                out[component] = weight_file(Path(where), component, f"eraser {self.name!r} ({self.origin})")
        return out

    def fit(
        self, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict | None = None
    ) -> list[Path]:
        self.settings(settings)  # nothing to set: released weights are what they are
        known = {t.casefold() for t in self.targets}
        unknown = [t for t in targets if t.casefold() not in known]
        if unknown:
            raise ValueError(
                f"eraser {self.name!r} was trained to erase {', '.join(self.targets)}, not {', '.join(unknown)} "
                f"({self.origin})"
            )
        return list(self.components().values())

    @property
    def applied(self) -> dict:
        """The weight files it loads: a cell's images were made from these (its YAML pointed at repointed files
        would otherwise mix two checkpoints in one cell)."""
        return {component: str(path.resolve()) for component, path in self.components().items()}

    def apply(self, pipe, artifacts: list[Path]):
        return loaded(pipe, {path: component for component, path in self.components().items()}, artifacts)


def weight_file(path: Path, component: str, who: str) -> Path:
    """The safetensors file of a component given as a file, a component directory or a pipeline directory."""
    if not path.exists():
        raise FileNotFoundError(f"{who}: {component} weights {path} do not exist")
    if path.is_file():
        if not path.name.endswith((".safetensors", ".safetensors.index.json")):
            raise ValueError(
                f"{who}: {component} weights {path} are not safetensors; pickled checkpoints are never loaded "
                "(convert them to .safetensors first)"
            )
        return path
    for directory in (path, path / component):  # a component directory, or a whole pipeline's
        for name in WEIGHT_FILES:
            fp16 = name.replace(".safetensors", ".fp16.safetensors")  # diffusers' fp16 variant
            for candidate in (directory / name, directory / f"{name}.index.json", directory / fp16):
                if candidate.is_file():
                    return candidate
    raise FileNotFoundError(
        f"{who}: no {' or '.join(WEIGHT_FILES)} (or a shard index) in {path} or {path / component}"
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or every shard a `*.safetensors.index.json` names."""
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(path.parent / shard)).items()}
    return load_file(str(path))


def _align(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Key names as the module has them: one whole-checkpoint prefix (transformers 4 saved CLIP text
    encoders under `text_model.`, transformers 5 does not) dropped or added when that matches more
    keys; buffers the module does not persist (CLIP's position_ids) dropped, as from_pretrained does."""
    own = set(module.state_dict())
    candidates = [state]
    for keys, add in ((set(state), False), (own, True)):
        heads = {k.split(".", 1)[0] for k in keys}
        if len(heads) == 1 and all("." in k for k in keys):
            prefix = f"{heads.pop()}."
            candidates.append({(prefix + k if add else k[len(prefix) :]): v for k, v in state.items()})
    state = max(candidates, key=lambda s: len(own & set(s)))  # a tie keeps the names as given
    unpersisted = {n for n, _ in module.named_buffers()} - own
    return {k: v for k, v in state.items() if k not in unpersisted}


def check_fits(state: dict[str, torch.Tensor], module: torch.nn.Module, what: str) -> None:
    """Same keys and shapes as the module's, or an error naming the first mismatch."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problem = (
        f"key {missing[0]!r} is missing ({len(missing)} missing)" if missing else
        f"key {unexpected[0]!r} is unexpected ({len(unexpected)} unexpected)" if unexpected else
        f"{shapes[0]!r} has shape {tuple(state[shapes[0]].shape)}, here {tuple(own[shapes[0]].shape)}" if shapes else
        None
    )  # fmt: skip
    if problem:
        raise ValueError(f"{what} do not fit this model's {type(module).__name__}: {problem}; another architecture?")


@contextmanager
def loaded(pipe, components: dict[Path, str], artifacts: list[Path]) -> Iterator[object]:
    """Load each artifact into its component (strict); restore every component's state on exit."""
    originals: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]] = []
    try:
        for path in artifacts:
            if path not in components:
                raise ValueError(f"{path} is not a weight file of this eraser")
            component = components[path]
            module = getattr(pipe, component)
            state = _align(read_weights(path), module)
            check_fits(state, module, f"{component} weights {path}")  # before anything changes
            originals.append((module, {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}))
            module.load_state_dict(state, strict=True)
        yield pipe
    finally:
        for module, original in reversed(originals):
            module.load_state_dict(original, strict=True)


def parse_released(data, origin: str) -> Released:
    if isinstance(data, dict) and isinstance(data.get("targets"), str):
        data = {**data, "targets": [data["targets"]]}  # a single target needs no list
    eraser = build(Released, data, origin, origin=origin)
    if not NAME.fullmatch(eraser.name):
        raise SpecError(f"{origin}: name {eraser.name!r} must be letters, digits and . _ + - (a directory name)")
    if not eraser.targets or not all(eraser.targets):
        raise SpecError(f"{origin}: 'targets' must be a non-empty list of the concepts the checkpoint erases")
    given = {c: getattr(eraser, c) for c in COMPONENTS if getattr(eraser, c) is not None}
    if not any(given.values()):
        raise SpecError(f"{origin}: give at least one of {', '.join(COMPONENTS)} (a path to its weights)")
    paths = {}
    for component, value in given.items():
        if not value:
            raise SpecError(f"{origin}: {component} must be a path, got {value!r}")
        path = Path(os.path.expandvars(value)).expanduser()
        paths[component] = str(path if path.is_absolute() else Path(origin).parent / path)
    return replace(eraser, **paths)


RELEASED = SpecKind("eraser", RELEASED_DIR, "SPMBENCH_ERASERS", parse_released)


def load_released(dirs: list[Path] | None = None, registry: Registry | None = None) -> list[Released]:
    """Every released checkpoint defined in `dirs` (default: the shipped folder and SPMBENCH_ERASERS),
    added to `registry` when given; a malformed file or a name already taken is a SpecError naming it."""
    found = list(load(RELEASED, dirs))
    if registry is not None:
        for eraser in found:  # all checked before any is added
            if eraser.name in registry:
                raise SpecError(f"{eraser.origin}: eraser name {eraser.name!r} is already registered; choose another")
        for eraser in found:
            registry.add(eraser.name, eraser)
    return found
