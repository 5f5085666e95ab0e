"""Atomic file writes: a kill mid-write never leaves a torn file where a good one was expected."""

from __future__ import annotations

from pathlib import Path

import torch


def write_text_atomic(path: Path, text: str) -> None:
    """Path.write_text to a temporary sibling, then rename (atomic on POSIX)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_torch_atomic(state: dict, path: Path) -> None:
    """torch.save to a temporary sibling, then rename (atomic on POSIX). Load back with weights_only=True."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
