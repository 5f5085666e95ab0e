"""Which weights a model spec's source holds now: a digest of its files' contents.

A run folder keeps what it made with each model (images, scores, fits) and reuses it on a rerun; the runner
records each model's identity beside them (runner.check_models) so that new weights under the same name
(a fine-tune saved over the old one, a toy world retrained, a hub repository updated) are not judged
through the old weights' images. Hashing a 4 GB checkpoint takes seconds, so each file's digest is cached
by path, size and modification time under SPMBENCH_CACHE (not in the run folder, which a fresh clone
restores with other modification times).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from spm.files import write_text_atomic
from spmbench.prompts import cache_root, sha256


def cache_file() -> Path:
    return cache_root() / "weights-digests.json"


def weights_identity(source: str) -> str | None:
    """A local pipeline directory's digest over every file in it (relative path and contents); a hub id's,
    the commit of the snapshot the hub cache holds (its files are fetched as they are needed, so their
    digest would change on a first load); None for a hub id not downloaded yet (the run that downloads it
    records it next time)."""
    if not Path(source).is_dir():
        commit = _hub_commit(source)
        return None if commit is None else f"{source}@{commit}"
    directory = Path(source)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not _hidden(p.relative_to(directory)))
    cache = _read_cache()
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(directory).as_posix()} {_file_digest(path, cache)}\n".encode())
    _write_cache(cache)
    return "sha256:" + digest.hexdigest()


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)  # .cache/, .git/, editors' files


def _file_digest(path: Path, cache: dict) -> str:
    stat = path.stat()  # follows the hub cache's symlinks to their blobs
    key, seen = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    entry = cache.get(key)
    if not (isinstance(entry, dict) and entry.get("seen") == seen):
        entry = cache[key] = {"seen": seen, "sha256": sha256(path)}
    return entry["sha256"]


def _read_cache() -> dict:
    try:
        cache = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: digests are computed again
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache: dict) -> None:
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_file(), json.dumps(cache))
    except OSError:  # a read-only home: digests are computed again next time, nothing is lost
        pass


def _hub_commit(hub_id: str) -> str | None:
    """The commit of the hub cache's snapshot of a hub id's default revision, if it holds one."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(hub_id, "model_index.json")  # .../snapshots/<commit>/model_index.json
    return Path(index).parent.name if isinstance(index, (str, os.PathLike)) else None
