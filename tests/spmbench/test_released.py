"""Released checkpoints registered by YAML: exact weights in, originals back, clear errors."""

import pytest
import torch
import yaml
from safetensors.torch import save_file

from spmbench.erasers.released import Released, load_released
from spmbench.registry import Registry
from spmbench.specs import SpecError


def modified(module, shift: float) -> dict[str, torch.Tensor]:
    return {k: (v + shift if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}


@pytest.fixture()
def checkpoint(pipe, tmp_path):
    """A 'released' UNet (diffusers component folder) and text encoder (a file), and their YAML."""
    unet, text_encoder = modified(pipe.unet, 0.5), modified(pipe.text_encoder, -0.25)
    (tmp_path / "weights" / "unet").mkdir(parents=True)
    save_file(unet, str(tmp_path / "weights" / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file(text_encoder, str(tmp_path / "weights" / "te.safetensors"))
    specs = tmp_path / "specs"
    specs.mkdir()
    data = {"name": "esd-snoopy", "unet": "../weights/unet", "text_encoder": str(tmp_path / "weights" / "te.safetensors"),
            "targets": ["Snoopy"], "note": "a test"}  # fmt: skip
    (specs / "esd-snoopy.yaml").write_text(yaml.safe_dump(data))
    return specs, unet, text_encoder


def test_registered_from_the_env_folder(checkpoint, monkeypatch):
    specs, _, _ = checkpoint
    monkeypatch.setenv("SPMBENCH_ERASERS", str(specs))
    registry = Registry("eraser")
    (eraser,) = load_released(registry=registry)
    assert registry.get("esd-snoopy") is eraser and eraser.targets == ("Snoopy",) and eraser.note == "a test"
    monkeypatch.delenv("SPMBENCH_ERASERS")
    assert load_released() == []  # the shipped folder holds only its README


def test_apply_gives_exactly_the_released_weights_and_exit_restores(pipe, checkpoint, tmp_path):
    specs, unet, text_encoder = checkpoint
    (eraser,) = load_released([specs])
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path / "fits", 16)
    assert eraser.fit(pipe, ("snoopy",), tmp_path / "fits", 16) == artifacts and len(artifacts) == 2
    before = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
    with eraser.apply(pipe, artifacts) as handle:
        assert handle is pipe
        for component, wanted in (("unet", unet), ("text_encoder", text_encoder)):
            state = getattr(pipe, component).state_dict()
            assert state.keys() == wanted.keys() and all(torch.equal(state[k], wanted[k]) for k in wanted)
    for component, original in before.items():
        assert all(torch.equal(v, original[k]) for k, v in getattr(pipe, component).state_dict().items())


def test_a_transformers_4_text_encoder_layout_loads(pipe, tmp_path):
    """Published SD text encoders name their keys `text_model.*` and may keep position_ids."""
    wanted = modified(pipe.text_encoder, 1.0)
    saved = {f"text_model.{k}": v for k, v in wanted.items()}
    saved["text_model.embeddings.position_ids"] = torch.arange(pipe.tokenizer.model_max_length)[None]
    (tmp_path / "te").mkdir()
    save_file(saved, str(tmp_path / "te" / "model.safetensors"))
    eraser = Released("advunlearn", ("nudity",), text_encoder=str(tmp_path / "te"))
    with eraser.apply(pipe, eraser.fit(pipe, ("nudity",), tmp_path, 16)):
        state = pipe.text_encoder.state_dict()
        assert all(torch.equal(state[k], wanted[k]) for k in wanted)


def test_targets_it_was_not_trained_for_are_refused(pipe, checkpoint, tmp_path):
    (eraser,) = load_released([checkpoint[0]])
    with pytest.raises(
        ValueError, match=r"'esd-snoopy' was trained to erase Snoopy, not mickey \(.*esd-snoopy.yaml\)"
    ):
        eraser.fit(pipe, ("snoopy", "mickey"), tmp_path, 16)
    with pytest.raises(ValueError, match=r"takes no settings, got \[.lam.\]: remove them"):
        eraser.fit(pipe, ("snoopy",), tmp_path, 16, {"lam": 1})


@pytest.mark.parametrize("bad", ["missing", "unexpected", "shape"])
def test_another_architecture_is_refused_and_nothing_changes(pipe, tmp_path, bad):
    state = modified(pipe.unet, 1.0)
    first = sorted(state)[0]
    if bad == "missing":
        del state[first]
    elif bad == "unexpected":
        state["extra.weight"] = torch.ones(2)
    else:
        state[first] = torch.ones(3, 3)
    save_file(state, str(tmp_path / "unet.safetensors"))
    eraser = Released("other", ("snoopy",), unet=str(tmp_path / "unet.safetensors"))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    key = "extra.weight" if bad == "unexpected" else first
    with pytest.raises(ValueError, match=rf"unet weights .* do not fit .*UNet2DConditionModel.*'{key}'"):
        with eraser.apply(pipe, eraser.fit(pipe, ("snoopy",), tmp_path, 16)):
            pass
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_missing_or_pickled_weights_are_refused(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="'gone'.*unet weights .*nowhere do not exist"):
        Released("gone", ("snoopy",), unet=str(tmp_path / "nowhere")).fit(pipe, ("snoopy",), tmp_path, 16)
    torch.save({}, tmp_path / "esd.pt")
    with pytest.raises(ValueError, match="not safetensors; pickled checkpoints are never loaded"):
        Released("pickle", ("snoopy",), unet=str(tmp_path / "esd.pt")).fit(pipe, ("snoopy",), tmp_path, 16)


@pytest.mark.parametrize(
    "text, match",
    [
        ("name: [unclosed", "not valid YAML"),
        ("name: x\ntargets: [nudity]\n", "at least one of text_encoder, unet"),
        ("name: x\nunet: u\n", "'targets' must be"),
        ("targets: [nudity]\nunet: u\n", r"missing field\(s\) \['name'\]"),
        ("name: x\ntargets: [nudity]\nunet: u\nnote: 3\n", "note must be text, got 3"),
        ("name: x\ntargets: [nudity]\nunet: 3\n", "unet must be text or null, got 3"),
        ("name: a/b\ntargets: [nudity]\nunet: u\n", "name 'a/b' must be"),
        ("name: x\ntargets: [nudity]\nunet: u\ntext_encoer: t\n", r"unknown field\(s\) \['text_encoer'\]"),
        ("- name: x\n", "expected a mapping"),
    ],
)
def test_a_malformed_file_is_a_spec_error_naming_it(tmp_path, text, match):
    (tmp_path / "broken.yaml").write_text(text)
    with pytest.raises(SpecError, match=rf"broken.yaml:.*{match}"):
        load_released([tmp_path])


def test_a_name_taken_is_a_spec_error(tmp_path):
    (tmp_path / "a.yaml").write_text("name: uce\ntargets: [nudity]\nunet: u\n")
    registry = Registry("eraser")
    registry.add("uce", object())
    with pytest.raises(SpecError, match="a.yaml: eraser name 'uce' is already registered"):
        load_released([tmp_path], registry)
    (tmp_path / "a.yaml").write_text("name: same\ntargets: [nudity]\nunet: u\n")
    (tmp_path / "b.yml").write_text("name: same\ntargets: [nudity]\nunet: u\n")
    with pytest.raises(SpecError, match="b.yml: eraser name 'same' is also used by .*a.yaml"):
        load_released([tmp_path])


def test_a_cell_made_from_one_checkpoint_is_refused_when_the_file_points_at_another(pipe, checkpoint, tmp_path):
    from spmbench import runner
    from spmbench.models import load_models

    specs, _, _ = checkpoint
    (eraser,) = load_released([specs])
    assert eraser.applied["unet"].endswith("weights/unet/diffusion_pytorch_model.safetensors")
    cell = runner.Cell(load_models().get("toy-base"), ("snoopy",), eraser.name, tmp_path / "run")
    runner.check_applied(cell, eraser)
    cell.result.write_text("{}")  # something made from these weights
    (tmp_path / "weights" / "te2.safetensors").write_bytes((tmp_path / "weights" / "te.safetensors").read_bytes())
    data = yaml.safe_load((specs / "esd-snoopy.yaml").read_text())
    (specs / "esd-snoopy.yaml").write_text(
        yaml.safe_dump(data | {"text_encoder": str(tmp_path / "weights" / "te2.safetensors")})
    )
    (repointed,) = load_released([specs])
    with pytest.raises(runner.EraserAppliedChanged, match="te2.safetensors"):
        runner.check_applied(cell, repointed)
