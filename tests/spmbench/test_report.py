"""Table rows from stored results (the runner's end-to-end test covers the written files)."""

import csv
import io

import pytest

from spmbench.report import csv_text, load_results, table_rows
from spmbench.result import Result


def result(eraser, rates, alteration=None):
    return Result(
        app="toy-concept", app_version=2, model="toy-base", fitted_on="toy-base", eraser=eraser, targets=("Barkley",),
        rows=2, rates=rates, original_rates={"target": 1.0, "near": 0.8}, alteration=alteration,
        alteration_features="toy judge", fit_seconds=61.2, fit_peak_mib=None, generate_seconds_this_run=1.0,
        settings={"limit": None},
    )  # fmt: skip


def test_rows_show_rates_with_the_originals_and_clean_zeros():
    untouched = {"paired_feature_distance": 0.0, "fid_judge_features": -3e-7}  # FID's rounding error
    header, rows = table_rows([result("none", {}), result("spm-rel", {"target": 0.0, "near": 0.8}, untouched)])
    assert header[4:6] == ["target ↓", "near ↑"]
    assert rows == [
        ["toy-base", "Barkley", "spm-rel", "toy-base", "0 % (100 %)", "80 % (80 %)", "0.000", "0.000", "61", "-"]
    ]


def test_results_round_trip_and_a_foreign_file_is_named(tmp_path):
    stored = result("spm", {"target": 0.5})
    path = tmp_path / "cells" / "toy-base" / "spm" / "barkley" / "result.json"
    stored.save(path)
    assert load_results(tmp_path) == [stored]
    path.write_text('{"app": "toy-concept", "rates": {}}')  # an older schema: recomputed by a run, not read
    assert Result.load(path) is None
    with pytest.raises(ValueError, match=r"result.json: not a readable result of schema 1: rerun `spmbench run`"):
        load_results(tmp_path)


def test_the_csv_has_every_number_the_markdown_has():
    erased = result("spm", {"target": 0.0, "near": 1.0}, {"paired_feature_distance": 0.25, "fid_judge_features": 1.5})
    rows = list(csv.reader(io.StringIO(csv_text([result("none", {"target": 1.0}), erased]))))
    measures = {row[4]: (row[5], row[6]) for row in rows[1:]}
    assert measures == {
        "target": ("0.0000", "1.0000"),
        "near": ("1.0000", "0.8000"),
        "paired_feature_distance": ("0.2500", ""),
        "fid_judge_features": ("1.5000", ""),
        "fit_seconds": ("61.2", ""),
    }


def test_report_on_a_full_disk_is_one_line(tmp_path, disk_full_for):
    from typer.testing import CliRunner

    from spmbench.cli import app

    run_dir = tmp_path / "runs" / "toy-concept"
    result("spm", {"target": 0.0}).save(run_dir / "cells" / "toy-base" / "spm" / "barkley" / "result.json")
    disk_full_for(".md")
    out = CliRunner().invoke(app, ["report", str(run_dir), "--reports", str(tmp_path / "reports")])
    assert out.exit_code == 2 and "no space left" in out.output and "toy-concept.md" in out.output
    assert len(out.output.strip().splitlines()) == 1  # no traceback
