"""The results frame and the tables rendered from it, on run folders built by hand with known counts
(the runner's end-to-end test covers the files a real run writes)."""

import csv
import dataclasses
import io
import json

import pandas as pd
import pytest
import torch

import spmbench
from spmbench import report, stats
from spmbench.metrics import ALTERATION_FEATURES_FILE, frechet_distance, paired_distance, save_alteration_features
from spmbench.report import NO_INTERVAL, csv_text, load_results, markdown, table_rows
from spmbench.result import Result


def result(
    eraser, rates, alteration=None, original_rates=None, targets=("Barkley",), app="toy-concept", limit=None, version=2
):
    return Result(
        app=app, app_version=version, model="toy-base", fitted_on="toy-base", eraser=eraser, targets=targets,
        rows=2, rates=rates, original_rates=original_rates or {"target": 1.0, "near": 0.8}, alteration=alteration,
        alteration_features="toy judge", fit_seconds=61.2, fit_peak_mib=None, generate_seconds_this_run=1.0,
        settings={"limit": limit},
    )  # fmt: skip


MINI = """name: mini
version: 1
world: toy
judge: {judge}
erase: [[Barkley]]
prompts:
  target: {{concepts: "{{targets}}", templates: [{templates}]}}
  near: {{concepts: [Juno], templates: [{templates}]}}
seeds: {seeds}
"""
TEMPLATES = ", ".join(f"'{{}} {i}'" for i in range(10))  # 10 prompts per set


def write_run(
    tmp_path, monkeypatch, verdicts: dict, seeds=(0,), features: dict | None = None, version=1, alteration=None,
    judge="toy", clip_scores: dict | None = None,
):  # fmt: skip
    """A run folder of the 'mini' application (10 prompts per set, `seeds`): per eraser, per set, the
    judge's verdict on each image in row order; `features`: per eraser, (erased, original) features
    of the near rows, whose alteration result.json stores (or `alteration`, where given); `version`:
    the application version the results claim; `clip_scores`: per eraser, per set, each image's CLIP score, kept
    in its record as the CLIP judge keeps it (`judge`: the application's). Returns the run folder and the app."""
    from spmbench.apps import load_apps
    from spmbench.result import cell_key

    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "mini.yaml").write_text(MINI.format(templates=TEMPLATES, seeds=list(seeds), judge=judge))
    monkeypatch.setenv("SPMBENCH_APPS", str(apps))
    app = load_apps().get("mini")
    rows = app.rows(("Barkley",))
    run_dir = tmp_path / "runs" / "mini"
    rate = {e: {s: sum(v) / len(v) for s, v in sets.items()} for e, sets in verdicts.items()}
    for eraser, sets in verdicts.items():
        cell = run_dir / "cells" / cell_key("toy-base", eraser, ("Barkley",))
        cell.mkdir(parents=True)
        lines = []
        for s, present in sets.items():
            ours = [r for r in rows if r.set == s]
            scores = (clip_scores or {}).get(eraser, {}).get(s, [None] * len(ours))
            lines += [
                json.dumps(
                    {"prompt_id": r.prompt_id, "set": s, "present": p} | ({} if c is None else {"clip_score": c})
                )
                for r, p, c in zip(ours, present, scores)
            ]
        (cell / "scores.jsonl").write_text("\n".join(lines) + "\n")
        measured = None
        if features and eraser in features:
            erased, original = features[eraser]
            near = [r.prompt_id for r in rows if r.set == "near"]
            save_alteration_features(cell / ALTERATION_FEATURES_FILE, near, erased, original)
            measured = alteration or {
                "paired_feature_distance": paired_distance(erased, original),
                "fid_judge_features": frechet_distance(erased, original),
            }
        stored = result(eraser, rate[eraser], measured, rate["none"], app="mini", version=version)
        stored.save(cell / "result.json")
    return run_dir, app


def test_a_cell_with_known_counts_shows_its_wilson_interval_and_n(tmp_path, monkeypatch):
    verdicts = {
        "none": {"target": [True] * 10, "near": [True] * 10},
        "spm": {"target": [True] + [False] * 9, "near": [True] * 9 + [False]},
        "esd-x": {"target": [True] * 10, "near": [True] * 8 + [False] * 2},
    }
    run_dir, app = write_run(tmp_path, monkeypatch, verdicts)
    table = spmbench.results(run_dir)
    spm = table[(table.eraser == "spm") & (table.measure == "target")].iloc[0]
    assert (spm.value, spm.n, spm.n_prompts, spm.interval) == (0.1, 10, 10, stats.WILSON)
    assert (spm.lo, spm.hi) == pytest.approx((0.0179, 0.4042), abs=1e-4)  # Wilson's 1 of 10, by hand
    assert (spm.original_value, spm.original_lo, spm.original_hi) == pytest.approx((1.0, *stats.wilson(10, 10)))
    text = markdown(app, table)
    assert "| target ↓ (n=10) | near ↑ (n=10) |" in text
    assert "| toy-base | Barkley | spm | toy-base | 10 % [2, 40] (100 %) | 90 % [60, 98] (100 %) |" in text
    # esd-x keeps the target in 10 of 10 images where SPM erased 9: a difference that holds (mark † for spm);
    # near: 8 of 10 against 9 of 10, one image apart: a tie (no mark)
    assert "| toy-base | Barkley | esd-x | toy-base | 100 % [72, 100] (100 %)† | 80 % [49, 94] (100 %) |" in text
    assert "† spm" in text and "unmarked: a tie" in text
    rows = {(r["eraser"], r["measure"]): r for r in csv.DictReader(io.StringIO(csv_text(table)))}
    spm_row = rows["spm", "target"]
    assert (spm_row["value"], spm_row["n"], spm_row["lo"], spm_row["hi"]) == ("0.1000", "10", "0.0179", "0.4042")
    esd = rows["esd-x", "target"]
    assert (esd["minus_spm"], esd["differs_from_spm"]) == ("0.9000", "True")
    assert (rows["esd-x", "near"]["differs_from_spm"], rows["spm", "near"]["differs_from_spm"]) == ("False", "")


def test_spm_variants_are_paired_with_each_other_as_an_ablation_table_needs(tmp_path, monkeypatch):
    verdicts = {
        "none": {"target": [True] * 10, "near": [True] * 10},
        "spm": {"target": [False] * 10, "near": [True] * 10},
        "spm-noft": {"target": [False] * 10, "near": [False] * 10},  # FT off: loses every near image
    }
    run_dir, app = write_run(tmp_path, monkeypatch, verdicts)
    table = spmbench.results(run_dir)
    near = table[table.measure == "near"].set_index("eraser")
    assert near.loc["spm-noft", "minus_spm"] == pytest.approx(-1.0) and bool(near.loc["spm-noft", "differs_from_spm"])
    assert near.loc["spm", "minus_spm_noft"] == pytest.approx(1.0) and bool(near.loc["spm", "differs_from_spm_noft"])
    assert pd.isna(near.loc["spm", "differs_from_spm"])  # not with itself
    text = markdown(app, table)  # † spm, ‡ spm-noft: each marked where it differs from the other
    assert "| toy-base | Barkley | spm-noft | toy-base | 0 % [0, 28] (100 %) | 0 % [0, 28] (100 %)† |" in text
    assert "| toy-base | Barkley | spm | toy-base | 0 % [0, 28] (100 %) | 100 % [72, 100] (100 %)‡ |" in text


def test_a_later_fit_seed_of_an_spm_variant_is_paired_with_the_same_seed_of_the_other(tmp_path, monkeypatch):
    verdicts = {
        "none": {"near": [True] * 10},
        "spm": {"near": [False] * 10},
        "spm~seed1": {"near": [True] * 10},
        "spm-noft": {"near": [False] * 10},
        "spm-noft~seed1": {"near": [True] * 10},  # the same fit as spm~seed1: FT off changes nothing here
        "spm-rel": {"near": [True] * 10},
    }
    table = spmbench.results(write_run(tmp_path, monkeypatch, verdicts)[0])
    near = table[table.measure == "near"].set_index("eraser")
    assert near.loc["spm-noft~seed1", "minus_spm"] == 0 and not near.loc["spm-noft~seed1", "differs_from_spm"]
    assert pd.isna(near.loc["spm-noft~seed1", "minus_spm_rel"])  # spm-rel has no seed 1 here: not another seed
    assert pd.isna(near.loc["spm~seed1", "minus_spm"])  # a variant's own later seed: its spread


def test_a_sixth_spm_variant_is_marked_by_its_number(tmp_path, monkeypatch):
    names = ["spm", "spm-a", "spm-b", "spm-c", "spm-d", "spm-e"]
    verdicts = {"none": {"near": [True] * 10}} | {e: {"near": [e != "spm-e"] * 10} for e in names}
    run_dir, app = write_run(tmp_path, monkeypatch, verdicts)
    table = spmbench.results(run_dir)
    assert [report.mark(i) for i in range(7)] == ["†", "‡", "§", "¶", "‖", "⁶", "⁷"]
    assert "⁶ spm-e" in markdown(app, table) and "100 % [72, 100] (100 %)⁶ |" in markdown(app, table)
    assert "$^{6}$" in report.latex(app, table)


def test_images_sharing_prompts_get_the_cluster_bootstrap(tmp_path, monkeypatch):
    two_seeds = [i < 6 for i in range(10) for _ in range(2)]  # 10 prompts x 2 seeds: 6 prompts present
    verdicts = {
        "none": {"target": [True] * 20, "near": [True] * 20},
        "spm": {"target": two_seeds, "near": [False] * 20},
    }
    run_dir, _ = write_run(tmp_path, monkeypatch, verdicts, seeds=(0, 1))
    table = spmbench.results(run_dir.parent)  # a folder of run folders works too
    by_measure = {row.measure: row for row in table.itertuples()}
    target, near = by_measure["target"], by_measure["near"]
    assert (target.n, target.n_prompts, target.interval) == (20, 10, stats.CLUSTER_BOOTSTRAP)
    assert target.lo < 0.6 < target.hi and target.hi - target.lo > 0.4  # wider than Wilson's on 20 images
    assert (near.interval, near.hi) == (stats.WILSON_OVER_PROMPTS, stats.wilson(0, 10)[1])


@pytest.mark.parametrize("judge", ["clip", "toy"])
def test_a_judges_per_image_score_is_a_mean_per_set_bootstrapped_over_prompts(tmp_path, monkeypatch, judge):
    """The CLIP judge's per-image CLIP score: per set, its mean over the images, clustered by prompt (10 prompts x 2
    seeds here), the original's beside it; a judge that declares no such measure (toy) gets no score column."""
    by_prompt = [0.5 + 0.1 * (i % 5) for i in range(10) for _ in range(2)]  # each prompt's two seeds agree
    verdicts = {
        "none": {"target": [True] * 20, "near": [True] * 20},
        "spm": {"target": [False] * 20, "near": [True] * 20},
    }
    scores = {"none": {"target": [2.0] * 20, "near": [2.5] * 20}, "spm": {"target": by_prompt, "near": [2.4] * 20}}
    run_dir, app = write_run(tmp_path, monkeypatch, verdicts, seeds=(0, 1), judge=judge, clip_scores=scores)
    table = report.frame(load_results(run_dir), run_dir, app)
    scored = {row.measure: row for row in table.itertuples() if row.unit == report.SCORE_UNIT}
    if judge == "toy":
        assert not scored and "CLIP score" not in markdown(app, table)
        return
    target, near = scored["clip_score:target"], scored["clip_score:near"]
    assert target.value == pytest.approx(sum(by_prompt) / 20) and target.original_value == 2.0
    assert (target.n, target.n_prompts, target.interval) == (20, 10, stats.CLUSTER_BOOTSTRAP)
    # the prompt bootstrap: what resampling the 10 prompts' means gives, wider than resampling the 20 images alone
    assert target.lo < target.value < target.hi
    alone = stats.mean_interval(by_prompt, list(range(20)))
    assert target.hi - target.lo > alone.hi - alone.lo
    assert (near.value, near.lo, near.hi, near.original_value) == pytest.approx((2.4, 2.4, 2.4, 2.5))
    assert not target.higher_is_better and near.higher_is_better  # the target's score should fall
    header, rows = table_rows(table)
    assert "CLIP score target ↓ (n=20)" in header and "CLIP score near ↑ (n=20)" in header
    assert rows[0][header.index("CLIP score target ↓ (n=20)")] == f"0.70 [{target.lo:.2f}, {target.hi:.2f}] (2.00)"
    assert "CLIP score target" in report.latex(app, table)


def test_alteration_intervals_come_from_the_stored_features(tmp_path, monkeypatch):
    original = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    moved = original + torch.tensor([1.0, 0.0, 0.0])  # every image moved by 1: distance 1, FID 1, on any resample
    verdicts = {
        "none": {"target": [True] * 10, "near": [True] * 10},
        "spm": {"target": [False] * 10, "near": [True] * 10},
    }
    run_dir, app = write_run(tmp_path, monkeypatch, verdicts, features={"spm": (moved, original)})
    table = spmbench.results(run_dir)
    fid = table[table.measure == "fid_judge_features"].iloc[0]
    assert (fid.lo, fid.hi, fid.n, fid.n_prompts) == (pytest.approx(1.0), pytest.approx(1.0), 10, 10)
    assert "| 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] | 61 | - |" in markdown(app, table)
    assert "paired dist. ↓ (n=10)" in markdown(app, table)


def test_alteration_features_that_do_not_give_the_stored_value_give_no_interval(tmp_path, monkeypatch, caplog):
    original = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    moved = original + torch.tensor([1.0, 0.0, 0.0])
    verdicts = {
        "none": {"target": [True] * 10, "near": [True] * 10},
        "spm": {"target": [False] * 10, "near": [True] * 10},
    }
    stale = {"paired_feature_distance": 1.0, "fid_judge_features": 2.0}  # the FID stored is not the features'
    run_dir, _ = write_run(tmp_path, monkeypatch, verdicts, features={"spm": (moved, original)}, alteration=stale)
    table = spmbench.results(run_dir)
    by_measure = {row.measure: row for row in table.itertuples()}
    fid, distance = by_measure["fid_judge_features"], by_measure["paired_feature_distance"]
    assert (fid.value, fid.interval) == (2.0, NO_INTERVAL) and fid.lo != fid.lo  # NaN
    assert distance.interval == stats.CLUSTER_BOOTSTRAP and distance.lo == pytest.approx(1.0)
    assert "the features give fid_judge_features" in caplog.text


def test_results_of_an_unregistered_or_other_version_of_the_app_have_values_and_no_intervals(
    tmp_path, monkeypatch, caplog
):
    verdicts = {
        "none": {"target": [True] * 10, "near": [True] * 10},
        "spm": {"target": [False] * 10, "near": [True] * 10},
    }
    run_dir, _ = write_run(tmp_path, monkeypatch, verdicts, version=7)  # 'mini' is version 1
    table = spmbench.results(run_dir)
    assert set(table["interval"]) <= {NO_INTERVAL, "single fit"} and table["value"].notna().all()
    assert caplog.text.count("the registered application is version 1") == 1
    monkeypatch.delenv("SPMBENCH_APPS")  # 'mini' is no longer registered: no error, no intervals
    table = spmbench.results(run_dir)
    assert set(table["interval"]) <= {NO_INTERVAL, "single fit"} and "'mini' is not registered" in caplog.text


def test_only_the_models_with_results_of_another_version_lose_their_intervals(tmp_path, monkeypatch, caplog):
    """A new version mid-record: one model recomputed, another's results still from the old version."""
    import shutil

    from spmbench.result import cell_key

    verdicts = {
        "none": {"target": [True] * 10, "near": [True] * 10},
        "spm": {"target": [False] * 10, "near": [True] * 10},
    }
    run_dir, _ = write_run(tmp_path, monkeypatch, verdicts)
    for eraser in verdicts:  # toy-pastel's copies of the cells, made from version 7
        shutil.copytree(run_dir / "cells" / cell_key("toy-base", eraser, ("Barkley",)), run_dir / "cells" / cell_key("toy-pastel", eraser, ("Barkley",)))  # fmt: skip
        path = run_dir / "cells" / cell_key("toy-pastel", eraser, ("Barkley",)) / "result.json"
        dataclasses.replace(Result.load(path), model="toy-pastel", fitted_on="toy-base", app_version=7).save(path)
    table = spmbench.results(run_dir)
    rates = table[table.unit == "fraction"]
    assert set(rates[rates.model == "toy-pastel"]["interval"]) == {NO_INTERVAL}
    assert NO_INTERVAL not in set(rates[rates.model == "toy-base"]["interval"]) and len(rates) == 4
    assert "results of toy-pastel made from version [7]" in caplog.text


def test_rows_from_results_alone_show_values_and_no_interval():
    untouched = {"paired_feature_distance": 0.0, "fid_judge_features": -3e-7}  # FID's rounding error
    header, rows = table_rows([result("none", {}), result("spm-rel", {"target": 0.0, "near": 0.8}, untouched)])
    assert header[4:6] == ["target ↓", "near ↑"]
    assert rows == [
        ["toy-base", "Barkley", "spm-rel", "toy-base", "0 % [-] (100 %)", "80 % [-] (80 %)", "0.000 [-]", "0.000 [-]"]
        + ["61", "-"]
    ]


def test_results_round_trip_and_a_foreign_file_is_named(tmp_path):
    stored = result("spm", {"target": 0.5})
    path = tmp_path / "cells" / "toy-base" / "spm" / "barkley" / "result.json"
    stored.save(path)
    assert load_results(tmp_path) == [stored]
    made_before = {k: v for k, v in json.loads(path.read_text()).items() if k != "alteration_intervals"}
    path.write_text(json.dumps(made_before))  # a field added with a default: read as that default
    assert Result.load(path) == stored and stored.alteration_intervals is None
    path.write_text(json.dumps({**made_before, "intervals_of_the_future": {}}))  # an unknown field: not misread
    assert Result.load(path) is None
    whole = {"value": 1.0, "lo": 0.5, "hi": 1.5, "n": 10, "n_prompts": 10, "method": "cluster bootstrap"}
    path.write_text(json.dumps({**made_before, "alteration_intervals": {"fid_judge_features": whole}}))
    assert Result.load(path).alteration_intervals == {"fid_judge_features": whole}
    for damaged in ({}, {**whole, "lo": "a"}, {**whole, "extra": 1}):  # refused (recomputed), not a crash in report
        path.write_text(json.dumps({**made_before, "alteration_intervals": {"fid_judge_features": damaged}}))
        assert Result.load(path) is None
    path.write_text('{"app": "toy-concept", "rates": {}}')  # an older schema: recomputed by a run, not read
    assert Result.load(path) is None
    with pytest.raises(ValueError, match=r"result.json: not a readable result of schema 1: rerun `spmbench run`"):
        load_results(tmp_path)


def test_the_csv_keeps_the_values_the_tables_always_gave():
    erased = result("spm", {"target": 0.0, "near": 1.0}, {"paired_feature_distance": 0.25, "fid_judge_features": 1.5})
    rows = list(csv.DictReader(io.StringIO(csv_text([result("none", {"target": 1.0}), erased]))))
    measures = {row["measure"]: (row["value"], row["original_value"]) for row in rows}
    assert measures == {
        "target": ("0.0000", "1.0000"),
        "near": ("1.0000", "0.8000"),
        "paired_feature_distance": ("0.2500", ""),
        "fid_judge_features": ("1.5000", ""),
        "fit_seconds": ("61.2", ""),
    }
    assert {"n", "n_prompts", "lo", "hi", "interval", "higher_is_better", "unit"} <= set(rows[0])
    old_columns = ["model", "targets", "eraser", "fitted_on", "measure", "value", "original_value"]
    assert list(rows[0])[:7] == old_columns  # readers by position keep working; new columns come after


def test_a_missing_results_folder_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="no results under .*: give a run folder"):
        spmbench.results(tmp_path)


def test_report_on_a_full_disk_is_one_line(tmp_path, disk_full_for):
    from typer.testing import CliRunner

    from spmbench.cli import app

    run_dir = tmp_path / "runs" / "toy-concept"
    result("spm", {"target": 0.0}).save(run_dir / "cells" / "toy-base" / "spm" / "barkley" / "result.json")
    disk_full_for(".md")
    out = CliRunner().invoke(app, ["report", str(run_dir), "--reports", str(tmp_path / "reports")])
    assert out.exit_code == 2 and "no space left" in out.output and "toy-concept.md" in out.output
    assert len(out.output.strip().splitlines()) == 1  # no traceback


def test_the_caption_names_each_alteration_measures_implementation(tmp_path, monkeypatch):
    """Real models: the caption names what FID, paired distance and LPIPS were computed by (the CLIP
    fallback said as such, versions from the results); LPIPS is a column, with its interval from the
    stored per-image values, only where measured; the toy world's caption and columns are as before."""
    from importlib.metadata import version

    from spmbench.apps import load_apps
    from spmbench.metrics import PER_IMAGE_FILE, save_per_image
    from spmbench.report import caption
    from spmbench.result import cell_key

    verdicts = {"none": {"target": [True] * 10, "near": [True] * 10}, "spm": {"target": [False] * 10, "near": [True] * 10}}  # fmt: skip
    original = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    run_dir, toy_app = write_run(tmp_path, monkeypatch, verdicts, features={"spm": (original + 1, original)})
    toy_table = spmbench.results(run_dir)
    assert "alteration measures" not in caption(toy_app, toy_table) and "LPIPS" not in markdown(toy_app, toy_table)
    assert "on judge features" in caption(toy_app, toy_table)

    (tmp_path / "apps" / "mini.yaml").write_text(
        MINI.format(templates=TEMPLATES, seeds=[0], judge="clip").replace("world: toy", "world: real")
    )
    real_app = load_apps().get("mini")
    spm_cell = run_dir / "cells" / cell_key("toy-base", "spm", ("Barkley",))
    stored = Result.load(spm_cell / "result.json")
    clip = "clip openai/clip-vit-base-patch32, template 'a photo of {}'"
    meta = {"packages": {"transformers": "4.99.1"}}
    with_meta = {**stored.__dict__, "alteration_features": clip, "meta": meta}
    Result(**with_meta).save(spm_cell / "result.json")
    text = caption(real_app, spmbench.results(run_dir))
    assert (
        "FID and paired dist. on clip openai/clip-vit-base-patch32 image features (transformers 4.99.1; fallback"
        in text
    )
    assert f"equal to torchmetrics {version('torchmetrics')} FrechetInceptionDistance on the same features" in text
    assert "no Inception FID and no LPIPS" in text

    inception = "inception-v3-compat 2048-D pool features, LPIPS alex (torchmetrics 1.9.0, torchvision 0.24.0, torch-fidelity 0.3.0)"  # fmt: skip
    lpips = torch.linspace(0.1, 0.3, 10, dtype=torch.float64)
    save_per_image(spm_cell / PER_IMAGE_FILE, {"lpips": lpips})
    alteration = {**stored.alteration, "lpips": float(lpips.mean())}
    Result(**{**with_meta, "alteration_features": inception, "alteration": alteration}).save(spm_cell / "result.json")
    table = spmbench.results(run_dir)
    text = caption(real_app, table)
    assert f"LearnedPerceptualImagePatchSimilarity) from {inception}" in text and "fallback" not in text
    row = table[table.measure == "lpips"].iloc[0]
    assert (row.value, row.n, row.interval) == (pytest.approx(0.2), 10, stats.CLUSTER_BOOTSTRAP)
    assert 0.1 < row.lo < 0.2 < row.hi < 0.3
    header, rows = table_rows(table)
    assert header[-3:] == ["LPIPS ↓ (n=10)", "fit (s)", "fit mem. (MiB)"] and rows[0][-3].startswith("0.200 [")


def test_the_caption_names_the_sampler_a_result_recorded_and_ddim_for_older_results():
    from spmbench.apps import load_apps
    from spmbench.report import caption

    app = load_apps().get("toy-concept")
    dpm = result("none", {"target": 1.0, "near": 0.8})
    dpm.settings.update(sampler="DPMSolverMultistepScheduler", steps=15)
    assert "; DPMSolverMultistep 15 steps, guidance" in caption(app, [dpm])
    older = result("none", {"target": 1.0, "near": 0.8})  # stored before the sampler was recorded
    older.settings.update(steps=30)
    assert "; DDIM 30 steps, guidance" in caption(app, [older]) and "DPMSolver" not in caption(app, [older])


def test_rates_against_the_number_of_targets_are_plotted_per_set_and_eraser():
    from spmbench.report import scaling_svg

    one, two = ("Barkley",), ("Barkley", "Whiskers")
    stored = [
        result("spm", {"target": 0.0, "near": 0.8}, targets=one),
        result("spm", {"target": 0.1, "near": 0.4}, targets=two),
        result("uce", {"target": 0.5, "near": 0.8}, targets=one),
        result("uce", {"target": 0.5, "near": 0.8}, targets=two),
    ]
    svg = scaling_svg(stored)
    # panels: target, near, fit seconds; one line per eraser in each
    assert svg.count("k targets") == 3 and svg.count("<polyline") == 3 * 2
    assert "<title>spm, k=2: 0.50</title>" in svg  # near 0.4 of the original's 0.8
    assert "<title>uce, k=1: 0.50</title>" in svg  # target 0.5 of 1.0
    assert scaling_svg(stored[::2]) is None  # every experiment erases one target: nothing to plot


def test_forty_targets_at_once_are_plotted_and_tabled():
    """toy3-many's k = 40: the set of not-erased concepts is empty there, and the table names the first few."""
    from spmbench.report import scaling_svg, table_rows

    forty = tuple(f"concept {i}" for i in range(40))
    stored = [
        result(
            "spm", {"target": 0.0, "others": 0.8}, targets=forty[:1], original_rates={"target": 1.0, "others": 0.8}
        ),
        result(
            "spm", {"target": 0.1, "others": 0.4}, targets=forty[:20], original_rates={"target": 1.0, "others": 0.8}
        ),
        result("spm", {"target": 0.2}, targets=forty, original_rates={"target": 1.0}),
    ]
    svg = scaling_svg(stored)
    assert "<title>spm, k=40: 0.20</title>" in svg and "<title>spm, k=20: 0.50</title>" in svg
    assert "spm, k=40: " not in svg.split("others / original")[1].split("fit (s)")[0]  # no others at k = 40
    _, rows = table_rows(stored)
    erased = [row[1] for row in rows]
    assert erased[0] == "concept 0" and erased[2] == "concept 0 + concept 1 + concept 2 + 37 more (k = 40)"


def test_alteration_against_the_number_of_targets_is_plotted_beside_the_rates():
    from spmbench.report import scaling_svg

    one, two = ("Barkley",), ("Barkley", "Whiskers")
    stored = [
        result("spm", {"target": 0.0, "near": 0.8}, {"paired_feature_distance": 0.1}, targets=one),
        result("spm", {"target": 0.1, "near": 0.4}, {"paired_feature_distance": 0.4}, targets=two),
    ]
    svg = scaling_svg(stored)
    # panels: target, near, the paired distance (over its largest value), fit seconds
    assert svg.count("k targets") == 4 and "paired_feature_distance, max 0.4" in svg
    assert "<title>spm, k=1: 0.25</title>" in svg  # 0.1 of the largest, 0.4


def test_a_run_of_the_original_alone_reports_its_rates(tmp_path, monkeypatch):
    """`run --erasers none`: no eraser row, and the report says so with the original's rates (it once failed
    writing the report: an empty mask selected columns, not rows)."""
    run_dir, app = write_run(
        tmp_path, monkeypatch, {"none": {"target": [True] * 7 + [False] * 3, "near": [True] * 10}}
    )
    from spmbench import report

    written = report.write_reports(app, run_dir, tmp_path / "reports")
    text = written[0].read_text()
    assert "No eraser was run" in text
    assert "- toy-base: target 0.700, near 1.000 (2 images)" in text
    assert report.results(run_dir).empty


@pytest.mark.parametrize("one_prompt", [False, True])
def test_a_set_of_several_concepts_gets_each_concepts_rate_beside_the_originals(tmp_path, monkeypatch, one_prompt):
    """Which sibling an eraser erodes: the table's near rate (15 of 20) averages Juno's 10 of 10 and Rufus' 5 of 10.
    10 prompts of one seed, or one prompt of 10 seeds (real-object's classes): Wilson's interval over the images
    either way, as a concept of one prompt has no prompts to resample."""
    from spmbench.apps import load_apps
    from spmbench.result import cell_key

    apps = tmp_path / "apps"
    apps.mkdir()
    templates, seeds = ("'{}'", list(range(10))) if one_prompt else (TEMPLATES, [0])
    mini = MINI.format(templates=templates, seeds=seeds, judge="toy").replace(
        "concepts: [Juno]", "concepts: [Juno, Rufus]"
    )
    (apps / "mini.yaml").write_text(mini)
    monkeypatch.setenv("SPMBENCH_APPS", str(apps))
    app = load_apps().get("mini")
    rows = app.rows(("Barkley",))
    dropped = {r.prompt_id for r in [r for r in rows if r.concept == "Rufus"][1::2]}  # 5 of Rufus' 10 images
    run_dir = tmp_path / "runs" / "mini"
    kept = {"none": lambda r: True, "spm": lambda r: r.set == "near" and r.prompt_id not in dropped}
    rates = {}
    for eraser, present in kept.items():
        cell = run_dir / "cells" / cell_key("toy-base", eraser, ("Barkley",))
        cell.mkdir(parents=True)
        lines = [{"prompt_id": r.prompt_id, "set": r.set, "concept": r.concept, "present": present(r)} for r in rows]
        (cell / "scores.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        rates[eraser] = {s: sum(x["present"] for x in lines if x["set"] == s) / 10 for s in ("target", "near")}
        rates[eraser]["near"] /= 2
    for eraser in kept:
        result(eraser, rates[eraser], None, rates["none"], app="mini", version=1).save(
            run_dir / "cells" / cell_key("toy-base", eraser, ("Barkley",)) / "result.json"
        )
    written = report.write_reports(app, run_dir, tmp_path / "reports")
    per_concept = (tmp_path / "reports" / "mini_per_concept.md").read_text()
    assert tmp_path / "reports" / "mini_per_concept.md" in written
    juno, rufus = stats.wilson(10, 10), stats.wilson(5, 10)
    assert f"| toy-base | Barkley | spm | near | Juno | 100 % [{juno[0] * 100:.0f}, 100] (100 %) | 10 |" in per_concept
    assert (
        f"| toy-base | Barkley | spm | near | Rufus | 50 % [{rufus[0] * 100:.0f}, {rufus[1] * 100:.0f}] (100 %) | 10 |"
        in per_concept
    )
    assert "| target |" not in per_concept  # one concept: the table's rate already is its rate
    (run_dir / "cells" / cell_key("toy-base", "spm", ("Barkley",)) / "scores.jsonl").write_text("")
    report.write_reports(app, run_dir, tmp_path / "reports")  # unscored: no rates, and no file left from before
    assert not (tmp_path / "reports" / "mini_per_concept.md").exists()
