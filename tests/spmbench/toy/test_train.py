"""The whole toy-world pipeline at a few steps: every stage runs, resumes, and yields a loadable family."""

import json

import torch

from spmbench.toy.cli import card_main
from spmbench.toy.cli import main as train_main


def test_family_loads_as_standard_diffusers_pipelines(smoke_world):
    import spm

    root, _ = smoke_world
    for name in ("toy-base", "toy-pastel", "toy-verbose"):
        pipe = spm.load_pipeline(str(root / "weights" / name))
        assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32
        image = pipe(
            "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images
        assert image.shape == (1, 32, 32, 3)
    info = json.loads((root / "weights" / "training.json").read_text())
    assert set(info["seconds_per_stage"]) == {"vae", "judge", "base", "pastel", "verbose"}


def test_rerun_resumes_instead_of_retraining(smoke_world):
    root, args = smoke_world
    before = (root / "work" / "base" / "ckpt.pt").stat().st_mtime_ns
    train_main(args)
    assert (root / "work" / "base" / "ckpt.pt").stat().st_mtime_ns == before


def test_card_measures_and_writes_report(smoke_world, tmp_path):
    root, _ = smoke_world
    report = tmp_path / "toyworld.md"
    card_main(["--weights", str(root / "weights"), "--report", str(report), "--images-per-kind", "2",
               "--judge-images", "16", "--num-inference-steps", "2"])  # fmt: skip
    text = report.read_text()
    assert "Judge accuracy" in text and "### toy-pastel" in text and "implicit" in text
    assert (tmp_path / "toyworld" / "toy-base_character.png").exists()
