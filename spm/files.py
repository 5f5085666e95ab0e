"""Atomic file writes: a kill mid-write never leaves a torn file where a good one was expected, and a
full disk is one line naming the file and the bytes it needed, never a half-written file.

Every writer serialises in memory first, then `write_bytes_atomic` writes a temporary sibling and
renames it over the target (atomic on POSIX). Public, for tools built on spm (the benchmark writes
every result, image and fit through these), with the check of an output folder that command lines
run before any work.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import struct
import threading
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from PIL import Image


class DiskFullError(OSError):
    """A write that did not fit on its disk: nothing was written under the target's name."""

    def __str__(self) -> str:
        return self.strerror  # one line, without OSError's "[Errno 28]"

    def noting(self, note: str) -> DiskFullError:
        """The same error, saying what was kept (say, the checkpoint a rerun resumes from)."""
        return DiskFullError(self.errno, f"{self.strerror}; {note}")


@contextmanager
def training_kept_in(checkpoint: str | os.PathLike) -> Iterator[None]:
    """Around the save of a finished training's result: a full disk then also says what of the training
    `checkpoint` keeps (all of it, or the last periodic state) and so what the rerun does."""
    try:
        yield
    except DiskFullError as e:
        kept = _kept_training(Path(checkpoint))
        if kept is None:
            raise
        raise e.noting(kept) from None


def _kept_training(checkpoint: Path) -> str | None:
    try:
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    except Exception:  # no file, or not a checkpoint: torch raises many kinds
        return None
    if not isinstance(state, dict):
        return None
    if state.get("finished") is True:  # spm.Checkpoint.save_finished
        return f"the finished training is kept in {checkpoint}: the rerun writes it without training"
    return f"the training up to step {state.get('step')} is kept in {checkpoint}: the rerun resumes from it"


TEMPORARY_PREFIX = ".tmp-"  # the name a write in progress has, beside its file


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary sibling, then rename it to `path`; DiskFullError when it does not fit."""
    path = Path(path)
    # A name of this process and thread: two processes writing one file never rename each other's half.
    tmp = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        with _open_for_write(tmp) as f:
            f.write(data)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            raise DiskFullError(e.errno, _disk_full_message(path, len(data))) from None
        raise


def _is_disk_full(error: OSError) -> bool:
    # a DiskFullError already names its file: never relabelled by an outer write
    return error.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(error, DiskFullError)


def _open_for_write(path: Path, mode: str = "wb"):
    # one place that opens for writing: the tests point it at /dev/full to get a real ENOSPC
    return open(path, mode)


@contextmanager
def appending(path: str | os.PathLike) -> Iterator[typing.TextIO]:
    """open(path, "a") for a log of records written line by line (a kill loses at most the line in
    flight); a full disk is a DiskFullError naming the file (the lines written before it are kept)."""
    path = Path(path)
    try:
        with _open_for_write(path, "a") as f:
            yield f
    except OSError as e:
        if _is_disk_full(e):
            message = (
                f"cannot append to {path}: no space left on its disk (its lines so far are kept); free space and rerun"
            )
            raise DiskFullError(e.errno, message) from None
        raise


def _disk_full_message(path: Path, needed: int) -> str:
    try:
        free = f", {_size(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = ""
    return f"cannot write {path}: no space left on its disk (it needs {_size(needed)}{free}); free space and rerun"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Path.write_text, atomically."""
    write_bytes_atomic(path, text.encode())


def save_torch_atomic(state: dict, path: str | os.PathLike) -> None:
    """torch.save, atomically. Load back with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """PIL's Image.save (the format from the suffix), atomically: a failed write leaves no empty image."""
    buffer = io.BytesIO()
    image.save(buffer, format=_image_format(path))
    write_bytes_atomic(path, buffer.getvalue())


def _image_format(path: str | os.PathLike) -> str:
    from PIL import Image

    Image.init()
    suffix = Path(path).suffix.lower()
    if suffix not in Image.EXTENSION:
        raise ValueError(f"{path}: unknown image suffix {suffix!r}; use .png")
    return Image.EXTENSION[suffix]


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """safetensors' save_file, atomically and byte-reproducibly: safetensors writes the metadata in a
    hash map's random order, so equal tensors and metadata would give different files; the header is
    rewritten with sorted metadata keys (the format allows any order)."""
    from safetensors.torch import save

    write_bytes_atomic(path, _sorted_header(save(tensors, metadata=metadata)))


def _sorted_header(data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


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
