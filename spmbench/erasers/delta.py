"""Weight deltas: how every weight-editing eraser (UCE, RECE, ESD, Concept Ablation) stores and
applies its edit. A delta is a safetensors file of `name -> W' - W` over the edited parameters of a
pipeline component, so the same edit also applies to another model of the family (the transfer
comparison), and applying it is undone exactly by restoring the saved originals.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from spm.files import save_safetensors_atomic


def save_delta(path: Path, deltas: dict[str, torch.Tensor], component: str = "unet", **metadata) -> Path:
    """Write `deltas` (parameter name -> difference) for `pipe.<component>` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: d.detach().float().cpu().contiguous() for name, d in deltas.items()}
    meta = {"component": component, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    save_safetensors_atomic(tensors, path, meta)
    return path


def load_delta(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(component, deltas) of a delta file."""
    with safe_open(str(path), framework="pt") as f:
        component = (f.metadata() or {}).get("component", "unet")
        return component, {name: f.get_tensor(name) for name in f.keys()}


@contextmanager
def applied(pipe, paths: list[Path]) -> Iterator[object]:
    """Add every delta to its component's parameters; restore the originals on exit."""
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for path in paths:
                component, deltas = load_delta(path)
                params = dict(getattr(pipe, component).named_parameters())
                missing = sorted(set(deltas) - set(params))
                if missing:
                    raise ValueError(
                        f"{path.name}: edits {component} parameter {missing[0]!r} that this model lacks: "
                        "it was fitted on another architecture"
                    )
                for name, delta in deltas.items():
                    param = params[name]
                    if param.shape != delta.shape:
                        raise ValueError(
                            f"{path.name}: {component}.{name} has shape {tuple(param.shape)} here, "
                            f"{tuple(delta.shape)} in the edit: fitted on another architecture"
                        )
                    originals.append((param, param.detach().clone()))
                    param += delta.to(param)
        yield pipe
    finally:
        with torch.no_grad():
            for param, original in reversed(originals):
                param.copy_(original)
