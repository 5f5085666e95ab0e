"""Model specs: the shipped models, checks on a model file, and where a model's weights are."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spmbench.cli import app
from spmbench.models import MODELS_DIR, TOY_WEIGHTS, load_models, parse_model, select_models
from spmbench.specs import SpecError


def test_shipped_models_load_with_their_families():
    models = load_models()
    assert {m.name for m in select_models(models, "all")} == {"toy-base", "toy-pastel", "toy-verbose"}
    assert models.get("sd15").derived_from == "sd14" and models.get("sd21-base").family == "sd2"
    assert [m.name for m in select_models(models, "sd14,sd15")] == ["sd14", "sd15"]
    assert len(select_models(models, "real")) == 12
    assert models.get("sd3-medium").family == "sd3"  # the DiT families' roots
    assert models.get("flux1-dev").family == "flux" and models.get("flux1-dev").guidance_scale == 3.5
    assert models.get("flux1-schnell").derived_from == "flux1-dev"  # transfer within the FLUX.1 family
    sdxl = [m for m in models if m.family == "sdxl"]  # the SDXL family: base and two community fine-tunes
    assert sorted(m.derived_from or "" for m in sdxl) == ["", "sdxl-base", "sdxl-base"] and models.get("sdxl-base")
    assert models.get("sd14").source == "CompVis/stable-diffusion-v1-4"  # a hub id, as written
    assert models.get("toy-pastel").source == str(TOY_WEIGHTS / "toy-pastel")  # relative to its file


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\ncolour: red\n", r"unknown field\(s\) \['colour'\]"),
        ("name: x\nsource: a/b\nworld: real\n", r"missing field\(s\) \['family'\]"),
        ("name: x\nsource: a/b\nfamily: sd4\nworld: real\n", "family 'sd4' is not one of"),
        ("name: y\nsource: a/b\nfamily: sd1\nworld: real\n", "must match the file name"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nderived_from: nope\n", "derived_from 'nope'"),
        ("name: [x\n", r"x.yaml:2:1: not valid YAML: expected ',' or '\]', but got '<stream end>'$"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nresolution: big\n", "resolution must be a whole number"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nguidance_scale: x\n", "guidance_scale must be a number"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nnum_inference_steps: -5\n", "must be at least 1, got -5"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nresolution: true\n", "resolution must be a whole number"),
        ("name: x\nsource: 5\nfamily: sd1\nworld: real\n", "source must be text, got 5"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nderived_from: 3\n", "derived_from must be text or null"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\neraser_settings: {spm: 3}\n", "a mapping of text to"),
        ("name: x\nsource: a/b\nfamily: toy\nworld: real\nderived_from: toy-base\n", "world and family must be toy"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nderived_from: x\n", "cycle through 'x'"),
    ],
)
def test_bad_model_files_say_what_is_wrong(tmp_path, text, message):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(SpecError, match=message):
        load_models([MODELS_DIR, tmp_path])


def test_a_model_name_used_twice_names_both_files(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.yaml").write_text("name: x\nsource: a/b\nfamily: sd1\nworld: real\n")
    with pytest.raises(SpecError, match=r"b/x.yaml: model name 'x' is also used by .*a/x.yaml"):
        load_models([tmp_path / "a", tmp_path / "b"])


def test_a_relative_source_is_relative_to_its_file(tmp_path, tiny_dir, monkeypatch):
    folder = tmp_path / "specs" / "nested"
    folder.mkdir(parents=True)
    spec = "name: x\nsource: {}\nfamily: sd1\nworld: real\n"
    monkeypatch.chdir(tmp_path)  # not where the file is: the source must not depend on the working folder
    (folder / "x.yaml").write_text(spec.format(os.path.relpath(tiny_dir, folder)))  # ../../../...
    model = load_models([folder]).get("x")
    assert model.source == str(tiny_dir) and model.resolve() == str(tiny_dir)
    assert model.load().unet.config.sample_size == 8  # the tiny pipeline, found from anywhere
    (folder / "x.yaml").write_text(spec.format("$HOME/ft"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_models([folder]).get("x").source == str(tmp_path / "ft")


def test_an_untrained_toy_model_says_how_to_train_it(tmp_path):
    (tmp_path / "toy-new.yaml").write_text(
        f"name: toy-new\nsource: {TOY_WEIGHTS / 'toy-new'}\nfamily: toy\nworld: toy\n"
    )
    model = load_models([tmp_path]).get("toy-new")
    with pytest.raises(FileNotFoundError, match=r"toy model 'toy-new' is not trained yet: run `spmbench toy train`"):
        model.load()
    elsewhere = parse_model(
        {"name": "x", "source": "./gone", "family": "toy", "world": "toy"}, str(tmp_path / "x.yaml")
    )
    with pytest.raises(ValueError, match="no such directory"):  # not the toy world's: spm's own message
        elsewhere.resolve()


def test_ls_models_shows_sources_as_spm_takes_them(monkeypatch):
    monkeypatch.chdir(MODELS_DIR.parent.parent)  # the checkout
    listed = CliRunner().invoke(app, ["ls", "models"]).output
    assert "spmbench/toy/weights/toy-base\n" in listed and "CompVis/stable-diffusion-v1-4\n" in listed
    # the SDXL family with its derivatives
    assert "sdxl stabilityai/stable-diffusion-xl-base-1.0\n" in listed
    assert "sdxl Lykon/dreamshaper-xl-1-0 (from sdxl-base)\n" in listed


def test_shipped_toy_folders_declare_the_sampling_of_their_specs():
    """`spm generate` reads a model folder's generation_config.json (spm cannot read spmbench's specs):
    each shipped toy folder must say what its spec says, and what the toy trainer writes; each toy3 spec
    samples with its world's steps (its folders' scheduler is the world's: tests/spmbench/toy/test_train.py)."""
    import json

    from spmbench.toy import models, worlds

    for world_name, version in (("toy", 2), ("toy3", 3)):
        world = worlds.get(version)
        for spec in select_models(load_models(), world_name):
            expected = models.generation_defaults(world.sampling_steps)
            assert {"guidance_scale": spec.guidance_scale, "num_inference_steps": spec.num_inference_steps} == expected
            folder = Path(spec.source)
            if (folder / "model_index.json").is_file():  # world 3 is staged until its weights land
                declared = json.loads((folder / "generation_config.json").read_text())
                assert declared == expected, spec.name
                scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
                assert scheduler["_class_name"] == world.sampler, spec.name
