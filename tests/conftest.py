"""Shared fixtures: tiny, real diffusers/transformers models, saved and loaded back from disk."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny import save_tiny_flux_pipeline, save_tiny_pipeline, save_tiny_sd3_pipeline, save_tiny_sdxl_pipeline


os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny SD pipeline in the standard diffusers layout, as a user's local checkpoint is."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sibling_dir(tmp_path_factory):
    """Same architecture, other weights: a 'fine-tune' of the tiny model, for transfer tests."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-ft"), seed=1)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny SDXL pipeline (tests.tiny) in the diffusers layout."""
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A tiny SD3 pipeline (tests.tiny) in the diffusers layout."""
    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A tiny FLUX.1 pipeline (tests.tiny) in the diffusers layout."""
    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture()
def pipe(tiny_dir):
    import spm

    return spm.load_pipeline(str(tiny_dir))


@pytest.fixture()
def disk_full_for(monkeypatch):
    """disk_full_for(*suffixes): spm.files' writes (atomic, or appends) of files ending in one hit a
    full disk (the kernel's own ENOSPC, from /dev/full); call what it returns to free the disk again."""
    from spm import files

    real_open = files._open_for_write

    def start(*suffixes: str):
        def open_for_write(path, mode="wb"):  # an atomic write's temporary name ends with the file's
            return open("/dev/full", mode) if path.name.endswith(suffixes) else real_open(path, mode)

        monkeypatch.setattr(files, "_open_for_write", open_for_write)
        return lambda: monkeypatch.setattr(files, "_open_for_write", real_open)

    return start
