"""Pack or unpack the small stage files of a runs folder: a long run spread over machines that keep nothing between
sessions resumes from them.

A cell whose result.json (with its scores.jsonl, and its alteration features where result.json does not carry
their intervals) is on disk is reused by the next `spmbench run`/`tune`/`paper` without its images or fit, so those
files are what a later session needs. The pack leaves out images (*.png), lock files, the features of results that
carry their intervals, and fits over --max-fit-bytes (ESD-u's fine-tuned UNet, made again if a cell still needs
it; an SPM's rank-1 fit, 84 KB on the toy3 UNet, and the other toy3 baselines' deltas, at most 512 KB, are kept).
One archive per run folder (a folder with a judge.json), so a finished run's archive stays byte for byte the same
and costs a repository nothing more when the state is committed again. Image grids of restored cells are drawn only where images were made anew.

The kept fits' weights (*.safetensors under a run's fits/: SPM's, and any baseline's under --max-fit-bytes) are not
archived but mirrored as plain files beside their run's archive (records/toy3-state/<run>/fits/...): a fit is
written once and never changes, so committing the state again adds only the new fits, where an archive holding them
would be rewritten whole at every save (toy3-many's 120 rank-1 fits, 10 MB, would keep its archive over the 4 MiB
that scripts/toy3_record.sh commits; without them it holds results and scores, well under).

    python scripts/run_state.py pack runs records/toy3-state
    python scripts/run_state.py unpack records/toy3-state runs   # adds what is missing, overwrites nothing
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path


# An SPM's fit is 84 KB on the toy3 UNet (rank 1 on every membrane layer); ESD-x's, CA's, UCE's and RECE's weight
# deltas are 180-350 KB (toy3-many's 48, ~12 MB, are then made once, not again in every session that resumes it);
# ESD-u's delta of the whole UNet, 5.5 MB, is left out and made again where a cell still needs it.
MAX_FIT_BYTES = 512 << 10


# A cell's alteration features (~340 KB a toy cell) and per-image measures: what a report bootstraps its
# alteration intervals from where result.json does not carry them (results made before it did)
FEATURE_FILES = ("alteration_features.safetensors", "alteration_per_image.safetensors")


REAL_IMAGES_CACHE = "real-images"  # spmbench.real_images.CACHE_DIR


def kept(path: Path, max_fit_bytes: int) -> bool:
    """Whether a file of a run folder is part of its state (archived, or mirrored if `is_fit_weights`)."""
    if path.name.endswith((".png", ".lock")) or REAL_IMAGES_CACHE in path.parts:
        return False  # images, locks, and real images' features (remade from the user's folder, 80-330 MB)
    if path.name in FEATURE_FILES:
        return not carries_intervals(path.parent / "result.json")
    return "fits" not in path.parts or path.stat().st_size <= max_fit_bytes


def carries_intervals(result: Path) -> bool:
    """Whether a cell's result.json holds its alteration intervals (then its features are not needed)."""
    try:
        return json.loads(result.read_text()).get("alteration_intervals") is not None
    except (OSError, ValueError, AttributeError):
        return False


def is_fit_weights(path: Path, run_dir: Path) -> bool:
    return path.suffix == ".safetensors" and path.relative_to(run_dir).parts[0] == "fits"


def archive_name(run_dir: Path, runs: Path) -> str:
    return "--".join(run_dir.relative_to(runs).parts) + ".tar.gz"


def mirror_dir(run_dir: Path, runs: Path, folder: Path) -> Path:
    """Where a run folder's fits are mirrored: beside its archive, named as it is without the suffix."""
    return folder / archive_name(run_dir, runs).removesuffix(".tar.gz")


def pack(runs: Path, folder: Path, max_fit_bytes: int = MAX_FIT_BYTES) -> int:
    """One archive per run folder under `runs` in `folder`, its fits mirrored; returns the number of files kept."""
    if not runs.is_dir():
        raise SystemExit(f"error: {runs} is not a folder: give the runs folder to pack")
    count = 0
    run_dirs = sorted(p.parent for p in runs.rglob("judge.json"))
    if runs in run_dirs:  # its archive would have no name, its mirror be the state folder itself
        raise SystemExit(f"error: {runs} is a run folder: give the folder that holds run folders (e.g. runs)")
    for run_dir in run_dirs:
        nested = [d for d in run_dirs if d != run_dir and run_dir in d.parents]  # a tuning run, runs/<app>/dev
        files = sorted(
            p for p in run_dir.rglob("*")
            if p.is_file() and kept(p, max_fit_bytes) and not any(d in p.parents for d in nested)
        )  # fmt: skip
        fits = [p for p in files if is_fit_weights(p, run_dir)]
        write_archive([p for p in files if p not in fits], runs, folder / archive_name(run_dir, runs))
        mirror_fits(fits, run_dir, mirror_dir(run_dir, runs, folder))
        count += len(files)
    return count


def mirror_fits(fits: list[Path], run_dir: Path, mirror: Path) -> None:
    """Make `mirror` hold exactly `fits` (paths relative to `run_dir`): copy new or changed ones, drop the rest."""
    wanted = {p.relative_to(run_dir): p for p in fits}
    for rel, source in wanted.items():
        target = mirror / rel
        data = source.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            write_atomic(target, data)
    if mirror.is_dir():  # only fits: a temporary file (".*") may be another pack's write in progress
        for stale in mirror.rglob("*.safetensors"):
            if not stale.name.startswith(".") and stale.relative_to(mirror) not in wanted:
                stale.unlink()


def write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )  # unique: packs may overlap
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_archive(files: list[Path], runs: Path, archive: Path) -> None:
    """`files` (paths relative to `runs` in the archive) to `archive`, atomically and byte-reproducibly."""
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


def unpack(folder: Path, runs: Path) -> int:
    """Extract the files of every archive in `folder`, and copy its mirrored fits, that `runs` does not have yet;
    returns their count."""
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder: give the folder `run_state.py pack` wrote")
    added = 0
    for archive in sorted(folder.glob("*.tar.gz")):
        added += unpack_archive(archive, runs)
        run_dir = archived_run_dir(archive)
        if run_dir is not None:
            added += unpack_mirror(folder / archive.name.removesuffix(".tar.gz"), runs / run_dir)
    return added


def archived_run_dir(archive: Path) -> Path | None:
    """The run folder an archive holds (relative to the runs folder): where its judge.json is."""
    with tarfile.open(archive, "r:gz") as tar:
        judges = [Path(n) for n in tar.getnames() if Path(n).name == "judge.json"]
    return min(judges, key=lambda p: len(p.parts)).parent if judges else None


def unpack_mirror(mirror: Path, run_dir: Path) -> int:
    added = 0
    for fit in sorted(mirror.rglob("*.safetensors")) if mirror.is_dir() else []:
        target = run_dir / fit.relative_to(mirror)
        if not target.exists():
            write_atomic(target, fit.read_bytes())
            added += 1
    return added


def unpack_archive(archive: Path, runs: Path) -> int:
    added = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = runs / member.name
            unsafe = Path(member.name).is_absolute() or ".." in Path(member.name).parts or not member.isfile()
            if unsafe:
                raise SystemExit(f"error: {archive} holds {member.name!r}, not a plain relative file: not unpacked")
            if target.exists():
                continue
            write_atomic(target, tar.extractfile(member).read())
            added += 1
    return added


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="runs folder -> a folder of archives, one per run folder")
    p.add_argument("runs", type=Path)
    p.add_argument("folder", type=Path)
    p.add_argument("--max-fit-bytes", type=int, default=MAX_FIT_BYTES, help="leave out fits larger than this")
    u = sub.add_parser("unpack", help="folder of archives -> runs folder (missing files only)")
    u.add_argument("folder", type=Path)
    u.add_argument("runs", type=Path)
    args = ap.parse_args(argv)
    if args.command == "pack":
        print(f"packed {pack(args.runs, args.folder, args.max_fit_bytes)} files of {args.runs} into {args.folder}")
    else:
        print(f"unpacked {unpack(args.folder, args.runs)} missing files of {args.folder} into {args.runs}")


if __name__ == "__main__":
    sys.exit(main())
