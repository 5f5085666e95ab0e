"""Atomic file writes: a kill mid-write never leaves a torn file where a good one was expected.

Public, for tools built on spm (the benchmark writes every result through these), with the check of
an output folder that command lines run before any work.
"""

from __future__ import annotations

import os
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


def output_dir_problem(path: Path, option: str) -> str | None:
    """Make an output directory before any work (failing to write after it loses that work); what is
    wrong with it, or None."""
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file: give a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{option} {path}: cannot make the directory ({e.strerror or e}); give one you can write to"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{option} {path}: the directory is not writable; give one you can write to"
    return None
