"""Applications: the shipped files (in the package, so a wheel has them too), checks and prompt rows."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spmbench.apps import APPS_DIR, load_apps, parse_app
from spmbench.cli import app
from spmbench.specs import SpecError, spec_files


SHIPPED = {"toy-concept", "toy-artist", "toy-object", "toy-explicit", "real-concept", "real-artist", "real-explicit",
           "real-object"}  # fmt: skip


def test_applications_validate_and_expand():
    from tests.spmbench.test_prompts import BENCH

    apps = load_apps()
    assert set(apps.names()) == SHIPPED
    assert {Path(a.path).parent for a in apps} == {APPS_DIR / "toy", APPS_DIR / "real"}  # one folder per world
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


def test_an_application_name_used_twice_names_both_files(tmp_path):
    for world in ("toy", "real"):
        (tmp_path / world).mkdir()
        shutil.copy(APPS_DIR / "toy" / "concept.yaml", tmp_path / world / "concept.yaml")
    with pytest.raises(SpecError, match=r"toy/concept.yaml: application name 'toy-concept' is also used by .*real"):
        load_apps([tmp_path])


def test_a_users_folder_adds_applications(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text(
        "name: mine\nversion: 1\nworld: toy\njudge: toy\nerase: [[Barkley]]\nseeds: [0]\n"
        "prompts:\n  target: {concepts: '{targets}', templates: ['{}']}\n"
    )
    monkeypatch.setenv("SPMBENCH_APPS", str(tmp_path))
    result = CliRunner().invoke(app, ["ls", "apps"])
    assert result.exit_code == 0 and "mine             v1 toy   erase Barkley" in result.output
    assert SHIPPED <= {line.split()[0] for line in result.output.splitlines()}
    shutil.copy(APPS_DIR / "toy" / "object.yaml", tmp_path / "object.yaml")
    result = CliRunner().invoke(app, ["ls", "apps"])
    assert result.exit_code == 2 and "object.yaml: application name 'toy-object' is also used by" in result.output


def _app(prompts=None, **fields):
    data = {"name": "x", "version": 1, "world": "toy", "judge": "toy", "erase": [["a"]], "seeds": [0]}
    return {**data, "prompts": prompts or {"target": {"concepts": ["a"], "templates": ["{}"]}}, **fields}


@pytest.mark.parametrize(
    "data, message",
    [
        (_app({"near": {"concepts": ["a"], "templates": ["{}"]}}), "need a 'target' set"),
        (_app({"target": {"concepts": "{targetz}", "templates": ["{}"]}}), "must be a list or the string"),
        (_app({"target": {"concepts": ["a"], "templates": []}}), "non-empty list of strings"),
        (_app({"target": {"concepts": ["a"]}}), r"templates must be a non-empty list .*or give a 'file'"),
        (_app({"target": {"concepts": ["a"], "templates": ["{}"], "file": "x.csv"}}), "'file' or 'templates', not"),
        (_app({"target": {"concepts": ["a"], "templets": ["{}"]}}), r"unknown field\(s\) \['prompts.target.templets'"),
        (_app({"target": {"concepts": ["a"], "templates": "{}"}}), r"prompts.target.templates must be a list of text"),
        (_app({"target": ["a"]}), "x.yaml: prompts.target must be a mapping of fields, got list"),
        (
            _app({"target": {"concepts": ["a"], "templates": ["a red {0} {1}"]}}),
            r"x.yaml: prompts.target: template 'a red \{0\} \{1\}' must hold exactly one \{\}",
        ),
        (_app({"target": {"concepts": ["a"], "templates": ["{shape}"]}}), r"'\{shape\}' must hold exactly one \{\}"),
        (_app({"target": {"concepts": ["a"], "templates": ["{} and {}"]}}), r"'\{\} and \{\}' must hold exactly one"),
        (_app({"target": {"concepts": ["a"], "templates": ["a {"]}}), r"template 'a \{': Single '\{'"),
        (_app({"target": {"concepts": ["a", "b"], "templates": ["a dog"]}}), "'a dog' must hold .* several concepts"),
        (_app({"target": {"concepts": "{targets}", "templates": ["a dog"]}}), "'a dog' must hold .* several concepts"),
        (_app(world="mars"), "world 'mars' is not one of toy, real"),
        (_app(erase=[["a"], []]), "'erase' must be a list of non-empty lists"),
        (_app(erase=["a"]), r"erase must be a list of lists of text, got \['a'\]"),
        (_app(seeds=[]), "'seeds' must be a non-empty list of integers"),
        (_app(seeds=[0, "1"]), "seeds must be a list of whole numbers"),
        (_app(version="2"), "version must be a whole number, got '2'"),
        (_app(colour="red"), r"unknown field\(s\) \['colour'\]"),
        (_app(eraser_settings={"uce": "art"}), "eraser_settings must be a mapping of text to mappings"),
    ],
)
def test_bad_application_files_say_what_is_wrong(data, message):
    with pytest.raises(SpecError, match=message):
        parse_app(data, "x.yaml")


def test_a_template_without_a_concept_is_fine_for_a_single_concept():
    data = _app({"target": {"concepts": ["nudity"], "templates": ["a nude figure", "{}"]}})
    assert len(parse_app(data, "x.yaml").rows(("a",))) == 2


def test_a_wheel_ships_every_spec_and_lists_the_same_applications(tmp_path):
    """Built from a copy of the sources (the checkout is shared); not installed: read from the unpacked wheel."""
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "checkpoints", "*.egg-info")
    for name in ("spm", "spmbench"):
        shutil.copytree(root / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = root / "spmbench"
    shipped = [
        *spec_files(package / "apps"),
        *spec_files(package / "models"),
        *spec_files(package / "erasers/released"),
    ]
    assert len(shipped) >= 17 and {str(p.relative_to(root)) for p in shipped} <= names
    zipfile.ZipFile(wheel).extractall(tmp_path / "unpacked")
    script = "import spmbench.apps as a; print(a.__file__); print(*a.load_apps().names())"
    listed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(tmp_path / "unpacked"), "PATH": ""}).stdout.splitlines()  # fmt: skip
    assert listed[0].startswith(str(tmp_path / "unpacked")) and set(listed[1].split()) == SHIPPED
