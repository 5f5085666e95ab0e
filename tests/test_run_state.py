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
    for run in ("app/dev", "app/test"):
        (root / run).mkdir(parents=True)
        (root / run / "judge.json").write_text('{"judge": "toy"}')
    cell = root / "app" / "dev" / "cells" / "toy-base" / "spm" / "barkley"
    (cell / "images").mkdir(parents=True)
    (cell / "result.json").write_text('{"rates": {}}')
    (cell / "scores.jsonl").write_text('{"prompt_id": "a"}\n')
    (cell / "alteration_features.safetensors").write_bytes(b"f" * 5000)  # kept at any size: results need it
    (cell / "images" / "a.png").write_bytes(b"png")
    (cell / "images" / ".rows-0-6.lock").write_text("")
    fit = root / "app" / "dev" / "fits" / "toy-base"
    fit.mkdir(parents=True)
    (fit / "spm.safetensors").write_bytes(b"x" * 100)
    (fit / "esd-x.safetensors").write_bytes(b"x" * 5000)  # a baseline's weights: made again if needed
    return root


DEV = "app/dev/cells/toy-base/spm/barkley"


def test_a_run_folder_inside_another_is_packed_in_its_own_archive_only(tmp_path):
    runs = make_runs(tmp_path / "runs")
    # runs/app: the test run, holding app/dev and app/test
    (runs / "app" / "judge.json").write_text('{"judge": "toy"}')
    (runs / "app" / "cells").mkdir()
    (runs / "app" / "cells" / "result.json").write_text("{}")
    run_state.pack(runs, tmp_path / "state")
    with tarfile.open(tmp_path / "state" / "app.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["app/cells/result.json", "app/judge.json"]
    with tarfile.open(tmp_path / "state" / "app--dev.tar.gz") as tar:
        assert f"{DEV}/result.json" in tar.getnames()


def test_pack_writes_one_reproducible_archive_per_run_folder_of_the_small_files(tmp_path):
    runs = make_runs(tmp_path / "runs")
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_state.pack(runs, first, max_fit_bytes=1000) == 6
    run_state.pack(runs, second, max_fit_bytes=1000)
    assert sorted(p.name for p in first.glob("*.tar.gz")) == ["app--dev.tar.gz", "app--test.tar.gz"]
    for archive in first.glob("*.tar.gz"):
        assert archive.read_bytes() == (second / archive.name).read_bytes()
    with tarfile.open(first / "app--dev.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == [
        f"{DEV}/alteration_features.safetensors",
        f"{DEV}/result.json",
        f"{DEV}/scores.jsonl",
        "app/dev/judge.json",
    ]
    # the small fit is mirrored as a plain file beside the archive, the large one left out
    assert [p.relative_to(first) for p in first.rglob("*.safetensors")] == [
        Path("app--dev/fits/toy-base/spm.safetensors")
    ]


def test_the_fit_mirror_only_grows_by_new_fits_and_follows_deleted_ones(tmp_path):
    runs, state = make_runs(tmp_path / "runs"), tmp_path / "state"
    run_state.pack(runs, state)
    mirrored = state / "app--dev" / "fits" / "toy-base" / "spm.safetensors"
    before = mirrored.stat().st_mtime_ns
    (runs / "app" / "dev" / "fits" / "toy-base" / "spm~seed1.safetensors").write_bytes(b"y" * 100)
    run_state.pack(runs, state)
    assert mirrored.stat().st_mtime_ns == before  # unchanged: not written again
    assert (state / "app--dev" / "fits" / "toy-base" / "spm~seed1.safetensors").read_bytes() == b"y" * 100
    (runs / "app" / "dev" / "fits" / "toy-base" / "spm.safetensors").unlink()
    run_state.pack(runs, state)
    assert not mirrored.exists()


def test_unpack_adds_what_is_missing_and_overwrites_nothing(tmp_path):
    runs = make_runs(tmp_path / "runs")
    state = tmp_path / "state"
    run_state.pack(runs, state)
    fresh = tmp_path / "fresh"
    (fresh / DEV).mkdir(parents=True)
    newer = fresh / DEV / "scores.jsonl"
    newer.write_text("longer, made here\n")
    assert run_state.unpack(state, fresh) == 6  # all but the scores made here (both fits are under 128 KiB)
    assert newer.read_text() == "longer, made here\n"
    assert run_state.unpack(state, fresh) == 0


def test_unpack_refuses_paths_outside_the_runs_folder(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with tarfile.open(state / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../outside.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(SystemExit, match="not a plain relative file"):
        run_state.unpack(state, tmp_path / "runs")
    assert not (tmp_path / "outside.json").exists()


def test_features_are_left_out_where_the_result_carries_their_intervals(tmp_path):
    runs = make_runs(tmp_path / "runs")
    carrying = runs / "app" / "dev" / "cells" / "toy-base" / "spm" / "whiskers"
    carrying.mkdir(parents=True)
    (carrying / "result.json").write_text('{"alteration_intervals": {"fid_judge_features": {}}}')
    for name in run_state.FEATURE_FILES:
        (carrying / name).write_bytes(b"f" * 5000)
    run_state.pack(runs, tmp_path / "state")
    with tarfile.open(tmp_path / "state" / "app--dev.tar.gz") as tar:
        names = set(tar.getnames())
    assert f"{DEV}/alteration_features.safetensors" in names  # an older result: the report needs its features
    assert {n for n in names if "whiskers" in n} == {"app/dev/cells/toy-base/spm/whiskers/result.json"}


def test_a_run_folder_given_as_the_runs_folder_is_refused(tmp_path):
    runs = make_runs(tmp_path / "runs")
    state = tmp_path / "state"
    run_state.pack(runs, state)
    kept = sorted(p.relative_to(state) for p in state.rglob("*"))
    with pytest.raises(SystemExit, match="is a run folder: give the folder that holds run folders"):
        run_state.pack(runs / "app" / "dev", state)  # its mirror would be the state folder: swept clean
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == kept


def test_the_sweep_removes_only_stale_fits_not_another_packs_write(tmp_path):
    runs, state = make_runs(tmp_path / "runs"), tmp_path / "state"
    run_state.pack(runs, state)
    mirror = state / "app--dev" / "fits" / "toy-base"
    in_progress, note = mirror / ".spm~seed1.safetensors.x1.tmp", mirror / "README"
    in_progress.write_bytes(b"half")
    note.write_text("kept")
    stale = mirror / "gone.safetensors"
    stale.write_bytes(b"z")
    run_state.pack(runs, state)
    assert in_progress.exists() and note.exists() and not stale.exists()


def test_a_run_folder_named_with_two_dashes_gets_its_fits_back_where_they_were(tmp_path):
    runs = tmp_path / "runs"
    fit = runs / "my--app" / "fits" / "toy-base" / "spm.safetensors"
    fit.parent.mkdir(parents=True)
    (runs / "my--app" / "judge.json").write_text("{}")
    fit.write_bytes(b"w" * 10)
    run_state.pack(runs, tmp_path / "state")
    fresh = tmp_path / "fresh"
    assert run_state.unpack(tmp_path / "state", fresh) == 2
    assert (fresh / "my--app" / "fits" / "toy-base" / "spm.safetensors").read_bytes() == b"w" * 10
