"""Every application, toy and real, through `spmbench run` with every built-in eraser, on stand-ins:
the smoke-trained toy world for `toy-*`; for `real-*` a tiny SD registered as a real model, a tiny
CLIP, a tiny ImageNet classifier and the real NudeNet, with the published prompt files read offline."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from spmbench.apps import load_apps
from spmbench.cli import app
from spmbench.erasers import BUILTIN
from tests.spmbench.judges.conftest import save_tiny_classifier, save_tiny_clip


APP_NAMES = load_apps().names()


@pytest.fixture(scope="module")
def real_judges(tmp_path_factory):
    """Options giving the real applications' judges (and CLIP alteration features) tiny stand-ins."""
    root = tmp_path_factory.mktemp("real-judges")
    clip, classifier = save_tiny_clip(root / "clip"), save_tiny_classifier(root / "classifier", "vit")
    return ["--clip-model", str(clip), "--classifier", str(classifier)]


def run_toy_app(name: str, tmp_path):
    for spec in (tmp_path / "model-specs").glob("*.yaml"):  # two sampling steps, as the real stand-in
        spec.write_text(yaml.safe_dump(yaml.safe_load(spec.read_text()) | {"num_inference_steps": 2}))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    args = ["run", "--app", name, "--models", "toy-base", "--erasers", ",".join(BUILTIN), "--limit", "1",
            "--out", runs, "--reports", reports]  # fmt: skip
    return CliRunner().invoke(app, [str(a) for a in args]), runs / name, reports / name


@pytest.mark.parametrize("name", APP_NAMES)
def test_every_application_runs_with_every_builtin_eraser(name, request, tmp_path):
    if name.startswith("toy-"):
        request.getfixturevalue("toy_weights")  # the smoke world's models, with fits of a few steps
        result, run_dir, reports = run_toy_app(name, tmp_path)
    else:
        run_real_app, options = request.getfixturevalue("run_real_app"), request.getfixturevalue("real_judges")
        result, run_dir, reports = run_real_app(name, *options, limit=1, erasers=",".join(BUILTIN))
    assert result.exit_code == 0, result.output
    stored = [json.loads(p.read_text()) for p in run_dir.glob("cells/*/*/*/result.json")]
    experiments = len(load_apps().get(name).erase)
    assert len(stored) == 1 + experiments * (len(BUILTIN) - 1)  # the original, then every eraser per experiment
    assert {r["eraser"] for r in stored} == set(BUILTIN)
    assert all(r["rates"] and r["meta"]["packages"]["torch"] for r in stored)
    table = (reports / f"{name}.md").read_text()
    assert all(f"| {e} |" in table for e in BUILTIN if e != "none")
