import pytest
from typer.testing import CliRunner

from spmbench.cli import app
from spmbench.registry import Registry, UnknownName
from spmbench.specs import SpecError, load_models, select_models


def test_registry_suggests_the_closest_name():
    reg = Registry("model")
    reg.add("toy-base", 1)
    reg.add("sd14", 2)
    assert reg.get("sd14") == 2 and reg.names() == ["sd14", "toy-base"]
    with pytest.raises(UnknownName, match="did you mean 'toy-base'.*available: sd14, toy-base"):
        reg.get("toy-bsae")
    with pytest.raises(ValueError, match="twice"):
        reg.add("sd14", 3)


def test_shipped_models_load_with_their_families():
    models = load_models()
    assert {m.name for m in select_models(models, "all")} == {"toy-base", "toy-pastel", "toy-verbose"}
    assert models.get("sd15").derived_from == "sd14" and models.get("sd21-base").family == "sd2"
    assert [m.name for m in select_models(models, "sd14,sd15")] == ["sd14", "sd15"]
    assert len(select_models(models, "real")) == 6


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\ncolour: red\n", r"unknown field\(s\) \['colour'\]"),
        ("name: x\nsource: a/b\nworld: real\n", r"missing field\(s\) \['family'\]"),
        ("name: x\nsource: a/b\nfamily: sdxl\nworld: real\n", "family 'sdxl' is not one of"),
        ("name: y\nsource: a/b\nfamily: sd1\nworld: real\n", "must match the file name"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nderived_from: nope\n", "derived_from 'nope'"),
        ("name: [x\n", "not valid YAML"),
    ],
)
def test_bad_model_files_say_what_is_wrong(tmp_path, text, message):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(SpecError, match=message):
        load_models([tmp_path])


def test_user_models_folder_extends_the_registry(tmp_path, monkeypatch):
    (tmp_path / "my-finetune.yaml").write_text(
        "name: my-finetune\nsource: /models/ft\nfamily: sd1\nworld: real\nderived_from: sd15\n"
    )
    monkeypatch.setenv("SPMBENCH_MODELS", str(tmp_path))
    result = CliRunner().invoke(app, ["ls", "models"])
    assert result.exit_code == 0 and "my-finetune" in result.output and "(from sd15)" in result.output
    assert "ok: 10 models" in CliRunner().invoke(app, ["validate"]).output
    (tmp_path / "bad.yaml").write_text("name: bad\n")
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2 and "bad.yaml: missing field(s)" in result.output
