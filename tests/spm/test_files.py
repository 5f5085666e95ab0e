"""Atomic writes: a full disk is one line naming the file and the bytes, and never a torn or empty file."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from spm import files
from spm.files import (
    DiskFullError,
    save_image_atomic,
    save_safetensors_atomic,
    save_torch_atomic,
    write_bytes_atomic,
    write_text_atomic,
)


@pytest.fixture()
def full_disk(monkeypatch):
    """Every atomic write goes to /dev/full: the kernel's own ENOSPC, at write or at close."""
    monkeypatch.setattr(files, "_open_for_write", lambda path: open("/dev/full", "wb"))


WRITERS = {
    "bytes": lambda path: write_bytes_atomic(path, b"x" * 5000),
    "text": lambda path: write_text_atomic(path, "x" * 5000),
    "torch": lambda path: save_torch_atomic({"w": torch.zeros(1250)}, path),
    "safetensors": lambda path: save_safetensors_atomic({"w": torch.zeros(1250)}, path, {"k": "v"}),
    "image": lambda path: save_image_atomic(Image.new("RGB", (64, 64)), path.with_suffix(".png")),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_full_disk_is_one_line_and_keeps_the_old_file(kind, tmp_path, full_disk):
    path = tmp_path / "out.bin"
    target = path.with_suffix(".png") if kind == "image" else path
    target.write_bytes(b"the good old file")
    with pytest.raises(DiskFullError) as info:
        WRITERS[kind](path)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert str(target) in message and "needs" in message and "free space and rerun" in message
    assert "\n" not in message
    assert target.read_bytes() == b"the good old file"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left behind


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)]).returncode == 0


def test_a_real_small_disk(tmp_path):
    """The same on a real 64 KiB tmpfs (needs root to mount: the /dev/full tests above run everywhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root; covered by the /dev/full tests")
    try:
        write_bytes_atomic(disk / "small", b"x" * 1000)
        with pytest.raises(DiskFullError, match=r"needs 195\.3 KiB, .* free"):
            write_bytes_atomic(disk / "big", b"x" * 200_000)
        assert sorted(p.name for p in disk.iterdir()) == ["small"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "no" / "such" / "dir.txt", "x")


def test_safetensors_files_are_byte_reproducible_and_readable(tmp_path):
    tensors = {"b": torch.ones(3), "a": torch.arange(4.0)}
    metadata = {f"key{i}": str(i) for i in range(12)}  # safetensors alone writes these in a random order
    digests = set()
    for i in range(5):
        save_safetensors_atomic(tensors, tmp_path / f"{i}.safetensors", metadata)
        digests.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(digests) == 1
    back = load_file(tmp_path / "0.safetensors")
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])


def test_files_get_the_usual_mode(tmp_path):
    """safetensors' own save_file writes 0600; ours follow the umask like any other file."""
    old = os.umask(0o022)
    try:
        for kind, write in WRITERS.items():
            path = tmp_path / f"{kind}.bin"
            write(path)
            target = path.with_suffix(".png") if kind == "image" else path
            assert target.stat().st_mode & 0o777 == 0o644, kind
    finally:
        os.umask(old)


def test_an_unknown_image_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown image suffix '.imgx'"):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "a.imgx")
