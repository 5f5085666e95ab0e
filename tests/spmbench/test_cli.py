"""The CLI's bad-input paths: one-line errors (exit 2) before any work, never a traceback."""

import json

import pytest
import torch
from typer.testing import CliRunner

from spmbench import cli, runner
from spmbench.cli import app
from spmbench.erasers import ERASERS
from spmbench.erasers.released import Released
from spmbench.models import TOY_WEIGHTS


TOY_MODEL = "name: {name}\nsource: {source}\nfamily: toy\nworld: toy\n"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert all(p in result.output for p in parts), result.output


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    """A SPMBENCH_MODELS folder; write(name, extra) adds a toy model spec to it."""
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("SPMBENCH_MODELS", str(folder))

    def write(name, extra="", source=str(TOY_WEIGHTS / "toy-base")):
        (folder / f"{name}.yaml").write_text(TOY_MODEL.format(name=name, source=source) + extra)
        return folder / f"{name}.yaml"

    return write


@pytest.mark.parametrize("option", [["--limit", "0"], ["--limit", "-1"], ["--batch-size", "0"]])
def test_counts_below_one_are_refused(option):
    result = invoke("run", "--app", "toy-concept", "--dry-run", *option)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_unusable_output_directories_are_refused_before_any_work(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("")
    base = ["run", "--app", "toy-concept", "--models", "toy-base", "--erasers", "none"]
    assert_one_line_error(invoke(*base, "--out", a_file), "--out", "is a file")
    assert_one_line_error(invoke(*base, "--out", tmp_path / "runs", "--reports", a_file), "--reports", "is a file")
    assert_one_line_error(invoke(*base, "--out", a_file / "sub"), "--out", "cannot make the directory")
    assert not list((tmp_path / "runs").iterdir())  # nothing was run


def test_a_run_dry_run_prints_its_cells_and_their_cost_at_the_measured_rates_and_runs_nothing(tmp_path):
    args = ["run", "--app", "toy-object", "--models", "toy-base", "--erasers", "none,spm", "--out", tmp_path / "runs"]
    result = invoke(*args, "--dry-run", "--limit", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    cells = [line for line in lines if line.startswith("  toy-base/")]
    assert "toy-object: 2 cells" in lines and len(cells) == 2  # the original and spm's one experiment
    total = next(line for line in lines if line.startswith("total: cells 2, images "))
    assert "fits 1: about " in total and " h;" in total  # toy-base's family has measured rates: hours, not '?'
    assert "attacks" not in result.output and not (tmp_path / "runs").exists()
    attacked = invoke(*args, "--dry-run", "--limit", "1", "--attack", "uda")  # the shipped rates have no attack's
    assert "attack searches 2: no measured rate (toy at 32 px: attack uda)" in attacked.output  # a search per cell


def test_bad_devices_are_refused(tmp_path, monkeypatch):
    base = ["run", "--app", "toy-concept", "--dry-run"]
    assert_one_line_error(invoke(*base, "--device", "bogus"), "--device 'bogus' is not a torch device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_one_line_error(invoke(*base, "--device", "cuda"), "CUDA is not available")


def test_expected_failures_mid_run_are_one_line_and_bugs_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_judges_for", lambda *a: (object(), None))

    def fails(error):
        def run(*args, **kwargs):
            raise error

        return run

    args = ["run", "--app", "toy-concept", "--models", "toy-base", "--erasers", "none", "--out", tmp_path]
    monkeypatch.setattr(runner, "run", fails(ValueError("unknown model '/gone/x/y'")))
    assert_one_line_error(invoke(*args), "unknown model '/gone/x/y'")
    monkeypatch.setattr(runner, "run", fails(FileNotFoundError("weights missing")))
    assert_one_line_error(invoke(*args), "weights missing")
    monkeypatch.setattr(runner, "run", fails(ZeroDivisionError("a bug")))
    assert isinstance(invoke(*args).exception, ZeroDivisionError)  # a bug keeps its traceback


def test_validate_checks_local_model_sources(user_models, tmp_path):
    path = user_models("mine", source=str(tmp_path / "gone" / "model"))
    assert_one_line_error(
        invoke("validate"), f"{path}: no such directory", "give a local diffusers pipeline directory"
    )
    (tmp_path / "gone" / "model").mkdir(parents=True)
    (tmp_path / "gone" / "model" / "model_index.json").write_text("{}")
    assert invoke("validate").exit_code == 0
    user_models("mine", source="not-a-model")
    assert_one_line_error(invoke("validate"), "'not-a-model' is neither a local diffusers directory nor a hub id")


def test_validate_checks_eraser_settings_as_a_run_would(user_models):
    path = user_models("mine", "eraser_settings:\n  spm: {iteratons: 5}\n  esd-x: {iterations: 0}\n")
    result = invoke("validate")
    # the settings a run would fit with: the application's, then the model's (runner.settings_problem)
    assert_one_line_error(result, "eraser 'spm': unknown field(s) ['iteratons']", "(eraser_settings.spm of ")
    assert "eraser 'esd-x': iterations must be" in result.output and "(eraser_settings.esd-x of " in result.output
    assert f"concept.yaml and {path})" in result.output  # one line per application the model runs in
    user_models("mine", "eraser_settings:\n  spm: {iterations: 0}\n  spm-rel: {lr: 1.0}\n  spn: {}\n")
    result = invoke("validate")
    assert_one_line_error(result, "eraser 'spm': iterations must be at least 1, not 0")
    assert "eraser_settings.spm-rel: spm-rel shares the settings of 'spm'" in result.output
    assert "eraser_settings.spn: no such eraser" in result.output
    user_models("mine", "eraser_settings:\n  negprompt: {strength: 2}\n")
    assert_one_line_error(invoke("validate"), "eraser 'negprompt' takes no settings")
    user_models("mine", "derived_from: toy-base\neraser_settings:\n  spm: {iterations: 5}\n")
    never_read = f"{path}: eraser_settings are never read: mine reuses the fits of toy-base"
    assert_one_line_error(invoke("validate"), never_read)


def test_validate_checks_released_weights_exist(tmp_path, monkeypatch):
    gone = Released("gone", ("nudity",), unet=str(tmp_path / "nowhere"), origin="gone.yaml")
    monkeypatch.setitem(ERASERS._items, "gone", gone)
    assert_one_line_error(invoke("validate"), "eraser 'gone' (gone.yaml): unet weights", "do not exist")


def _app_with_an_unknown_prompt_file(tmp_path, monkeypatch, target: str, near: str) -> None:
    """A SPMBENCH_APPS folder with application 'mine', whose near prompts name a file that does not exist."""
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "mine.yaml").write_text(
        f"name: mine\nversion: 1\nworld: toy\njudge: toy\nerase: [[{target}]]\nseeds: [0]\n"
        f"prompts:\n  target: {{concepts: [{target}], templates: ['{{}}']}}\n  near: {{concepts: [{near}], file: nope.csv}}\n"
    )
    monkeypatch.setenv("SPMBENCH_APPS", str(folder))


def test_validate_names_an_unknown_prompt_file(tmp_path, monkeypatch):
    _app_with_an_unknown_prompt_file(tmp_path, monkeypatch, "Barkley", "dog")
    result = invoke("validate")
    assert_one_line_error(result, "mine.yaml: prompts.near: unknown prompt file 'nope.csv'", "vangogh_prompts.csv")


@pytest.mark.parametrize("command", ["run", "tune"])
def test_run_and_tune_refuse_the_same_selections(command, tmp_path, monkeypatch):
    out = ["--out", tmp_path / "runs", "--reports", tmp_path / "r"]
    assert_one_line_error(invoke(command, "--app", "real-concept", "--models", "toy", *out), "is for real models")
    assert_one_line_error(invoke(command, "--app", "all", "--models", "sd14,toy-base", *out), "mixes worlds")
    assert_one_line_error(invoke(command, "--app", "toy-concept", "--models", ",", *out), "selected no model")
    _app_with_an_unknown_prompt_file(tmp_path, monkeypatch, "Barkley", "dog")
    assert_one_line_error(invoke(command, "--app", "mine", "--models", "toy-base", *out), "unknown prompt file")


def test_empty_selections_fail_and_duplicates_run_once():
    assert_one_line_error(invoke("run", "--app", "toy-concept", "--models", ",", "--dry-run"), "selected no model")
    assert_one_line_error(invoke("run", "--app", "toy-concept", "--erasers", "", "--dry-run"), "selected no eraser")
    result = invoke("run", "--app", "toy-concept", "--models", "toy-base,toy-base", "--erasers", "none,spm,spm",
                    "--dry-run")  # fmt: skip
    assert result.exit_code == 0 and "toy-concept: 4 cells" in result.output  # 1 original + 3 experiments


def _result(run_dir, app_name="toy-object"):
    cell = run_dir / "cells" / "toy-base" / "none" / "original"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({"app": app_name}))
    return cell / "result.json"


def test_report_errors_name_the_file_or_the_directory_to_give(tmp_path):
    path = _result(tmp_path / "runs" / "toy-object")
    result = invoke("report", tmp_path / "runs", "--reports", tmp_path / "r")
    assert_one_line_error(result, f"spmbench report {tmp_path / 'runs' / 'toy-object'}")
    path.write_text('{"app": "toy-obj')  # torn by a kill
    result = invoke("report", tmp_path / "runs" / "toy-object", "--reports", tmp_path / "r")
    assert_one_line_error(result, f"{path}: not a readable result")
    path.write_text(json.dumps({"app": "retired-app"}))
    result = invoke("report", tmp_path / "runs" / "toy-object", "--reports", tmp_path / "r")
    assert_one_line_error(result, f"{path}: unknown application 'retired-app'")


def test_dry_run_refuses_the_fitting_settings_a_run_would_refuse(user_models):
    user_models("mine", 'eraser_settings:\n  spm: {num_anchors: "four"}\n')
    result = invoke("run", "--app", "toy-object", "--models", "mine", "--erasers", "none,spm-rel", "--dry-run")
    assert_one_line_error(result, "eraser 'spm-rel': num_anchors must be a whole number, got 'four'")
    assert "mine.yaml" in result.output and "cells" not in result.output  # before the plan is printed


def test_dry_run_checks_what_validate_checks_of_its_selection(tmp_path, monkeypatch, user_models):
    """Released weights that do not exist, a prompt file that does not exist, a model source that is not
    a pipeline: found by --dry-run, before the plan, as validate finds them (a run found the first only
    when applying the eraser, after generating the original cell)."""
    gone = Released("gone", ("star",), unet=str(tmp_path / "nowhere"), origin="gone.yaml")
    monkeypatch.setitem(ERASERS._items, "gone", gone)
    result = invoke("run", "--app", "toy-object", "--models", "toy-base", "--erasers", "none,gone", "--dry-run")
    assert_one_line_error(result, "eraser 'gone' (gone.yaml): unet weights", "do not exist")
    assert "cells" not in result.output
    user_models("broken", source=str(tmp_path))  # a folder that is no diffusers pipeline
    result = invoke("run", "--app", "toy-object", "--models", "broken", "--erasers", "none", "--dry-run")
    assert_one_line_error(result, "broken.yaml", "not a diffusers pipeline directory")
    _app_with_an_unknown_prompt_file(tmp_path, monkeypatch, "star", "circle")
    result = invoke("run", "--app", "mine", "--models", "toy-base", "--erasers", "none", "--dry-run")
    assert_one_line_error(result, "mine.yaml: prompts.near: unknown prompt file 'nope.csv'")
