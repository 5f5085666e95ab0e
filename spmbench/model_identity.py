"""Which weights a model spec's source holds now: a digest of its files' contents.

A run folder keeps what it made with each model (images, scores, fits) and reuses it on a rerun; the runner
records each model's identity beside them (runner.check_models) so that new weights under the same name
(a fine-tune saved over the old one, a toy world retrained, a hub repository updated) are not judged
through the old weights' images. Hashing a 4 GB checkpoint takes seconds, so each file's digest is cached
by path, inode, size and modification time under SPMBENCH_CACHE (not in the run folder, which a fresh clone
restores with other modification times).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from spm.files import write_text_atomic
from spmbench.locks import holding
from spmbench.prompts import cache_root, sha256


# A file modified this recently may be rewritten again within the same timestamp tick (coarse on some file
# systems): its digest is not cached, as git does not trust its index for such "racy" files.
RACY_SECONDS = 2.0


def cache_file() -> Path:
    return cache_root() / "weights-digests.json"


def weights_identity(source: str) -> str | None:
    """A local folder's digest over every file in it (relative path and contents; hidden files and folders
    left out, symlinked folders followed); a hub id's, the commit of the snapshot the hub cache holds (its
    files are fetched as they are needed, so their digest would change on a first load); None for a hub id
    not downloaded yet."""
    if not Path(source).is_dir():
        commit = _hub_commit(source)
        return None if commit is None else f"{source}@{commit}"
    directory = Path(source)
    cache, fresh = _read_cache(), {}
    digest = hashlib.sha256()
    for path in _files(directory):
        digest.update(f"{path.relative_to(directory).as_posix()} {_file_digest(path, cache, fresh)}\n".encode())
    if fresh:
        _add_to_cache(fresh)
    return "sha256:" + digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    """Every non-hidden file under `directory`, through symlinked folders (a pipeline sharing a component
    folder by symlink loads it), each real folder once."""
    found, seen = [], set()
    for root, folders, files in os.walk(directory, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop, or a folder reached twice
            folders[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        folders[:] = [f for f in folders if not f.startswith(".")]  # .cache/, .git/
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(p for p in found if p.is_file())


def _file_digest(path: Path, cache: dict, fresh: dict) -> str:
    stat = path.stat()  # follows the hub cache's symlinks to their blobs
    key, seen = str(path.resolve()), [stat.st_ino, stat.st_size, stat.st_mtime_ns]
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("seen") == seen and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    file_digest = sha256(path)
    if time.time() - stat.st_mtime_ns / 1e9 > RACY_SECONDS:
        fresh[key] = {"seen": seen, "sha256": file_digest}
    return file_digest


def _read_cache() -> dict:
    try:
        cache = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: digests are computed again
    return cache if isinstance(cache, dict) else {}


def _add_to_cache(entries: dict) -> None:
    """Merge `entries` into the cache under its lock (several processes of a run hash at once), dropping
    files that are gone."""
    try:
        with holding(cache_file()):
            cache = {k: v for k, v in _read_cache().items() if os.path.exists(k)} | entries
            write_text_atomic(cache_file(), json.dumps(cache))
    except OSError:  # a read-only home: digests are computed again next time, nothing is lost
        pass


def _hub_commit(hub_id: str) -> str | None:
    """The commit of the hub cache's snapshot of a hub id's default revision, if it holds one."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(hub_id, "model_index.json")  # .../snapshots/<commit>/model_index.json
    return Path(index).parent.name if isinstance(index, (str, os.PathLike)) else None
