"""`spmbench run` end to end on the smoke-trained toy world: every stage, resumability, reports."""

import dataclasses
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spmbench import runner
from spmbench.apps import load_apps
from spmbench.cli import app
from spmbench.erasers import ERASERS
from spmbench.models import load_models
from tests.spmbench.conftest import FAST_FITS


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_run_writes_reports_and_a_rerun_computes_nothing(toy_weights, tmp_path):
    args = ["run", "--app", "toy-concept", "--models", "toy", "--erasers", "none,spm,spm-noft", "--limit", "1",
            "--out", tmp_path / "runs", "--reports", tmp_path / "reports"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert re.search(r"toy-concept: 21 cells in \d+\.\d min \(this run\)", result.output)
    run_dir = tmp_path / "runs" / "toy-concept"
    results = [json.loads(p.read_text()) for p in run_dir.glob("cells/*/*/*/result.json")]
    # 3 models x (original + 3 experiments x 2 SPM variants)
    assert len(results) == 3 * (1 + 3 * 2)
    fitted = {r["fitted_on"] for r in results if r["eraser"] == "spm"}
    assert all(r["fit_seconds"] > 0 for r in results if r["eraser"] == "spm")  # the first fit's time, reused
    fit_cost = {(r["eraser"], tuple(r["targets"])): r["fit_seconds"] for r in results if r["eraser"] != "none"}
    assert all(fit_cost["spm-noft", t] == fit_cost["spm", t] for e, t in fit_cost)  # one shared fit, one cost
    single = json.loads((run_dir / "fits" / "toy-base" / "fit_seconds.json").read_text())
    three = sum(single[f"spm|{t}"] for t in ("Barkley", "Whiskers", "Pip"))
    assert fit_cost["spm", ("Barkley", "Whiskers", "Pip")] == pytest.approx(three, abs=0.1)  # k SPMs, k fits
    assert fitted == {"toy-base"}  # SPMs fitted once, on the family root, transferred to the derivatives
    assert sorted(p.name for p in (run_dir / "fits" / "toy-base" / "spm").iterdir()) == [
        "barkley.safetensors",
        "pip.safetensors",
        "whiskers.safetensors",
    ]
    table = (tmp_path / "reports" / "toy-concept" / "toy-concept.md").read_text()
    assert "toy-concept v2" in table and "| toy-pastel | Barkley + Whiskers | spm | toy-base |" in table
    reports = tmp_path / "reports" / "toy-concept"
    assert r"\begin{tabular}" in (reports / "toy-concept.tex").read_text()
    plottable = [r for r in results if r["eraser"] != "none" and r["original_rates"]["target"] > 0]
    plottable = [r for r in plottable if any(r["original_rates"][s] > 0 for s in ("near", "far"))]
    assert (reports / "toy-concept_tradeoff.svg").read_text().count("<circle") == len(plottable)
    assert len(list((reports / "grids").glob("*.png"))) == 3 * 3
    # a kill mid-run: drop some images and a score line; the rerun restores exactly those
    cell = run_dir / "cells" / "toy-base" / "spm" / "barkley"
    victim = sorted((cell / "images").glob("*.png"))[0]
    victim.unlink()
    (cell / "result.json").unlink()
    lines = (cell / "scores.jsonl").read_text().splitlines()
    (cell / "scores.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # torn last line
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("cells/**/*.png")}
    assert invoke(*args).exit_code == 0
    assert victim.exists()
    changed = [p for p in run_dir.glob("cells/**/*.png") if before.get(p) != p.stat().st_mtime_ns]
    assert changed == [victim]
    stored = json.loads((cell / "result.json").read_text())
    assert len(stored["rates"]) == 3 and stored["alteration"]["paired_feature_distance"] >= 0
    scored = {s["prompt_id"] for s in runner._read_jsonl(cell / "scores.jsonl")}
    assert len(scored) == stored["rows"]  # the torn line's prompt scored again, on a line of its own


def test_report_rebuilds_from_stored_results(toy_weights, tmp_path):
    args = ["run", "--app", "toy-object", "--models", "toy-base", "--erasers", "none,spm,negprompt", "--limit", "1",
            "--out", tmp_path / "runs"]  # fmt: skip
    assert invoke(*args, "--reports", tmp_path / "r1").exit_code == 0
    result = invoke("report", tmp_path / "runs" / "toy-object", "--reports", tmp_path / "r2")
    assert result.exit_code == 0, result.output
    csv_of = lambda reports: (reports / "toy-object" / "toy-object.csv").read_text()  # noqa: E731
    assert csv_of(tmp_path / "r1") == csv_of(tmp_path / "r2")
    # result.json carries its alteration intervals: the same the report bootstraps from the features of a
    # result made before it did, and with them the features are not needed to report, nor to reuse the cell
    erased = [p for p in (tmp_path / "runs" / "toy-object").glob("cells/*/*/*/result.json") if "/none/" not in str(p)]
    carried = {p: json.loads(p.read_text())["alteration_intervals"] for p in erased}
    assert all(set(c) == {"paired_feature_distance", "fid_judge_features"} for c in carried.values()), carried
    assert all(c["fid_judge_features"]["lo"] <= c["fid_judge_features"]["hi"] for c in carried.values())
    for path in erased:  # as made before intervals were kept: the report computes them from the features
        path.write_text(json.dumps({**json.loads(path.read_text()), "alteration_intervals": None}))
    assert invoke("report", tmp_path / "runs" / "toy-object", "--reports", tmp_path / "r3").exit_code == 0
    assert csv_of(tmp_path / "r3") == csv_of(tmp_path / "r1")
    for path, intervals in carried.items():
        path.write_text(json.dumps({**json.loads(path.read_text()), "alteration_intervals": intervals}))
        (path.parent / "alteration_features.safetensors").unlink()
    run_dir = tmp_path / "runs" / "toy-object"
    images = {p: p.stat().st_mtime_ns for p in run_dir.glob("cells/**/*.png")}
    assert len(images) > 0 and invoke(*args, "--reports", tmp_path / "r4").exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("cells/**/*.png")} == images
    assert csv_of(tmp_path / "r4") == csv_of(tmp_path / "r1")
    assert not list(run_dir.glob("cells/**/alteration_features.safetensors"))  # nothing recomputed


def test_unknown_names_suggest(tmp_path):
    result = invoke("run", "--app", "toy-concpt", "--out", tmp_path)
    assert result.exit_code == 2 and "did you mean 'toy-concept'" in result.output
    result = invoke("run", "--app", "toy-concept", "--erasers", "spn", "--out", tmp_path)
    assert result.exit_code == 2 and "did you mean 'spm'" in result.output


def test_worlds_do_not_mix():
    result = invoke("run", "--app", "real-concept", "--models", "toy", "--dry-run")
    assert result.exit_code == 2 and "is for real models" in result.output
    result = invoke("run", "--app", "all", "--models", "sd14,toy-base", "--dry-run")
    assert result.exit_code == 2 and "mixes worlds" in result.output
    result = invoke("run", "--app", "all", "--models", "toy", "--dry-run")
    assert result.exit_code == 0 and "toy-concept: 30 cells" in result.output and "real-" not in result.output


def test_a_fit_with_other_settings_is_not_reused(toy_weights, tmp_path):
    args = ["run", "--app", "toy-object", "--models", "toy-base", "--erasers", "uce", "--limit", "1",
            "--out", tmp_path / "runs", "--reports", tmp_path / "r"]  # fmt: skip
    assert invoke(*args).exit_code == 0
    specs = tmp_path / "model-specs"
    data = yaml.safe_load((specs / "toy-base.yaml").read_text())
    data["eraser_settings"]["uce"] = {"lam": 0.1}
    (specs / "toy-base.yaml").write_text(yaml.safe_dump(data))
    result = invoke(*args)
    assert result.exit_code == 2 and "fitted with settings" in result.output
    # doing what the message says is enough: the rerun refits with the new settings
    run_dir = tmp_path / "runs" / "toy-object"
    shutil.rmtree(run_dir / "fits" / "toy-base" / "uce")
    shutil.rmtree(run_dir / "cells" / "toy-base" / "uce")
    assert invoke(*args).exit_code == 0
    (result,) = [json.loads(p.read_text()) for p in run_dir.glob("cells/toy-base/uce/*/result.json")]
    assert result["settings"]["fit"]["lam"] == 0.1


class _Judge:
    def __init__(self, identity):
        self.identity = identity


def test_scores_are_not_reused_under_another_judge(tmp_path):
    from spmbench.runner import JudgeChanged, check_judge

    check_judge(tmp_path / "new-run", _Judge("judge A"))  # a run directory not made yet
    assert (tmp_path / "new-run" / "judge.json").exists()
    cell = tmp_path / "cells" / "toy-base" / "spm" / "barkley"
    (cell / "images").mkdir(parents=True)
    for name in ("scores.jsonl", "result.json", "images/a.png"):
        (cell / name).write_text("{}")
    check_judge(tmp_path, _Judge("judge A"))
    check_judge(tmp_path, _Judge("judge A"))  # the same judge reuses everything
    with pytest.raises(JudgeChanged, match="judge A.*judge B.*--rescore"):
        check_judge(tmp_path, _Judge("judge B"))
    assert (cell / "scores.jsonl").exists()  # refusing deletes nothing
    check_judge(tmp_path, _Judge("judge B"), rescore=True)
    assert not (cell / "scores.jsonl").exists() and not (cell / "result.json").exists()
    assert (cell / "images" / "a.png").exists()  # images are kept: only scoring reruns
    check_judge(tmp_path, _Judge("judge B"))  # now the stored judge


def test_a_derivatives_cells_are_tied_to_its_roots_weights_whose_fits_they_apply(tmp_path, monkeypatch):
    from spmbench.models import ModelSpec
    from spmbench.registry import Registry
    from spmbench.runner import ModelChanged, check_models

    monkeypatch.setenv("SPMBENCH_CACHE", str(tmp_path / "cache"))
    registry = Registry("model")
    for name, parent in (("root", None), ("derived", "root")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
        (tmp_path / name / "weights.bin").write_bytes(name.encode())
        registry.add(name, ModelSpec(name, str(tmp_path / name), "sd1", "real", derived_from=parent))
    run_dir = tmp_path / "run"
    check_models(run_dir, [registry.get("derived")], registry)
    recorded = json.loads((run_dir / "models.json").read_text())
    assert list(recorded) == ["derived"] and "fits made on root" in recorded["derived"]
    check_models(run_dir, [registry.get("derived"), registry.get("root")], registry)
    (run_dir / "cells" / "root").mkdir(parents=True)
    (tmp_path / "root" / "weights.bin").write_bytes(b"retrained root")
    for models in ([registry.get("derived")], [registry.get("root")]):  # the derivative's own weights unchanged
        with pytest.raises(ModelChanged, match="other weights") as refused:
            check_models(run_dir, models, registry)
        assert "\n" not in str(refused.value)
    assert str(run_dir / "cells" / "root") in str(refused.value) and "fits" + "/root" not in str(refused.value)


def test_images_and_fits_are_not_reused_for_new_weights_under_the_same_model_name(
    run_real_app, real_judges, tiny_dir, tmp_path
):
    """A fine-tune saved over a registered model's folder: the rerun refuses in one line before any work, names
    what to delete, and once that is deleted makes them again; an unchanged copy elsewhere reuses everything."""
    from safetensors.torch import load_file, save_file

    mine = tmp_path / "mine"
    shutil.copytree(tiny_dir, mine)
    spec_file = tmp_path / "models" / "tiny-real.yaml"  # run_real_app's registered model, now on the copy

    def point_at(folder):
        spec_file.write_text(yaml.safe_dump(yaml.safe_load(spec_file.read_text()) | {"source": str(folder)}))

    point_at(mine)
    result, run_dir, _ = run_real_app("real-object", *real_judges, "--fit-seeds", "1", limit=1, erasers="none,spm")
    assert result.exit_code == 0, result.output
    recorded = json.loads((run_dir / "models.json").read_text())
    assert list(recorded) == ["tiny-real"] and recorded["tiny-real"].startswith("sha256:")
    images = sorted((run_dir / "cells" / "tiny-real").rglob("*.png"))
    made = {p: p.stat().st_mtime_ns for p in images}

    moved = tmp_path / "moved"
    shutil.copytree(mine, moved)  # the same weights elsewhere: everything reused
    point_at(moved)
    result, _, _ = run_real_app("real-object", *real_judges, "--fit-seeds", "1", limit=1, erasers="none,spm")
    assert result.exit_code == 0 and {p: p.stat().st_mtime_ns for p in images} == made, result.output

    weights = next((moved / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights)  # fine-tuned in place
    result, _, _ = run_real_app("real-object", *real_judges, "--fit-seeds", "1", limit=1, erasers="none,spm")
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
    (error,) = [line for line in result.output.splitlines() if "made with other weights" in line]
    assert str(run_dir / "cells" / "tiny-real") in error and str(run_dir / "fits" / "tiny-real") in error
    assert {p: p.stat().st_mtime_ns for p in images} == made  # refused before any work
    shutil.rmtree(run_dir / "cells" / "tiny-real")
    shutil.rmtree(run_dir / "fits" / "tiny-real")
    (run_dir / "models.json").unlink()
    result, _, _ = run_real_app("real-object", *real_judges, "--fit-seeds", "1", limit=1, erasers="none,spm")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "models.json").read_text())["tiny-real"] not in (recorded["tiny-real"], None)


def test_a_stored_result_is_reused_only_for_the_same_version_rows_attacks_and_alteration_features():
    from types import SimpleNamespace

    from tests.spmbench.test_report import result

    concept = load_apps().get("toy-concept")
    clip_a = lambda: SimpleNamespace(identity="clip A")  # noqa: E731
    measured_on_a = dataclasses.replace(
        result("spm", {"target": 0.5}, version=concept.version), alteration_features="clip A"
    )
    assert runner.reusable(concept, measured_on_a, 2, (), clip_a)
    assert not runner.reusable(concept, measured_on_a, 3, (), clip_a)  # other rows (another --limit)
    assert not runner.reusable(
        concept, measured_on_a, 2, (), lambda: SimpleNamespace(identity="clip B")
    )  # another CLIP
    # another version of the application: its prompts may differ with the same count
    assert not runner.reusable(
        concept, dataclasses.replace(measured_on_a, app_version=concept.version - 1), 2, (), clip_a
    )
    assert not runner.reusable(concept, measured_on_a, 2, ("rab",), clip_a)  # made without the attack asked for
    original = dataclasses.replace(measured_on_a, alteration_features=None)
    assert runner.reusable(concept, original, 2, (), lambda: 1 / 0)  # nothing measured: the source is never built
    assert runner.reusable(concept, measured_on_a, 2)  # no features given: the estimate's question
    assert not runner.reusable(concept, None, 2, (), clip_a)


def test_a_cell_made_with_its_eraser_applied_one_way_is_refused_another_way_until_deleted(tmp_path):
    from spmbench.erasers.spm import SPMEraser

    concept, base = load_apps().get("toy-concept"), load_models().get("toy-base")
    cell = next(c for c in runner.plan(concept, [base], ["spm"], tmp_path) if c.eraser == "spm")
    paper, floored = SPMEraser(), SPMEraser()
    floored.least = 0.25
    runner.check_applied(cell, paper)
    cell.images.mkdir(parents=True)
    (cell.images / ".rows-0-32.lock").write_bytes(b"")  # a batch's lock: nothing made yet
    runner.check_applied(cell, floored)  # the new way is recorded
    runner.check_applied(cell, floored)  # the same way again
    for made in (cell.images / "target-0.png", cell.result, cell.scores, cell.dir / "attacks"):
        made.mkdir() if made.name == "attacks" else made.write_bytes(b"")
        with pytest.raises(
            runner.EraserAppliedChanged, match=r"applied as .*'least': 0.25.*now .*'least': 0.0.*delete"
        ):
            runner.check_applied(cell, paper)
        shutil.rmtree(made) if made.is_dir() else made.unlink()  # a run state unpacked without images still refuses
    runner.check_applied(cell, paper)  # nothing made: the old way is forgotten
    assert json.loads((cell.dir / "eraser.json").read_text())["applied"]["least"] == 0.0


@pytest.mark.parametrize("content", ["", '{"judge": "toy', "[1, 2]"])
def test_damaged_state_files_are_one_line_errors_naming_file_and_fix(tmp_path, content):
    from types import SimpleNamespace

    (tmp_path / "judge.json").write_text(content)
    with pytest.raises(runner.StateFileError, match=r"judge\.json: damaged .*: delete it and add --rescore") as e:
        runner.check_judge(tmp_path, SimpleNamespace(identity="toy judge"))
    assert "\n" not in str(e.value)
    fits = tmp_path / "fits"
    fits.mkdir()
    (fits / "fit_settings.json").write_text(content)
    eraser = SimpleNamespace(fit_key="spm")
    with pytest.raises(
        runner.StateFileError, match=r"fit_settings\.json: damaged .*: delete it and .*fits to fit again"
    ):
        runner.check_fit_settings(fits, eraser, {})


def test_a_score_line_that_is_not_a_record_is_named_and_a_torn_one_is_skipped(tmp_path):
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"prompt_id": "a", "set": "far", "present": true}\n{"prompt_id": "b", "pres')  # torn by a kill
    assert [s["prompt_id"] for s in runner._read_jsonl(scores)] == ["a"]
    scores.write_text('{"prompt_id": "a", "set": "far", "present": true}\n42\n')
    with pytest.raises(runner.StateFileError, match=r"scores\.jsonl:2: not a score record: delete scores\.jsonl"):
        runner._read_jsonl(scores)


def test_in_turn_puts_off_a_cell_another_process_holds(tmp_path):
    """A held cell is done last, after waiting for its holder: here the holder lets go once the other
    cells are done (another process finishing it); the cell is still computed, and only once."""
    from types import SimpleNamespace

    from filelock import FileLock

    from spmbench.locks import lock_path

    cells = [SimpleNamespace(key=k, dir=tmp_path / k) for k in "abc"]
    other_process = FileLock(lock_path(cells[1].dir))  # its own descriptor: to flock, another holder
    other_process.acquire()
    order = []

    def compute(cell):
        order.append(cell.key)
        if cell.key == "c":
            other_process.release()
        return cell.key

    assert runner.in_turn(cells, compute) == ["a", "b", "c"]
    assert order == ["a", "c", "b"]


def test_two_processes_on_one_run_folder_compute_each_cell_once(tmp_path):
    """Two `spmbench run` on the same --out, on the shipped toy-base with two-step fits: every cell is
    generated and scored by one of them, every fit made and recorded once, and both report all cells.
    Both start while the original cell is held, so they overlap on every cell after it."""
    import os
    import subprocess
    import sys

    from filelock import FileLock

    from spmbench.locks import lock_path
    from spmbench.models import MODELS_DIR

    specs = tmp_path / "specs"
    specs.mkdir()
    spec = yaml.safe_load((MODELS_DIR / "toy-base.yaml").read_text())
    spec |= {"name": "toy-fast", "source": str((MODELS_DIR / spec["source"]).resolve()), "eraser_settings": FAST_FITS}
    (specs / "toy-fast.yaml").write_text(yaml.safe_dump(spec))
    env = os.environ | {"SPMBENCH_MODELS": str(specs), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    command = [sys.executable, "-c", "from spmbench.cli import main; main()", "run", "--app", "toy-object",
               "--models", "toy-fast", "--erasers", "none,spm,negprompt", "--limit", "1", "--out", str(out),
               "--reports", str(tmp_path / "reports")]  # fmt: skip
    original = out / "toy-object" / "cells" / "toy-fast" / "none" / "original"
    held = FileLock(lock_path(original))
    held.acquire()
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    time.sleep(15)  # both load the model and reach the held cell
    held.release()
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    run_dir = out / "toy-object"
    cells = sorted(p.parent for p in run_dir.glob("cells/*/*/*/result.json"))
    assert len(cells) == 3  # the original, spm and negprompt
    for cell in cells:
        assert sum(f"generate {cell.relative_to(run_dir / 'cells')}" in o for o in outputs) == 1, cell
        ids = [json.loads(line)["prompt_id"] for line in (cell / "scores.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == json.loads((cell / "result.json").read_text())["rows"]
    assert sorted(json.loads((run_dir / "fits" / "toy-fast" / "fit_seconds.json").read_text())) == [
        "negprompt|star",
        "none|",
        "spm|star",
    ]


FIT_MEMORY = """
import sys, json, torch
from pathlib import Path
import spm
from spmbench import runner
from spmbench.erasers import ERASERS
torch.set_num_threads(1)
pipe = spm.load_pipeline(sys.argv[1])
if sys.argv[3] == "after-original":  # what a run does when the original cell is generated first
    pipe(["a star"] * 32, num_inference_steps=10, guidance_scale=3.0, height=32, width=32)
settings = {"iterations": 5, "warmup_steps": 1, "rollout_steps": 10}
_, _, mib = runner.fit_timed(ERASERS.get("spm"), pipe, ("star",), Path(sys.argv[2]), 32, settings)
print(json.dumps(mib))
"""


def test_a_fit_costs_the_same_memory_whether_or_not_the_original_cell_ran_first(tmp_path):
    """Measured in fresh processes on the shipped toy-base: unsettled, 47 MiB when the fit came first
    and 8 MiB after the original cell's generation (the issue's 79 against 18-20 on a run)."""
    import subprocess
    import sys

    source = load_models().get("toy-base").source
    peaks = {}
    for order in ("fit-first", "after-original"):
        command = [sys.executable, "-c", FIT_MEMORY, source, str(tmp_path / order), order]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[order] = json.loads(done.stdout.strip().splitlines()[-1])
    low, high = sorted(peaks.values())
    assert high < 1.6 * low, peaks


def _fuzz_json(document, tmp_path, name, n=150):
    """Mutants of `document` as the JSON file `name`: whole-value edits, then byte-level corruption."""
    from tests.fuzz import byte_mutants, value_mutants

    path = tmp_path / name
    text = json.dumps(document)
    for mutant in value_mutants(document, n):
        path.write_text(json.dumps(mutant))
        yield path
    for mutant in byte_mutants(text.encode(), n):
        path.write_bytes(mutant)
        yield path


def test_fuzzed_state_files_are_read_or_refused_in_one_line(tmp_path):
    """judge.json, fit_settings.json, fit_seconds.json, fit_memory.json: every mutant is read, or
    refused with the documented errors; what is read back is what the run uses (numbers are numbers)."""
    from spmbench.erasers import ERASERS
    from spmbench.runner import FitSettingsChanged, JudgeChanged, StateFileError

    none = ERASERS.get("none")
    for path in _fuzz_json({"judge": "judge A"}, tmp_path, "judge.json"):
        try:
            runner.check_judge(tmp_path, _Judge("judge A"))
        except (JudgeChanged, StateFileError) as e:
            assert str(path) in str(e) or "judge A" in str(e)
    (tmp_path / "none").mkdir()  # fits made with the stored settings exist: other settings are refused
    for path in _fuzz_json({"none": {}}, tmp_path, "fit_settings.json"):
        try:
            runner.check_fit_settings(tmp_path, none, {})
        except (FitSettingsChanged, StateFileError) as e:
            assert str(path) in str(e) or "fitted with settings" in str(e)
    for name in ("fit_seconds.json", "fit_memory.json"):
        for path in _fuzz_json({"none|star": 1.5}, tmp_path, name):
            try:
                _, seconds, mib = runner.fit_timed(none, object(), ("star",), tmp_path, 32, {})
            except StateFileError as e:
                assert str(path) in str(e) and "\n" not in str(e)
            else:  # None: a fit not measured whole (resumed)
                assert seconds is None or 0 <= seconds <= sys.float_info.max
                assert mib is None or 0 <= mib <= sys.float_info.max
            for record in ("fit_seconds.json", "fit_memory.json"):
                (tmp_path / record).unlink(missing_ok=True)


def test_a_fit_resumed_from_its_checkpoint_records_no_time_and_a_rerun_keeps_it_so(tmp_path):
    """Its last part alone would understate the fit (world v3's record: 29 s for an 88 s ESD-x fit resumed at 81 %)."""
    from spmbench.erasers.none import Original

    class Resumable(Original):  # writes its artifact and drops its checkpoint, as a trained eraser does
        name, fits_per_target = "resumable", True

        def fit(self, pipe, targets, workdir, resolution, settings=None):
            paths = [self.artifact_path(workdir, (t,)) for t in targets]
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("fit")
                self.checkpoint_path(path).unlink(missing_ok=True)
            return paths

    eraser = Resumable()
    _, fresh, _ = runner.fit_timed(eraser, object(), ("star",), tmp_path, 32, {})
    interrupted = eraser.checkpoint_path(eraser.artifact_path(tmp_path, ("moon",)))
    interrupted.parent.mkdir(parents=True, exist_ok=True)
    interrupted.write_bytes(b"a fit's state at step 400 of 500")
    _, resumed, _ = runner.fit_timed(eraser, object(), ("moon",), tmp_path, 32, {})
    assert fresh is not None and fresh >= 0 and resumed is None and not interrupted.exists()
    _, rerun, _ = runner.fit_timed(eraser, object(), ("moon",), tmp_path, 32, {})  # artifact on disk: ~0 s
    assert rerun is None  # the record stands: a rerun does not measure the fit again as instant
    _, both, _ = runner.fit_timed(eraser, object(), ("star", "moon"), tmp_path, 32, {})
    assert both is None  # k fits per target: one unmeasured makes the sum unknown
    assert json.loads((tmp_path / "fit_seconds.json").read_text()) == {"resumable|star": fresh, "resumable|moon": None}


def test_fuzzed_score_lines_are_read_or_refused_in_one_line(tmp_path):
    from spmbench.runner import StateFileError
    from tests.fuzz import byte_mutants, value_mutants

    record = {"prompt_id": "target-0", "set": "target", "concept": "star", "present": True}
    path = tmp_path / "scores.jsonl"
    mutants = [json.dumps(m) for m in value_mutants(record, 150)]
    mutants += [m.decode("utf-8", "replace") for m in byte_mutants(json.dumps(record).encode(), 150)]
    for mutant in mutants:
        path.write_text(json.dumps(record) + "\n" + mutant + "\n" + json.dumps(record | {"prompt_id": "far-0"}))
        try:
            rates = runner.summarise(runner._read_jsonl(path), path)
        except StateFileError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            continue
        assert all(0 <= rate <= 1 for rate in rates.values())


def test_fuzzed_results_are_read_or_recomputed(tmp_path):
    """A result.json that is not a valid Result is None (the runner recomputes it), never an exception,
    and one that loads makes a table row."""
    from spmbench.report import table_rows
    from spmbench.result import Result
    from tests.spmbench.test_report import result

    valid = dataclasses.asdict(result("spm", {"target": 0.0, "near": 1.0}, {"paired_feature_distance": 0.1}))
    for path in _fuzz_json(valid, tmp_path, "result.json", n=300):
        loaded = Result.load(path)
        if loaded is not None:
            table_rows([loaded])


def test_scoring_on_a_full_disk_is_one_line_naming_the_scores_and_keeps_them(tmp_path, disk_full_for):
    from types import SimpleNamespace

    from PIL import Image

    from spm.files import DiskFullError

    rows = [SimpleNamespace(prompt_id=f"target-{i}", set="target", concept="star") for i in range(3)]
    for row in rows:
        Image.new("RGB", (8, 8)).save(tmp_path / f"{row.prompt_id}.png")
    cell = SimpleNamespace(scores=tmp_path / "scores.jsonl", image=lambda row: tmp_path / f"{row.prompt_id}.png")
    judge = SimpleNamespace(assess=lambda images, concepts: [{"present": True} for _ in concepts])
    runner.score_cell(judge, rows[:2], cell)
    kept = cell.scores.read_text()
    disk_full_for("scores.jsonl")
    with pytest.raises(DiskFullError, match=rf"cannot append to {cell.scores}: no space left .* kept"):
        runner.score_cell(judge, rows, cell)
    assert cell.scores.read_text() == kept


def test_a_prompt_id_scored_twice_counts_once(tmp_path):
    """Before 7b9b2aa, an attack prompt two restarts found was listed (and judged) twice under one id: its cell's
    scores hold two lines for one image, which a recount must read as one."""
    from types import SimpleNamespace

    rows = [SimpleNamespace(prompt_id=f"attack-uda-{i}", set="attack-uda", concept="star") for i in range(2)]
    cell = SimpleNamespace(scores=tmp_path / "scores.jsonl", image=lambda row: tmp_path / f"{row.prompt_id}.png")
    lines = [{"prompt_id": "attack-uda-0", "set": "attack-uda", "present": True}] * 2
    lines.append({"prompt_id": "attack-uda-1", "set": "attack-uda", "present": False})
    cell.scores.write_text("".join(json.dumps(line) + "\n" for line in lines))
    scores = runner.score_cell(SimpleNamespace(assess=None), rows, cell)  # nothing left to judge
    assert [s["prompt_id"] for s in scores] == ["attack-uda-0", "attack-uda-1"]
    assert runner.summarise(scores, cell.scores) == {"attack-uda": 0.5}


SEEDED_APP = {
    "name": "toy-seeded",
    "version": 1,
    "world": "toy",
    "judge": "toy",
    "erase": [["star"]],
    "prompts": {
        "target": {"concepts": "{targets}", "templates": ["a red {} on a white background"]},
        "near": {"concepts": ["circle"], "templates": ["a red {} on a white background"]},
    },
    "seeds": [0],
    "fit_seeds": [0, 1],
}


def test_trained_erasers_are_fitted_once_per_fit_seed_and_the_table_gives_their_spread(
    toy_weights, tmp_path, monkeypatch
):
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "toy-seeded.yaml").write_text(yaml.safe_dump(SEEDED_APP))
    monkeypatch.setenv("SPMBENCH_APPS", str(folder))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    result = invoke("run", "--app", "toy-seeded", "--models", "toy-base", "--erasers", "none,spm,spm-noft,uce",
                    "--out", runs, "--reports", reports)  # fmt: skip
    assert result.exit_code == 0, result.output
    cells = runs / "toy-seeded" / "cells" / "toy-base"
    assert sorted(p.name for p in cells.iterdir()) == ["none", "spm", "spm-noft", "spm-noft~seed1", "spm~seed1", "uce"]
    fits = runs / "toy-seeded" / "fits" / "toy-base"
    settings = json.loads((fits / "fit_settings.json").read_text())
    assert settings["spm~seed1"]["seed"] == 1 and settings["spm"].get("seed", 0) == 0
    first, second = ((fits / key / "star.safetensors").read_bytes() for key in ("spm", "spm~seed1"))
    assert first != second  # another seed, another fit: its own initialisation and draws
    table = (reports / "toy-seeded" / "toy-seeded.md").read_text()
    assert "~seed" not in table  # the later fits are folded into their eraser's row
    spm_rows = [line for line in table.splitlines() if line.startswith("| toy-base | star | spm")]
    assert len(spm_rows) == 2 and all("; 2 fits " in line for line in spm_rows)
    assert "; 2 fits" not in next(line for line in table.splitlines() if "| uce |" in line)  # closed form: one fit
    assert "fitted with seeds [0, 1]" in table
    frame = runner_results(runs / "toy-seeded")
    spm_target = frame[(frame.eraser.str.startswith("spm~")) | (frame.eraser == "spm")]
    spm_target = spm_target[spm_target.measure == "target"]
    assert set(spm_target.fits) == {2} and spm_target.fits_mean.iloc[0] == pytest.approx(spm_target.value.mean())


def runner_results(path):
    import spmbench

    return spmbench.results(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fit_seeds": [0, 0]}, r"fit_seeds must be a non-empty list of distinct integers, got \[0, 0\]"),
        ({"eraser_settings": {"spm": {"seed": 3}}}, "fit_seeds starts with 0, but spm is fitted with seed 3"),
    ],
)
def test_fit_seeds_that_cannot_be_run_are_one_line_errors(toy_weights, tmp_path, monkeypatch, change, message):
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "toy-seeded.yaml").write_text(yaml.safe_dump({**SEEDED_APP, **change}))
    monkeypatch.setenv("SPMBENCH_APPS", str(folder))
    result = invoke("run", "--app", "toy-seeded", "--models", "toy-base", "--erasers", "none,spm",
                    "--out", tmp_path / "runs", "--dry-run")  # fmt: skip
    assert result.exit_code != 0 and re.search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_result_records_the_sampler_its_model_loaded_and_the_table_names_it(run_real_app, tmp_path):
    """A tiny SDXL samples with Euler: the result says so rather than assuming DDIM, and so does the caption."""
    from tests.spmbench.judges.conftest import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    result, runs, reports = run_real_app("real-concept", "--clip-model", str(clip), limit=1,
                                         erasers="none,negprompt", model="tiny-xl")  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = [json.loads(p.read_text()) for p in runs.glob("cells/tiny-xl/*/*/result.json")]
    assert {r["eraser"] for r in stored} == {"none", "negprompt"}
    assert {r["settings"]["sampler"] for r in stored} == {"EulerDiscreteScheduler"}
    assert "EulerDiscrete 2 steps" in (reports / "real-concept.md").read_text()


def _stub_cell(tmp_path, n_rows: int, delay: float = 0.0):
    """A cell of `n_rows` rows whose images go under tmp_path, and an eraser that 'generates' flat images."""
    import contextlib
    import time
    from types import SimpleNamespace

    from PIL import Image

    from spmbench.apps import PromptRow

    model = SimpleNamespace(caption_prefix="", caption_suffix="", num_inference_steps=1, guidance_scale=1.0,
                            resolution=8)  # fmt: skip
    images = tmp_path / "images"
    cell = SimpleNamespace(key="m/e/t", images=images, model=model, image=lambda r: images / f"{r.prompt_id}.png",
                           generation_log=tmp_path / "generation.jsonl")  # fmt: skip
    rows = [PromptRow(f"p{i}", "target", "Barkley", f"prompt {i}", i) for i in range(n_rows)]
    made = []

    def generate(prompts, **_):
        time.sleep(delay)
        made.extend(prompts)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(len(prompts))])

    eraser = SimpleNamespace(apply=lambda pipe, artifacts: contextlib.nullcontext(generate))
    return cell, rows, eraser, made


def test_batches_write_their_images_in_a_thread_and_hold_their_locks_until_written(tmp_path):
    """Every image lands, each batch once; a batch's lock is free again once generate_batches returns."""
    from spmbench.locks import holding

    cell, rows, eraser, made = _stub_cell(tmp_path, 5)
    todo = runner.batches(cell, rows, 2)
    assert runner.generate_batches(None, eraser, [], todo) == []
    assert sorted(p.name for p in cell.images.glob("*.png")) == [f"p{i}.png" for i in range(5)]
    assert len(made) == 5
    for batch in todo:
        with holding(batch.lock, wait=False) as held:
            assert held
    assert runner.generate_batches(None, eraser, [], todo) == [] and len(made) == 5  # nothing made again
    timed = [
        json.loads(line) for line in cell.generation_log.read_text().splitlines() if line
    ]  # each batch timed once
    assert [(t["start"], t["images"]) for t in timed] == [(0, 2), (2, 2), (4, 1)] and all(
        t["seconds"] >= 0 for t in timed
    )


def test_generation_seconds_sum_the_latest_line_of_every_batch_or_are_unknown(tmp_path):
    cell, rows, _, _ = _stub_cell(tmp_path, 5)  # batches of 2 start at rows 0, 2 and 4
    log = cell.generation_log
    log.write_text(
        '{"start": 0, "images": 2, "seconds": 1.0}\n{"start": 2, "images": 2, "seconds": 2.0}\n{"start": 4, "ima'
    )
    assert runner.generation_seconds(cell, rows, 2) is None  # the last batch's line was torn by a kill
    runner._save_images([], log, {"start": 4, "images": 1, "seconds": 0.5})  # its line whole after the torn one
    runner._save_images([], log, {"start": 0, "images": 2, "seconds": 1.5})
    assert runner.generation_seconds(cell, rows, 2) == 4.0  # batch 0 made again: its latest time counts
    assert runner.generation_seconds(cell, rows, 4) is None  # batched otherwise than timed


def test_a_failed_image_write_is_raised_and_releases_every_lock(tmp_path, monkeypatch):
    from spmbench.locks import holding

    cell, rows, eraser, _ = _stub_cell(tmp_path, 6)
    real = runner.save_image_atomic

    def failing(image, path):
        if path.name == "p2.png":  # the second batch's first image
            raise OSError(28, "No space left on device")
        real(image, path)

    monkeypatch.setattr(runner, "save_image_atomic", failing)
    todo = runner.batches(cell, rows, 2)
    with pytest.raises(OSError, match="No space left"):
        runner.generate_batches(None, eraser, [], todo)
    for batch in todo:
        with holding(batch.lock, wait=False) as held:
            assert held, batch.lock
    assert (cell.images / "p0.png").exists() and not (cell.images / "p2.png").exists()


def test_a_batch_keeps_its_lock_while_its_images_are_written(tmp_path, monkeypatch):
    """Another process looking at the batch while its PNGs are being written finds it held."""
    import subprocess
    import sys

    cell, rows, eraser, _ = _stub_cell(tmp_path, 4)
    real, seen = runner.save_image_atomic, []
    probe = "from pathlib import Path; from spmbench.locks import holding\nwith holding(Path({!r}), wait=False) as h: print(h)"

    def save(image, path):
        lock = runner.batches(cell, rows, 2)[int(path.stem[1:]) // 2].lock
        held_elsewhere = subprocess.run(
            [sys.executable, "-c", probe.format(str(lock))], capture_output=True, text=True
        )
        seen.append(held_elsewhere.stdout.strip())
        real(image, path)

    monkeypatch.setattr(runner, "save_image_atomic", save)
    runner.generate_batches(None, eraser, [], runner.batches(cell, rows, 2))
    assert seen == ["False"] * 4  # no other process could take a batch whose images were not all on disk


def _generate_in_order(root, reverse: bool) -> None:
    cell, rows, eraser, _ = _stub_cell(root, 4, delay=0.3)
    todo = runner.batches(cell, rows, 2)
    runner.generate_batches(None, eraser, [], todo[::-1] if reverse else todo, wait=True)


def test_two_processes_taking_batches_in_opposite_orders_both_finish(tmp_path):
    """A process never waits for a batch's lock while it holds another's: two that take the same batches in
    opposite orders (as share_generation's put-off rounds can) would otherwise wait on each other forever."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_generate_in_order, args=(tmp_path, r)) for r in (False, True)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    alive = [w.is_alive() for w in workers]
    for w in workers:
        if w.is_alive():
            w.kill()
    assert alive == [False, False] and [w.exitcode for w in workers] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png")) == [f"p{i}.png" for i in range(4)]


def test_an_application_sets_how_an_eraser_is_applied_to_its_prompts_and_not_how_it_is_fitted():
    from spmbench.erasers.base import seeded

    concept = dataclasses.replace(load_apps().get("toy-concept"), apply={"spm-hardened": {"least": 1.0}})
    hardened = ERASERS.get("spm-hardened")
    applied = runner.applied_eraser(concept, "spm-hardened")
    assert applied.least == 1.0 and applied.applied["least"] == 1.0 and hardened.least == 0.25  # the registry's kept
    assert applied.fit_key == hardened.fit_key and applied.overrides == hardened.overrides  # the same fits
    second_seed = runner.applied_eraser(concept, seeded(hardened, 1).name)  # a fit seed is applied as its eraser
    assert second_seed.applied["least"] == 1.0 and second_seed.fit_key == seeded(hardened, 1).fit_key
    assert runner.applied_eraser(concept, "spm") is ERASERS.get("spm")  # nothing set for it
    for options, says in (
        ({"least": 1.5}, "spm-hardened: apply option least must be a number in [0, 1], not 1.5"),
        ({"floor": 1}, "spm-hardened has no apply option 'floor' (its options: least)"),
    ):
        wrong = dataclasses.replace(concept, apply={"spm-hardened": options})
        with pytest.raises(ValueError, match=re.escape(f"concept.yaml: apply: {says}")):
            runner.applied_eraser(wrong, "spm-hardened")
        cells = runner.plan(wrong, [load_models().get("toy-base")], ["spm-hardened"], Path("/nonexistent"))
        assert says in runner.settings_problem(wrong, cells, load_models())  # refused before any work, in one line
    for misnamed in ("spm-hardend", "spm-hardened~seed1"):  # a typo, or a fit seed: said, not ignored
        wrong = dataclasses.replace(concept, apply={misnamed: {"least": 1.0}})
        cells = runner.plan(wrong, [load_models().get("toy-base")], ["spm"], Path("/nonexistent"))
        assert f"apply: no eraser {misnamed!r}" in runner.settings_problem(wrong, cells, load_models())
    with pytest.raises(ValueError, match="uce has no apply option 'least' \\(its options: none\\)"):
        runner.applied_eraser(dataclasses.replace(concept, apply={"uce": {"least": 0.5}}), "uce")


def test_a_cell_added_after_the_originals_images_are_gone_remakes_them_to_measure_alteration(
    toy_weights, tmp_path, monkeypatch
):
    """A machine that kept only a run's small files (results, scores) lost the original's images: a new eraser's
    cell still measures its alteration against them, remade from their seeds."""
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "toy-seeded.yaml").write_text(yaml.safe_dump(SEEDED_APP | {"fit_seeds": [0]}))
    monkeypatch.setenv("SPMBENCH_APPS", str(folder))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    base = ["run", "--app", "toy-seeded", "--models", "toy-base", "--out", runs, "--reports", reports]
    assert invoke(*base, "--erasers", "none").exit_code == 0
    original = runs / "toy-seeded" / "cells" / "toy-base" / "none" / "original"
    made = {p.name: p.read_bytes() for p in original.glob("images/*.png")}
    for image in original.glob("images/*.png"):
        image.unlink()
    result = invoke(*base, "--erasers", "none,negprompt")
    assert result.exit_code == 0, result.output
    remade = {p.name: p.read_bytes() for p in original.glob("images/*.png")}
    assert set(remade) <= set(made) and any(name.startswith("near-") for name in remade)  # in the original's batches
    assert all(remade[name] == made[name] for name in remade)  # the same images, from the same seeds
    stored = json.loads(
        (runs / "toy-seeded" / "cells" / "toy-base" / "negprompt" / "star" / "result.json").read_text()
    )
    assert stored["alteration"]["paired_feature_distance"] > 0


def test_a_run_applies_the_eraser_as_the_application_says_and_refuses_to_mix_two_ways(
    toy_weights, tmp_path, monkeypatch
):
    folder = tmp_path / "apps"
    folder.mkdir()
    app_file = folder / "toy-seeded.yaml"
    app_file.write_text(yaml.safe_dump(SEEDED_APP | {"fit_seeds": [0], "apply": {"spm-hardened": {"least": 1.0}}}))
    monkeypatch.setenv("SPMBENCH_APPS", str(folder))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    base = ["run", "--app", "toy-seeded", "--models", "toy-base", "--erasers", "none,spm-hardened"]
    result = invoke(*base, "--out", runs, "--reports", reports)
    assert result.exit_code == 0, result.output
    cell = runs / "toy-seeded" / "cells" / "toy-base" / "spm-hardened" / "star"
    assert json.loads((cell / "eraser.json").read_text())["applied"]["least"] == 1.0
    app_file.write_text(yaml.safe_dump(SEEDED_APP | {"fit_seeds": [0], "apply": {"spm-hardened": {"least": 0.5}}}))
    result = invoke(*base, "--out", runs, "--reports", reports)
    assert result.exit_code != 0 and "'least': 1.0" in result.output and f"delete {cell}" in result.output
