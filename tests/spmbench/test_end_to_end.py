"""Every application, toy and real, through `spmbench run` with every built-in eraser, on stand-ins:
the smoke-trained toy world for `toy-*`; for `real-*` a tiny SD registered as a real model, a tiny
CLIP, a tiny ImageNet classifier and the real NudeNet, with the published prompt files read offline."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from spmbench.apps import load_apps
from spmbench.cli import app
from spmbench.erasers import BUILTIN
from tests.spmbench.conftest import FAST_FITS
from tests.spmbench.judges.conftest import save_tiny_classifier, save_tiny_clip
from tests.spmbench.test_prompts import BENCH


APP_NAMES = load_apps().names()


@pytest.fixture(scope="module")
def real_world(tiny_dir, tmp_path_factory):
    """A tiny SD as a real model (fast fits), a tiny CLIP and classifier, and the prompt files."""
    root = tmp_path_factory.mktemp("real-world")
    (root / "models").mkdir()
    spec = {"name": "tiny-real", "source": str(tiny_dir), "family": "sd1", "world": "real", "resolution": 32,
            "num_inference_steps": 2, "eraser_settings": FAST_FITS}  # fmt: skip
    (root / "models" / "tiny-real.yaml").write_text(yaml.safe_dump(spec))
    (root / "cache" / "prompts").mkdir(parents=True)
    for name in ("i2p_benchmark.csv", "big_artists_prompts.csv", "small_imagenet_prompts.csv"):
        shutil.copy(BENCH / name, root / "cache" / "prompts")
    return root, save_tiny_clip(root / "clip"), save_tiny_classifier(root / "classifier", "vit")


@pytest.mark.parametrize("name", APP_NAMES)
def test_every_application_runs_with_every_builtin_eraser(name, request, tmp_path, monkeypatch):
    if name.startswith("toy-"):
        request.getfixturevalue("toy_weights")  # the smoke world's models, with fast fits
        for spec in (tmp_path / "model-specs").glob("*.yaml"):  # and two sampling steps, as the real stand-in
            spec.write_text(yaml.safe_dump(yaml.safe_load(spec.read_text()) | {"num_inference_steps": 2}))
        models, extra = "toy-base", []
    else:
        root, clip, classifier = request.getfixturevalue("real_world")
        monkeypatch.setenv("SPMBENCH_MODELS", str(root / "models"))
        monkeypatch.setenv("SPMBENCH_CACHE", str(root / "cache"))
        models, extra = "tiny-real", ["--clip-model", clip, "--classifier", classifier]
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    args = ["run", "--app", name, "--models", models, "--erasers", ",".join(BUILTIN), "--limit", "1",
            "--out", runs, "--reports", reports, *extra]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    stored = [json.loads(p.read_text()) for p in (runs / name).glob("cells/*/*/*/result.json")]
    experiments = len(load_apps().get(name).erase)
    assert len(stored) == 1 + experiments * (len(BUILTIN) - 1)  # the original, then every eraser per experiment
    assert {r["eraser"] for r in stored} == set(BUILTIN)
    assert all(r["rates"] and r["meta"]["packages"]["torch"] for r in stored)
    table = (reports / name / f"{name}.md").read_text()
    assert all(f"| {e} |" in table for e in BUILTIN if e != "none")
