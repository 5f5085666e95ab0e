"""Pack or unpack the small stage files of a runs folder: a long run spread over machines that keep nothing between
sessions resumes from them.

A cell whose result.json (with its scores.jsonl and alteration features) is on disk is reused by the next
`spmbench run`/`tune`/`paper` without its images or fit, so those files are what a later session needs. The pack
leaves out images (*.png), lock files and any file over --max-bytes (a baseline's fine-tuned weights; an SPM's
rank-1 fit is a few KB and is kept, so its cells' unfinished images are generated without refitting). Image grids
of restored cells are drawn only where images were made in this session.

    python scripts/run_state.py pack runs records/toy3-state.tar.gz
    python scripts/run_state.py unpack records/toy3-state.tar.gz runs   # adds what is missing, overwrites nothing
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path


MAX_BYTES = 1 << 20


def kept(path: Path, max_bytes: int) -> bool:
    name = path.name
    return not (name.endswith((".png", ".lock")) or path.stat().st_size > max_bytes)


def pack(runs: Path, archive: Path, max_bytes: int = MAX_BYTES) -> int:
    """Write the kept files under `runs` to `archive` (atomically, in a stable order); returns their count."""
    if not runs.is_dir():
        raise SystemExit(f"error: {runs} is not a folder: give the runs folder to pack")
    files = sorted(p for p in runs.rglob("*") if p.is_file() and kept(p, max_bytes))
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Byte-reproducible (no times, owners or names in it): an unchanged state is no change to commit.
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in files:
                    data = path.read_bytes()
                    info = tarfile.TarInfo(str(path.relative_to(runs)))
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return len(files)


def unpack(archive: Path, runs: Path) -> int:
    """Extract the files of `archive` that `runs` does not have yet; returns their count."""
    if not archive.is_file():
        raise SystemExit(f"error: {archive} does not exist: give a file written by `run_state.py pack`")
    added = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = runs / member.name
            unsafe = Path(member.name).is_absolute() or ".." in Path(member.name).parts or not member.isfile()
            if unsafe:
                raise SystemExit(f"error: {archive} holds {member.name!r}, not a plain relative file: not unpacked")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member).read()
            tmp = target.with_name(f".{target.name}.unpack.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            added += 1
    return added


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="runs folder -> archive")
    p.add_argument("runs", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="leave out files larger than this")
    u = sub.add_parser("unpack", help="archive -> runs folder (missing files only)")
    u.add_argument("archive", type=Path)
    u.add_argument("runs", type=Path)
    args = ap.parse_args(argv)
    if args.command == "pack":
        print(f"packed {pack(args.runs, args.archive, args.max_bytes)} files of {args.runs} into {args.archive}")
    else:
        print(f"unpacked {unpack(args.archive, args.runs)} missing files of {args.archive} into {args.runs}")


if __name__ == "__main__":
    sys.exit(main())
