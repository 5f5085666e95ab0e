"""A model's identity: a digest of its files' contents, cached by path, size and modification time."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from spmbench import model_identity
from spmbench.model_identity import weights_identity


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPMBENCH_CACHE", str(tmp_path / "cache"))


def _pipeline(folder):
    """A pipeline folder whose files were written an hour ago (recent ones are never cached: see RACY_SECONDS)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "weights.safetensors").write_bytes(b"\x01" * 4096)
    _age(folder / "model_index.json", folder / "unet" / "weights.safetensors")
    return folder


def _age(*paths, seconds=3600):
    for path in paths:
        os.utime(path, (time.time() - seconds,) * 2)


def test_the_identity_follows_the_contents_not_where_or_when_the_files_were_written(tmp_path):
    first = _pipeline(tmp_path / "first")
    identity = weights_identity(str(first))
    assert identity.startswith("sha256:") and weights_identity(str(first)) == identity
    copy = tmp_path / "copy"
    shutil.copytree(first, copy, copy_function=shutil.copy)  # other modification times
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("a hub download's bookkeeping")
    assert weights_identity(str(copy)) == identity
    weights = copy / "unet" / "weights.safetensors"
    weights.write_bytes(b"\x01" * 4095 + b"\x02")  # a fine-tune saved over it: same size, same name
    assert weights_identity(str(copy)) != identity
    (copy / "unet" / "weights.safetensors").rename(copy / "unet" / "renamed.safetensors")
    assert weights_identity(str(copy)) not in (identity, None)


def test_file_digests_are_cached_until_size_or_modification_time_change(tmp_path, monkeypatch):
    folder = _pipeline(tmp_path / "model")
    hashed = []
    real_sha256 = model_identity.sha256
    monkeypatch.setattr(model_identity, "sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    identity = weights_identity(str(folder))
    assert sorted(hashed) == ["model_index.json", "weights.safetensors"]
    hashed.clear()
    assert weights_identity(str(folder)) == identity and hashed == []
    weights = folder / "unet" / "weights.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert weights_identity(str(folder)) == identity and hashed == ["weights.safetensors"]
    hashed.clear()
    weights.write_bytes(b"\x03" * 4096)  # just written: hashed on every call until it is RACY_SECONDS old
    changed = weights_identity(str(folder))
    assert weights_identity(str(folder)) == changed != identity and hashed == ["weights.safetensors"] * 2
    _age(weights)
    assert weights_identity(str(folder)) == changed and hashed == ["weights.safetensors"] * 3
    hashed.clear()
    assert weights_identity(str(folder)) == changed and hashed == []  # cached now
    model_identity.cache_file().write_text("{torn")
    hashed.clear()
    assert weights_identity(str(folder)) == changed and len(hashed) == 2  # a damaged cache is rebuilt


def test_a_hub_id_is_its_cached_snapshots_commit_or_none_before_its_first_download(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert weights_identity("org/model") is None
    repo = hub / "models--org--model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _pipeline(repo / "snapshots" / commit)
    assert weights_identity("org/model") == f"org/model@{commit}"


def test_symlinked_component_folders_are_part_of_the_identity_and_loops_end(tmp_path):
    shared_vae = tmp_path / "shared-vae"
    shared_vae.mkdir()
    (shared_vae / "weights.safetensors").write_bytes(b"\x05" * 64)
    _age(shared_vae / "weights.safetensors")
    folder = _pipeline(tmp_path / "model")
    (folder / "vae").symlink_to(shared_vae, target_is_directory=True)
    (folder / "unet" / "loop").symlink_to(folder, target_is_directory=True)
    identity = weights_identity(str(folder))
    (shared_vae / "weights.safetensors").write_bytes(b"\x06" * 64)
    assert weights_identity(str(folder)) != identity
