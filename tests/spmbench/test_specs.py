import pytest
from typer.testing import CliRunner

import spmbench.specs
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
        ("name: [x\n", r"x.yaml:2:1: not valid YAML: expected ',' or '\]', but got '<stream end>'$"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nresolution: big\n", "resolution must be a whole number"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nguidance_scale: x\n", "guidance_scale must be a number"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nnum_inference_steps: -5\n", "must be at least 1, got -5"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nresolution: true\n", "resolution must be a whole number"),
        ("name: x\nsource: 5\nfamily: sd1\nworld: real\n", "source must be text, got 5"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nderived_from: 3\n", "derived_from must be text or null"),
        ("name: x\nsource: a/b\nfamily: toy\nworld: real\nderived_from: toy-base\n", "world and family must be toy"),
        ("name: x\nsource: a/b\nfamily: sd1\nworld: real\nderived_from: x\n", "cycle through 'x'"),
    ],
)
def test_bad_model_files_say_what_is_wrong(tmp_path, text, message):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(SpecError, match=message):
        load_models([spmbench.specs.MODELS_DIR, tmp_path])


def test_a_model_name_used_twice_names_both_files(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.yaml").write_text("name: x\nsource: a/b\nfamily: sd1\nworld: real\n")
    with pytest.raises(SpecError, match=r"b/x.yaml: model name 'x' is also used by .*a/x.yaml"):
        load_models([tmp_path / "a", tmp_path / "b"])


def test_an_application_name_used_twice_names_both_files(tmp_path):
    from spmbench.apps import CONCEPTS_DIR, load_apps

    for world in ("toy", "real"):
        (tmp_path / world).mkdir()
        (tmp_path / world / "concept.yaml").write_text((CONCEPTS_DIR / "toy" / "concept.yaml").read_text())
    with pytest.raises(SpecError, match=r"toy/concept.yaml: application name 'toy-concept' is also used by .*real"):
        load_apps(tmp_path)


def test_user_models_folder_extends_the_registry(tmp_path, monkeypatch):
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "model_index.json").write_text("{}")
    (tmp_path / "my-finetune.yaml").write_text(
        f"name: my-finetune\nsource: {tmp_path / 'ft'}\nfamily: sd1\nworld: real\nderived_from: sd15\n"
    )
    monkeypatch.setenv("SPMBENCH_MODELS", str(tmp_path))
    result = CliRunner().invoke(app, ["ls", "models"])
    assert result.exit_code == 0 and "my-finetune" in result.output and "(from sd15)" in result.output
    assert "ok: 10 models" in CliRunner().invoke(app, ["validate"]).output
    (tmp_path / "bad.yaml").write_text("name: bad\n")
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2 and "bad.yaml: missing field(s)" in result.output


def test_applications_validate_and_expand(monkeypatch):
    from spmbench.apps import load_apps
    from tests.spmbench.test_prompts import BENCH

    apps = load_apps()
    assert {"toy-concept", "toy-artist", "toy-object", "toy-explicit", "real-concept", "real-artist"} <= set(
        apps.names()
    )
    concept = apps.get("toy-concept")
    rows = concept.rows(("Barkley", "Whiskers"))
    targets = [r for r in rows if r.set == "target"]
    assert {r.concept for r in targets} == {"Barkley", "Whiskers"} and len(targets) == 2 * 4 * 2
    assert len({r.prompt_id for r in rows}) == len(rows)  # ids are unique and stable
    assert [r.prompt_id for r in concept.rows(("Barkley", "Whiskers"))] == [r.prompt_id for r in rows]
    artist = apps.get("real-artist")
    rows = artist.rows(("Van Gogh",), data_dir=BENCH)
    target = [r for r in rows if r.set == "target"]
    assert len(target) == 20 and {r.concept for r in target} == {"Van Gogh"} and target[0].seed == 1214
    near = [r for r in rows if r.set == "near"]
    assert len(near) == 80 and "Van Gogh" not in {r.concept for r in near}  # the other four artists


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({"near": {"concepts": ["a"], "templates": ["{}"]}}, "need a 'target' set"),
        ({"target": {"concepts": "{targetz}", "templates": ["{}"]}}, "must be a list or the string"),
        ({"target": {"concepts": ["a"], "templates": []}}, "non-empty list of strings"),
        ({"target": {"concepts": ["a"], "templates": ["{}"], "file": "x.csv"}}, "'file' or 'templates', not both"),
        ({"target": {"concepts": ["a"], "templets": ["{}"]}}, r"unknown field\(s\) \['templets'\]"),
        (
            {"target": {"concepts": ["a"], "templates": ["a red {0} {1}"]}},
            r"x.yaml: prompts.target: template 'a red \{0\} \{1\}' must hold exactly one \{\}",
        ),
        (
            {"target": {"concepts": ["a"], "templates": ["{shape}"]}},
            r"template '\{shape\}' must hold exactly one \{\}",
        ),
        (
            {"target": {"concepts": ["a"], "templates": ["{} and {}"]}},
            r"template '\{\} and \{\}' must hold exactly one \{\}",
        ),
        ({"target": {"concepts": ["a"], "templates": ["a {"]}}, r"template 'a \{': Single '\{'"),
        ({"target": {"concepts": ["a", "b"], "templates": ["a dog"]}}, "'a dog' must hold .* several concepts"),
        ({"target": {"concepts": "{targets}", "templates": ["a dog"]}}, "'a dog' must hold .* several concepts"),
    ],
)
def test_bad_application_files_say_what_is_wrong(prompts, message):
    from spmbench.apps import parse_app

    data = {
        "name": "x",
        "version": 1,
        "world": "toy",
        "judge": "toy",
        "erase": [["a"]],
        "prompts": prompts,
        "seeds": [0],
    }
    with pytest.raises(SpecError, match=message):
        parse_app(data, "x.yaml")


def test_a_template_without_a_concept_is_fine_for_a_single_concept():
    from spmbench.apps import parse_app

    data = {"name": "x", "version": 1, "world": "toy", "judge": "toy", "erase": [["a"]], "seeds": [0],
            "prompts": {"target": {"concepts": ["nudity"], "templates": ["a nude figure", "{}"]}}}  # fmt: skip
    assert len(parse_app(data, "x.yaml").rows(("a",))) == 2
