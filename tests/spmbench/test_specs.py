"""The one spec loader: fields, types, names and YAML errors, for every kind of spec."""

from dataclasses import FrozenInstanceError, dataclass, field

import pytest
import yaml

from spmbench.registry import Registry
from spmbench.specs import SpecError, SpecKind, build, load


@dataclass(frozen=True)
class Thing:
    name: str
    size: int
    tags: tuple[str, ...] = ()
    scale: float = 1.0
    parent: str | None = None
    settings: dict[str, dict] = field(default_factory=dict)
    origin: str = ""


def parse_thing(data, origin):
    return build(Thing, data, origin, origin=origin)


def kind(tmp_path, env="SPMBENCH_THINGS"):
    (tmp_path / "shipped").mkdir(exist_ok=True)
    return SpecKind("thing", tmp_path / "shipped", env, parse_thing)


def test_fields_are_checked_into_a_frozen_dataclass(tmp_path):
    (tmp_path / "shipped" / "world").mkdir(parents=True)
    (tmp_path / "shipped" / "world" / "a.yaml").write_text("name: a\nsize: 2\ntags: [x, y]\nscale: 3\n")
    (tmp_path / "shipped" / "b.yml").write_text("name: b\nsize: 1\nsettings: {spm: {lr: 0.1}}\nparent: a\n")
    (tmp_path / "shipped" / "notes.md").write_text("not a spec")
    things = load(kind(tmp_path))
    assert things.names() == ["a", "b"]  # subfolders one level down (e.g. one per world) are read too
    a = things.get("a")
    assert (a.tags, a.scale, a.origin) == (("x", "y"), 3, str(tmp_path / "shipped" / "world" / "a.yaml"))
    assert things.get("b").settings == {"spm": {"lr": 0.1}}
    with pytest.raises(FrozenInstanceError):
        a.size = 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsize: 1\ncolour: red\n", r"x.yaml: unknown field\(s\) \['colour'\]; allowed: \['name', 'parent'"),
        ("name: x\n", r"x.yaml: missing field\(s\) \['size'\]$"),
        ("name: x\nsize: big\n", "x.yaml: size must be a whole number, got 'big'$"),
        ("name: x\nsize: true\n", "size must be a whole number, got True"),  # YAML's booleans are no numbers
        ("name: x\nsize: 1\nscale: x\n", "scale must be a number, got 'x'"),
        ("name: 5\nsize: 1\n", "name must be text, got 5"),
        ("name: x\nsize: 1\nparent: 3\n", "parent must be text or null, got 3"),
        ("name: x\nsize: 1\ntags: x\n", "tags must be a list of text, got 'x'"),
        ("name: x\nsize: 1\ntags: [x, 1]\n", r"tags must be a list of text, got \['x', 1\]"),
        ("name: x\nsize: 1\nsettings: {spm: 1}\n", "settings must be a mapping of text to mappings"),
        ("- name: x\n", r"x.yaml: expected a mapping of fields, got list"),
        ("", r"x.yaml: expected a mapping of fields, got NoneType"),
        ("name: [x\n", r"x.yaml:2:1: not valid YAML: expected ',' or '\]', but got '<stream end>'$"),
        ("name: x\n\tsize: 1\n", r"x.yaml:2:1: not valid YAML: found character '\\t'"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, text, message):
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "x.yaml").write_text(text)
    with pytest.raises(SpecError, match=message) as error:
        load(kind(tmp_path))
    assert "\n" not in str(error.value)


def test_a_name_used_twice_names_both_files(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{folder}.yaml").write_text("name: same\nsize: 1\n")
    with pytest.raises(SpecError, match=r"b/b.yaml: thing name 'same' is also used by .*a/a.yaml$"):
        load(kind(tmp_path), [tmp_path / "a", tmp_path / "b"])
    assert load(kind(tmp_path), [tmp_path / "a", tmp_path / "a"]).names() == ["same"]  # a folder named twice


def test_the_environment_variable_adds_folders(tmp_path, monkeypatch):
    things = kind(tmp_path)
    for folder in ("mine", "theirs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{folder}.yaml").write_text(f"name: {folder}\nsize: 1\n")
    (tmp_path / "shipped" / "base.yaml").write_text("name: base\nsize: 1\n")
    assert load(things).names() == ["base"]
    monkeypatch.setenv("SPMBENCH_THINGS", f"{tmp_path / 'mine'}:{tmp_path / 'theirs'}")
    assert load(things).names() == ["base", "mine", "theirs"]
    monkeypatch.setenv("SPMBENCH_THINGS", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match=r"SPMBENCH_THINGS: .*nowhere is not a folder \(give folders of thing"):
        load(things)


@pytest.mark.parametrize(
    "env, text",
    [
        ("SPMBENCH_MODELS", "name: mine\nsource: org/mine\nfamily: sd1\nworld: real\n"),
        ("SPMBENCH_APPS", "name: mine\nversion: 1\nworld: toy\njudge: toy\nerase: [[Barkley]]\nseeds: [0]\n"
                          "prompts:\n  target: {concepts: '{targets}', templates: ['{}']}\n"),
        ("SPMBENCH_ERASERS", "name: mine\ntargets: [nudity]\nunet: weights/unet\n"),
    ],
)  # fmt: skip
def test_each_kind_reads_its_users_folder_through_the_loader(tmp_path, monkeypatch, env, text):
    from spmbench.apps import load_apps
    from spmbench.erasers.released import load_released
    from spmbench.models import load_models

    def names():
        loader = {"SPMBENCH_MODELS": load_models, "SPMBENCH_APPS": load_apps, "SPMBENCH_ERASERS": load_released}[env]
        return [spec.name for spec in loader()]

    (tmp_path / "mine.yaml").write_text(text)
    assert "mine" not in names()
    monkeypatch.setenv(env, str(tmp_path))
    assert "mine" in names()
    (tmp_path / "mine.yaml").write_text(text + "colour: red\n")
    with pytest.raises(SpecError, match=r"mine.yaml: unknown field\(s\) \['colour'\]"):
        names()


def _released_spec() -> dict:
    return {"name": "esd-snoopy", "unet": "../weights/unet", "text_encoder": None, "targets": ["Snoopy"], "note": "x"}


def _fuzz_specs():
    from spmbench.apps import APPS_DIR, load_apps
    from spmbench.erasers.released import load_released
    from spmbench.models import MODELS_DIR, load_models

    yield "toy-base.yaml", yaml.safe_load((MODELS_DIR / "toy-base.yaml").read_text()), load_models
    for app in ("object", "explicit"):
        yield f"{app}.yaml", yaml.safe_load((APPS_DIR / "toy" / f"{app}.yaml").read_text()), load_apps
    yield "esd-snoopy.yaml", _released_spec(), lambda folders: load_released(folders, Registry("eraser"))


@pytest.mark.parametrize("index", range(4))
def test_fuzzed_spec_files_load_or_are_one_line_spec_errors(index, tmp_path):
    """Models, applications and released erasers: every mutant of a shipped file (its YAML values, then
    its bytes) loads, or is a SpecError naming the file in one line."""
    from tests.fuzz import byte_mutants, value_mutants

    name, document, load_kind = list(_fuzz_specs())[index]
    path = tmp_path / name
    texts = [yaml.safe_dump(m) for m in value_mutants(document, 200)]
    texts += list(byte_mutants(yaml.safe_dump(document).encode(), 200))
    for text in texts:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            load_kind([tmp_path])
        except SpecError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)
