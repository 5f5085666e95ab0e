import dataclasses

import pytest
import yaml

from spmbench.toy.cli import main as train_main


SMOKE_ARGS = [
    "--vae-steps",
    "2",
    "--judge-steps",
    "2",
    "--base-steps",
    "2",
    "--pastel-steps",
    "1",
    "--verbose-steps",
    "1",
    "--decoder-steps",
    "1",
    "--pool-size",
    "256",
    "--ckpt-every",
    "1",
]


@pytest.fixture(autouse=True)
def clip_feature_fallback(monkeypatch):
    """Real-model alteration on the CLIP-feature fallback wherever the suite runs: the vision extra's
    Inception-v3 and LPIPS weights are downloaded on first use (its own tests ask for it)."""
    monkeypatch.setenv("SPMBENCH_VISION", "off")


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The whole toy world trained for a couple of steps: real files, real code paths, no quality."""
    root = tmp_path_factory.mktemp("toyworld")
    args = ["--out", str(root / "weights"), "--workdir", str(root / "work"), *SMOKE_ARGS]
    train_main(args)
    return root, args


# Fits of a few steps, for runs on stand-in models: every line of every fit runs, nothing is erased.
FAST_FITS = {
    "spm": {"iterations": 2, "rollout_steps": 4, "warmup_steps": 1},
    "esd-x": {"iterations": 2, "rollout_steps": 4},
    "esd-u": {"iterations": 2, "rollout_steps": 4},
    "ca": {"iterations": 2, "batch_size": 2, "anchor_images": 2, "sample_steps": 2},
}


@pytest.fixture()
def toy_weights(smoke_world, monkeypatch, tmp_path):
    """The smoke-trained world in place of the shipped one, with model specs whose fits take two steps."""
    import spmbench.models

    root, _ = smoke_world
    monkeypatch.setattr(spmbench.models, "TOY_WEIGHTS", root / "weights")  # where the toy judge is
    specs = tmp_path / "model-specs"
    specs.mkdir()
    for path in spmbench.models.MODELS_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if data.get("eraser_settings"):
            data["eraser_settings"] = FAST_FITS
        if data["world"] == "toy":
            data["source"] = str(root / "weights" / data["name"])
        (specs / path.name).write_text(yaml.safe_dump(data))
    monkeypatch.setattr(spmbench.models, "MODELS", dataclasses.replace(spmbench.models.MODELS, shipped=specs))
    return root / "weights"


@pytest.fixture()
def run_real_app(tiny_dir, tiny_sdxl_dir, tmp_path, monkeypatch):
    """run(app, *options): `spmbench run --app APP` through the CLI on a tiny SD registered as a real
    model ('tiny-real', family sd1, fits of a few steps; `model="tiny-xl"`: a tiny SDXL, family sdxl) with
    `erasers`, 1-2 prompts per set; the published prompt files are read from the shared copy (offline).
    Returns (CLI result, run folder, report folder)."""
    from typer.testing import CliRunner

    from spmbench.cli import app
    from tests.spmbench.test_prompts import BENCH

    models = tmp_path / "models"
    models.mkdir()
    spec = dict(name="tiny-real", source=str(tiny_dir), family="sd1", world="real", resolution=32,
                num_inference_steps=2, eraser_settings=FAST_FITS)  # fmt: skip
    (models / "tiny-real.yaml").write_text(yaml.safe_dump(spec))
    xl = spec | dict(name="tiny-xl", source=str(tiny_sdxl_dir), family="sdxl", guidance_scale=5.0)
    (models / "tiny-xl.yaml").write_text(yaml.safe_dump(xl))
    monkeypatch.setenv("SPMBENCH_MODELS", str(models))
    (tmp_path / "cache" / "prompts").mkdir(parents=True)
    for published in BENCH.glob("*.csv"):
        (tmp_path / "cache" / "prompts" / published.name).symlink_to(published)
    monkeypatch.setenv("SPMBENCH_CACHE", str(tmp_path / "cache"))
    runs, reports = tmp_path / "runs", tmp_path / "reports"

    def run(app_name: str, *options: str, limit: int = 2, erasers: str = "none,negprompt", model: str = "tiny-real"):
        args = [
            "run",
            "--app",
            app_name,
            "--models",
            model,
            "--erasers",
            erasers,
            "--limit",
            str(limit),
        ]
        result = CliRunner().invoke(app, [*args, "--out", str(runs), "--reports", str(reports), *options])
        return result, runs / app_name, reports / app_name

    return run


@pytest.fixture(scope="module")
def real_judges(tmp_path_factory):
    """Options giving the real applications' judges (and CLIP alteration features) tiny stand-ins."""
    from tests.spmbench.judges.conftest import save_tiny_classifier, save_tiny_clip

    root = tmp_path_factory.mktemp("real-judges")
    clip, classifier = save_tiny_clip(root / "clip"), save_tiny_classifier(root / "classifier", "vit")
    return ["--clip-model", str(clip), "--classifier", str(classifier)]
