"""Every application, toy and real, through `spmbench run` with every built-in eraser, on stand-ins:
the smoke-trained toy world for `toy-*` (world v3's for the staged `toy3-*`); for `real-*` a tiny SD
registered as a real model, a tiny CLIP, a tiny ImageNet classifier and the real NudeNet, with the
published prompt files read offline."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spmbench.apps import load_apps
from spmbench.cli import app
from spmbench.erasers import BUILTIN, ERASERS
from spmbench.erasers.base import fit_seed_of, trains
from tests.spmbench.conftest import FAST_FITS
from tests.spmbench.toy.v3.conftest import smoke_world_v3  # noqa: F401 (a fixture, used by toy3_weights)


# The staged world v3's applications are large (toy3-many: 126 cells at --limit 1): the default run keeps one
# of them for the toy3 path (judge, specs, seed_per_prompt, grids) and tags the rest slow.
STAGED_SLOW = {"toy3-concept", "toy3-artist", "toy3-explicit", "toy3-many"}
APP_NAMES = [
    pytest.param(name, marks=pytest.mark.slow) if name in STAGED_SLOW else name for name in load_apps().names()
]


@pytest.fixture()
def toy3_weights(smoke_world_v3, monkeypatch, tmp_path):  # noqa: F811 (the imported fixture)
    """The smoke-trained world v3 in place of spmbench/toy/v3/weights for the toy3 model specs, with fits of a
    few steps; returns the option that points the toy3 judge at its judge."""
    import spmbench.models

    specs = tmp_path / "model-specs"
    specs.mkdir()
    for path in spmbench.models.MODELS_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if data["source"].startswith("../"):  # the v2 toy models: still where their files say
            data["source"] = str((path.parent / data["source"]).resolve())
        if data["world"] == "toy3":
            data["source"] = str(smoke_world_v3 / "weights" / Path(data["source"]).name)
            data["eraser_settings"] = FAST_FITS if data.get("eraser_settings") else {}
        (specs / path.name).write_text(yaml.safe_dump(data))
    monkeypatch.setattr(spmbench.models, "MODELS", dataclasses.replace(spmbench.models.MODELS, shipped=specs))
    return ["-J", f"toy3.weights={smoke_world_v3 / 'weights' / 'judge'}"]


def run_toy_app(name: str, tmp_path, model: str = "toy-base", options: tuple[str, ...] = ()):
    for spec in (tmp_path / "model-specs").glob("*.yaml"):  # two sampling steps, as the real stand-in
        spec.write_text(yaml.safe_dump(yaml.safe_load(spec.read_text()) | {"num_inference_steps": 2}))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    args = ["run", "--app", name, "--models", model, "--erasers", ",".join(BUILTIN), "--limit", "1",
            "--out", runs, "--reports", reports, *options]  # fmt: skip
    return CliRunner().invoke(app, [str(a) for a in args]), runs / name, reports / name


@pytest.mark.parametrize("name", APP_NAMES)
def test_every_application_runs_with_every_builtin_eraser(name, request, tmp_path):
    if name.startswith("toy-"):
        request.getfixturevalue("toy_weights")  # the smoke world's models, with fits of a few steps
        result, run_dir, reports = run_toy_app(name, tmp_path)
    elif name.startswith("toy3-"):
        options = request.getfixturevalue("toy3_weights")
        result, run_dir, reports = run_toy_app(name, tmp_path, "toy3-base", options)
    else:
        run_real_app, options = request.getfixturevalue("run_real_app"), request.getfixturevalue("real_judges")
        # one of the three fit seeds: the toy3 applications above run all three
        result, run_dir, reports = run_real_app(name, *options, "--fit-seeds", "1", limit=1, erasers=",".join(BUILTIN))
    assert result.exit_code == 0, result.output
    stored = [json.loads(p.read_text()) for p in run_dir.glob("cells/*/*/*/result.json")]
    application = load_apps().get(name)
    seeds = 1 if name.startswith("real-") else len(application.fit_seeds)
    fits = sum(seeds if trains(ERASERS.get(e)) else 1 for e in BUILTIN if e != "none")
    assert len(stored) == 1 + len(application.erase) * fits  # the original, then every eraser (and fit seed)
    assert {fit_seed_of(r["eraser"])[0] for r in stored} == set(BUILTIN)
    assert all(r["rates"] and r["meta"]["packages"]["torch"] for r in stored)
    table = (reports / f"{name}.md").read_text()
    assert all(f"| {e} |" in table for e in BUILTIN if e != "none")
