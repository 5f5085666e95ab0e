"""scripts/run_state.py: the small stage files of a runs folder, packed and unpacked across sessions."""

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_state.py"
spec = importlib.util.spec_from_file_location("run_state", SCRIPT)
run_state = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_state)


def make_runs(root: Path) -> Path:
    cell = root / "app" / "cells" / "toy-base" / "spm" / "barkley"
    (cell / "images").mkdir(parents=True)
    (cell / "result.json").write_text('{"rates": {}}')
    (cell / "scores.jsonl").write_text('{"prompt_id": "a"}\n')
    (cell / "images" / "a.png").write_bytes(b"png")
    (cell / "images" / ".rows-0-6.lock").write_text("")
    fit = root / "app" / "fits" / "toy-base"
    fit.mkdir(parents=True)
    (fit / "spm.safetensors").write_bytes(b"x" * 100)
    (fit / "esd-x.safetensors").write_bytes(b"x" * 5000)
    return root


def test_pack_keeps_the_small_stage_files_and_is_byte_reproducible(tmp_path):
    runs = make_runs(tmp_path / "runs")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert run_state.pack(runs, first, max_bytes=1000) == 3
    run_state.pack(runs, second, max_bytes=1000)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = sorted(tar.getnames())
    assert names == [
        "app/cells/toy-base/spm/barkley/result.json",
        "app/cells/toy-base/spm/barkley/scores.jsonl",
        "app/fits/toy-base/spm.safetensors",
    ]


def test_unpack_adds_what_is_missing_and_overwrites_nothing(tmp_path):
    runs = make_runs(tmp_path / "runs")
    archive = tmp_path / "state.tar.gz"
    run_state.pack(runs, archive)
    fresh = tmp_path / "fresh"
    (fresh / "app").mkdir(parents=True)
    (fresh / "app" / "cells" / "toy-base" / "spm" / "barkley").mkdir(parents=True)
    newer = fresh / "app" / "cells" / "toy-base" / "spm" / "barkley" / "scores.jsonl"
    newer.write_text("longer, made here\n")
    assert run_state.unpack(archive, fresh) == 3  # result.json and both fits (5000 bytes is under the default)
    assert newer.read_text() == "longer, made here\n"
    assert run_state.unpack(archive, fresh) == 0


def test_unpack_refuses_paths_outside_the_runs_folder(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(SystemExit, match="not a plain relative file"):
        run_state.unpack(archive, tmp_path / "runs")
    assert not (tmp_path / "outside.json").exists()
