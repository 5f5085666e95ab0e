"""Protocol v3's dev split and equal tuning budgets: the spec checks, the rule, `spmbench tune` end to end."""

import copy
import json
import logging
import re

import pytest
import yaml
from typer.testing import CliRunner

from spmbench import report, tuning
from spmbench.apps import load_apps, parse_app
from spmbench.cli import app as cli
from spmbench.specs import SpecError


APP = {
    "name": "toy-tuned",
    "version": 1,
    "world": "toy",
    "judge": "toy",
    "erase": [["star"]],
    "prompts": {
        "target": {"concepts": "{targets}", "templates": ["a red {} on a white background", "a blue {}"]},
        "near": {"concepts": ["circle", "square"], "templates": ["a red {} on a white background"]},
        "far": {"concepts": ["cat"], "templates": ["a picture of {}"]},
    },
    "seeds": [0, 1],
    "dev": {
        "seeds": [100],
        "prompts": {
            "target": {"templates": ["a {} coloured green, gray background"]},
            "near": {"concepts": ["triangle"], "templates": ["a {} coloured green, gray background"]},
        },
    },
    "tuning": {
        "grids": {
            "spm": [{"iterations": 1}, {"iterations": 2}],
            "esd-x": [{"iterations": 1}, {"iterations": 2}],
        }
    },
}


def with_change(path: str, value):
    data = copy.deepcopy(APP)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def test_the_dev_split_shares_no_prompt_template_or_seed_with_test():
    test = parse_app(APP, "app.yaml")
    dev = test.for_split("dev")
    assert dev.split == "dev" and test.for_split("test") is test and dev.seeds == (100,)
    test_rows, dev_rows = test.rows(("star",)), dev.rows(("star",))
    assert {r.set for r in dev_rows} == {"target", "near"}  # sets dev does not name are not in dev
    assert not {r.prompt for r in test_rows} & {r.prompt for r in dev_rows}
    assert not {r.prompt_id for r in test_rows} & {r.prompt_id for r in dev_rows}
    assert {r.concept for r in dev_rows if r.set == "near"} == {"triangle"}
    assert {r.concept for r in dev_rows if r.set == "target"} == {"star"}
    assert dev.grids == test.grids and dev.dev is None


def test_the_record_an_application_takes_from_another_is_copied_to_that_ones_folder(tmp_path):
    apps, reports, elsewhere = inheriting(tmp_path), tmp_path / "reports", tmp_path / "elsewhere"
    tuning.copy_record(apps.get("toy-inherits"), reports, elsewhere, applied=False)  # no record: nothing to copy
    assert not elsewhere.exists()
    write_record(reports)
    tuning.copy_record(apps.get("toy-inherits"), reports, elsewhere, applied=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["toy-tuned"]
    for name in ("tuning.json", "tuning.md"):
        assert (elsewhere / "toy-tuned" / name).read_text() == (reports / "toy-tuned" / name).read_text()
    assert tuning.apply_record(apps.get("toy-inherits"), elsewhere / "toy-inherits").tuned == CHOSEN
    tuning.copy_record(apps.get("toy-inherits"), reports, elsewhere, applied=False)  # stale now: its copy goes
    assert list((elsewhere / "toy-tuned").iterdir()) == []


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("dev.seeds", [1, 100], r"dev.seeds \[1\] are also test seeds"),
        ("dev.seeds", [], "dev.seeds must be a non-empty list"),
        (
            "dev.prompts.target.templates",
            ["a blue {}"],
            r"dev template\(s\) \['a blue \{\}'\] are also test templates",
        ),
        ("dev.prompts.middle", {"templates": ["{}"]}, r"names set\(s\) \['middle'\]"),
        ("dev.prompts.target.concepts", ["circle"], "an erasure set measures the erased targets"),
        ("dev.prompts.near.concepts", ["circle", "ring"], r"share \['circle'\] with test"),
        ("dev.prompts.near.templates", ["{} and {}"], "must hold exactly one {}"),
        ("dev.extra", 1, r"unknown field\(s\) \['dev.extra'\]"),
        ("tuning.grids.esd-x", [{"iterations": 1}], "the sizes differ"),
        ("tuning.grids.esd-x", [{"iterations": i} for i in range(7)], "1 to 6 settings"),
        ("tuning.grids.spm", [{"iterations": 1}, {"iterations": 1}], "lists a setting twice"),
    ],
)
def test_a_bad_dev_block_or_grid_is_a_one_line_error(path, value, message):
    with pytest.raises(SpecError, match=message) as e:
        parse_app(with_change(path, value), "app.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("app.yaml: ")


def test_without_a_dev_block_tuning_says_what_to_add():
    data = copy.deepcopy(APP)
    del data["dev"]
    with pytest.raises(ValueError, match="has no dev split: add a 'dev' block to app.yaml"):
        parse_app(data, "app.yaml").for_split("dev")
    data = copy.deepcopy(APP)
    del data["dev"]["prompts"]["target"]
    with pytest.raises(SpecError, match="dev.prompts needs a 'target' set"):
        parse_app(data, "app.yaml")


def point(target, near, original_target=0.8, original_near=1.0, name="p"):
    return tuning.Point(name, {}, target, original_target, near, original_near)


def test_the_rule_prefers_retention_among_erased_settings_else_the_lowest_target():
    # erased means at most 10 % of the original's target rate (0.08 here)
    assert tuning.choose([point(0.0, 0.5), point(0.08, 0.9), point(0.2, 1.0)]) == 1
    assert tuning.choose([point(0.5, 1.0), point(0.3, 0.2), point(0.4, 0.9)]) == 1  # none erased
    assert tuning.choose([point(0.05, 0.9), point(0.0, 0.9)]) == 1  # equal retention: lower target
    assert tuning.choose([point(0.0, 0.9), point(0.0, 0.9)]) == 0  # a full tie: the earlier point
    # retention is relative to the original's near rate
    assert tuning.choose([point(0.0, 0.5, original_near=0.5), point(0.0, 0.6, original_near=1.0)]) == 0
    # no erosion set (real-explicit): retention is undefined, so the lower target rate decides, erased or not
    nan = float("nan")
    assert tuning.choose([point(0.05, nan), point(0.0, nan), point(0.01, nan)]) == 1


def test_a_grid_is_needed_for_every_eraser_with_settings():
    app = parse_app(APP, "app.yaml")
    by_key = tuning.grids(app, ["none", "spm", "spm-noft", "negprompt", "esd-x"])
    assert list(by_key) == ["spm", "esd-x"] and all(len(v) == 2 for v in by_key.values())
    assert all(name.startswith("spm~") for name in by_key["spm"])  # spm decides for spm-noft (one fit)
    with pytest.raises(ValueError, match=r"gives no tuning.grids.ca: add one with 2 settings"):
        tuning.grids(app, ["ca"])
    untuned = parse_app({k: v for k, v in APP.items() if k != "tuning"}, "app.yaml")  # as real-explicit
    with pytest.raises(ValueError, match=r"toy-tuned has no tuning grids \(app.yaml says why\): its erasers run with"):
        tuning.grids(untuned, ["spm"])


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def tuned_app(toy_weights, tmp_path, monkeypatch):
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "toy-tuned.yaml").write_text(yaml.safe_dump(APP))
    monkeypatch.setenv("SPMBENCH_APPS", str(folder))
    return folder / "toy-tuned.yaml"


def test_tune_chooses_on_dev_and_run_applies_the_choice_on_test(tuned_app, tmp_path, caplog):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    result = invoke("tune", "--app", "toy-tuned", "--models", "toy", "--erasers", "none,spm,spm-noft,esd-x",
                    "--out", runs, "--reports", reports)  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((reports / "toy-tuned" / "tuning.json").read_text())
    assert set(record["points"]) == {"toy-base"}  # tuned on the family root only: derivatives reuse its fits
    made_with = json.loads((runs / "toy-tuned" / "dev" / "models.json").read_text())["toy-base"]
    assert record["weights"] == {"toy-base": made_with} and made_with.startswith("sha256:")
    dev_cells = runs / "toy-tuned" / "dev" / "cells" / "toy-base"
    assert sorted(p.name.split("~")[0] for p in dev_cells.iterdir()) == ["esd-x", "esd-x", "none", "spm", "spm"]
    for key, points in record["points"]["toy-base"].items():
        assert [p["overrides"] for p in points] == APP["tuning"]["grids"][key]
        dev_points = [tuning.Point(*(p[f] for f in tuning.Point.__dataclass_fields__)) for p in points]
        chosen = tuning.choose(dev_points)
        assert points[chosen].get("chosen") and record["chosen"]["toy-base"][key] == points[chosen]["overrides"]
        assert all(r["n"] > 0 and r["lo"] <= r["value"] <= r["hi"] for p in points for r in p["rates"])
        stored = json.loads((dev_cells / points[0]["eraser"] / "star" / "result.json").read_text())
        assert stored["settings"]["split"] == "dev" and stored["settings"]["seeds"] == [100]
        dev_ids = {r.prompt_id for r in parse_app(APP, "x").for_split("dev").rows(("star",))}
        scores = dev_cells / points[0]["eraser"] / "star" / "scores.jsonl"
        assert {json.loads(line)["prompt_id"] for line in scores.open()} == dev_ids
    assert "Rule: among the settings" in (reports / "toy-tuned" / "tuning.md").read_text()
    assert invoke("tune", "--app", "toy-tuned", "--models", "toy", "--erasers", "none,spm,esd-x",
                  "--out", runs, "--reports", tmp_path / "again").exit_code == 0  # fmt: skip
    assert (tmp_path / "again" / "toy-tuned" / "tuning.json").read_text() == json.dumps(record, indent=1)

    result = invoke("run", "--app", "toy-tuned", "--models", "toy-base", "--erasers", "none,spm,esd-x",
                    "--out", runs, "--reports", reports)  # fmt: skip
    assert result.exit_code == 0, result.output
    for eraser in ("spm", "esd-x"):
        stored = json.loads((runs / "toy-tuned" / "cells" / "toy-base" / eraser / "star" / "result.json").read_text())
        assert stored["settings"]["fit"]["iterations"] == record["chosen"]["toy-base"][eraser]["iterations"]
        assert "split" not in stored["settings"] and set(stored["settings"]["seeds"]) == {0, 1}
    assert "chosen on the dev split" in (reports / "toy-tuned" / "toy-tuned.md").read_text()
    plot = (reports / "toy-tuned" / "toy-tuned_tuning.svg").read_text()
    assert plot.count("<polyline") == 2 and plot.count("<circle") == 4 and plot.count('stroke-width="2"') == 2
    test = report.results(runs / "toy-tuned")
    shown = [report._test_point(test, "toy-base", e) for e in ("spm", "esd-x")]
    assert plot.count("<rect x=") == sum(p is not None for p in shown)  # the chosen settings' test results

    # tables written elsewhere read the record where it is (--tuning) and carry a copy of it
    elsewhere = tmp_path / "elsewhere"
    result = invoke("run", "--app", "toy-tuned", "--models", "toy-base", "--erasers", "none,spm,esd-x",
                    "--out", runs, "--reports", elsewhere, "--tuning", reports)  # fmt: skip
    assert result.exit_code == 0 and "no tuning record" not in result.output, result.output
    assert (elsewhere / "toy-tuned" / "tuning.json").read_text() == (reports / "toy-tuned" / "tuning.json").read_text()
    assert "chosen on the dev split" in (elsewhere / "toy-tuned" / "toy-tuned.md").read_text()
    refused = invoke("run", "--app", "toy-tuned", "--models", "toy-base", "--out", runs, "--reports", elsewhere,
                     "--tuning", tmp_path / "no-such-reports")  # fmt: skip
    assert refused.exit_code != 0 and "--tuning" in refused.output and "not a folder" in refused.output

    (tuned_app).write_text(yaml.safe_dump(with_change("version", 2)))  # the record is for version 1
    with caplog.at_level(logging.WARNING):
        assert tuning.apply_record(parse_app(with_change("version", 2), "x"), reports / "toy-tuned").tuned == {}
    assert "made for another version or grid" in caplog.text
    (reports / "toy-tuned" / "tuning.json").write_text("{")
    with pytest.raises(ValueError, match="not a tuning record .*rerun `spmbench tune --app toy-tuned`"):
        tuning.apply_record(parse_app(APP, "x"), reports / "toy-tuned")


def test_the_dry_run_prices_the_cells_and_fits_tune_makes_and_writes_nothing(tuned_app, tmp_path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    selection = ["--app", "toy-tuned", "--models", "toy", "--erasers", "none,esd-x", "--limit", 1,
                 "--out", runs, "--reports", reports]  # fmt: skip
    result = invoke("tune", *selection, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not runs.exists() and not reports.exists()
    planned = re.findall(r"\n  toy-base +cells (\d+), images (\d+), fits (\d+): ", result.output)
    assert "toy-tuned: grid points per settings key: esd-x 2" in result.output and "total: cells 3," in result.output
    assert invoke("tune", *selection).exit_code == 0
    dev = runs / "toy-tuned" / "dev"
    cells, images = list(dev.glob("cells/*/*/*/result.json")), list(dev.glob("cells/*/*/*/images/*.png"))
    recorded = json.loads((dev / "fits" / "toy-base" / "fit_seconds.json").read_text())  # one entry per fit made
    fits = [key for key in recorded if not key.startswith("none|")]  # 'none' is recorded too, fitting nothing
    assert planned == [(str(len(cells)), str(len(images)), str(len(fits)))] == [("3", "6", "2")]


def test_an_application_with_grids_but_no_record_warns_that_its_erasers_run_untuned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert tuning.apply_record(parse_app(APP, "x"), tmp_path).tuned == {}
    assert "toy-tuned has no tuning record" in caplog.text and "spmbench tune --app toy-tuned" in caplog.text
    caplog.clear()
    untuned = {k: v for k, v in APP.items() if k != "tuning"}
    with caplog.at_level(logging.WARNING):
        tuning.apply_record(parse_app(untuned, "x"), tmp_path)
    assert caplog.text == ""
    # a real application's defaults are each eraser's published setting (protocol v3): said, not warned
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert tuning.apply_record(parse_app(APP | {"world": "real"}, "x"), tmp_path).tuned == {}
    assert [r.levelno for r in caplog.records] == [logging.INFO] and "its paper's setting" in caplog.text


# ---- an application that takes another's tuning (`tuning: {from: ...}`, as toy3-many takes toy3-concept's) ----

CHOSEN = {"toy-base": {"spm": {"iterations": 2}, "esd-x": {"iterations": 1}}}


def inheriting(tmp_path, source=APP):
    """load_apps over APP (toy-tuned) and toy-inherits, which erases two targets with toy-tuned's settings."""
    folder = tmp_path / "apps"
    folder.mkdir(exist_ok=True)
    inherits = {k: v for k, v in APP.items() if k not in ("dev", "tuning")}
    inherits |= {"name": "toy-inherits", "erase": [["star"], ["star", "cross"]], "tuning": {"from": "toy-tuned"}}
    (folder / "toy-tuned.yaml").write_text(yaml.safe_dump(source))
    (folder / "toy-inherits.yaml").write_text(yaml.safe_dump(inherits))
    return load_apps([folder])


def write_record(reports, app_version=1, grids=APP["tuning"]["grids"], weights=None):
    record = {"app": "toy-tuned", "app_version": app_version, "rule": tuning.RULE, "grids": grids, "points": {}}
    return tuning.write({**record, "weights": weights or {}, "chosen": CHOSEN}, reports / "toy-tuned")


def test_a_record_made_on_other_weights_than_the_model_holds_now_is_not_applied(tmp_path, caplog):
    from spmbench.model_identity import weights_identity
    from spmbench.models import load_models

    apps, reports, models = inheriting(tmp_path), tmp_path / "reports", load_models()
    now = weights_identity(models.get("toy-base").resolve())
    write_record(reports, weights={"toy-base": now, "no-longer-registered": "sha256:0"})
    with caplog.at_level(logging.WARNING):
        assert tuning.apply_record(apps.get("toy-tuned"), reports / "toy-tuned", models).tuned == CHOSEN
    assert caplog.text == "" and f"Weights: toy-base {now}" in (reports / "toy-tuned" / "tuning.md").read_text()
    write_record(reports, weights={"toy-base": "sha256:retrained"})  # e.g. a toy world retrained since
    for name in ("toy-tuned", "toy-inherits"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert tuning.apply_record(apps.get(name), reports / name, models).tuned == {}
        assert "tuned on other weights of toy-base than it holds now" in caplog.text
        assert "rerun `spmbench tune --app toy-tuned`" in caplog.text


def test_an_application_tuned_from_another_applies_that_ones_record_as_its_own(tmp_path, caplog):
    from spmbench import runner
    from spmbench.erasers import ERASERS
    from spmbench.models import load_models

    apps, reports, root = inheriting(tmp_path), tmp_path / "reports", load_models().get("toy-base")
    write_record(reports)
    with caplog.at_level(logging.WARNING):
        inherits = tuning.apply_record(apps.get("toy-inherits"), reports / "toy-inherits")
        own = tuning.apply_record(apps.get("toy-tuned"), reports / "toy-tuned")
    assert caplog.text == "" and inherits.tuned == own.tuned == CHOSEN
    assert not (reports / "toy-inherits").exists()  # read beside it, nothing written
    for name in ("spm", "esd-x"):
        applied = runner.eraser_settings(ERASERS.get(name), inherits, root)
        assert applied == runner.eraser_settings(ERASERS.get(name), own, root)
        assert applied["iterations"] == CHOSEN["toy-base"][name]["iterations"]
    caption = report._tuning_note(inherits)
    assert "chosen on toy-tuned's dev split (../toy-tuned/tuning.md), not retuned here" in caption
    note = "; fitting settings of esd-x, spm chosen on the dev split (tuning.md beside this table)"
    assert report._tuning_note(own) == note  # the keys tuned (`tune --erasers` may tune some only)


@pytest.mark.parametrize(
    "record, source",
    [
        ({"app_version": 1}, with_change("version", 2)),  # the source's version moved on
        ({"grids": {"spm": [{"iterations": 3}]}}, APP),  # made for another grid of the source
    ],
)
def test_a_stale_record_of_the_source_is_not_applied(tmp_path, caplog, record, source):
    apps, reports = inheriting(tmp_path, source), tmp_path / "reports"
    write_record(reports, **record)
    with caplog.at_level(logging.WARNING):
        assert tuning.apply_record(apps.get("toy-inherits"), reports / "toy-inherits").tuned == {}
    assert "made for another version or grid of toy-tuned: not applied to toy-inherits" in caplog.text
    assert "rerun `spmbench tune --app toy-tuned`" in caplog.text


def test_without_the_sources_record_the_warning_names_the_application_to_tune(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert tuning.apply_record(inheriting(tmp_path).get("toy-inherits"), tmp_path / "toy-inherits").tuned == {}
    assert "toy-inherits takes its settings from toy-tuned, which has no tuning record" in caplog.text
    assert "run `spmbench tune --app toy-tuned` first" in caplog.text
    unlinked = parse_app({**APP, "tuning": {"from": "toy-tuned"}}, "x.yaml")  # parsed alone: not linked
    with pytest.raises(ValueError, match="x.yaml: tuning.from 'toy-tuned' is not linked"):
        tuning.apply_record(unlinked, tmp_path)


def test_tune_refuses_an_application_that_takes_another_ones_tuning_and_all_skips_it(tmp_path, monkeypatch):
    inheriting(tmp_path)
    monkeypatch.setenv("SPMBENCH_APPS", str(tmp_path / "apps"))
    result = invoke("tune", "--app", "toy-inherits", "--models", "toy-base", "--dry-run")
    assert result.exit_code == 2
    assert result.output == (
        "error: toy-inherits takes its settings from toy-tuned's tuning: run spmbench tune --app toy-tuned\n"
    )
    with pytest.raises(ValueError, match="toy-inherits takes its settings from toy-tuned's tuning"):
        tuning.plan(load_apps([tmp_path / "apps"]).get("toy-inherits"), [], ["spm"], tmp_path)
    result = invoke("tune", "--app", "all", "--models", "toy-base", "--erasers", "esd-x", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "toy-tuned: grid points per settings key: esd-x 2" in result.output and "toy-inherits" not in result.output
