"""Locks that let several processes share one run folder: one process computes a fit, a batch of
images or a cell while the others wait for it, or do other work first and read its result afterwards
(the processes of one `accelerate launch` coordinate through nothing else: spmbench.shard).

filelock's locks are the OS's (flock on POSIX): a process that dies, even by kill -9, releases them,
so a crash never leaves a stale lock behind. The `.lock` files themselves stay (empty).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    """The lock file of what lives at `path` (a file or a folder, existing or not)."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def holding(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of `path` for the block; yields whether it is held. With `wait` False, a lock
    another process holds yields False at once (the caller does something else first). Not re-entrant:
    holding one path's lock again inside the block waits forever (flock is per open file), so the
    runner takes them in one order: cell, its original cell, fit, state file; an image batch's alone
    or inside its cell's, never around another."""
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield False
            return
        log.info("waiting for another process to finish %s", path)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()
