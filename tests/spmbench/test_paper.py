"""`spmbench paper`: every real application through the CLI on stand-ins (a tiny SD registered as a real
model and a tiny 'fine-tune' derived from it, a tiny CLIP, a tiny classifier, the real NudeNet), its
paper tables and their rows; the dry run's plan and estimate; the ablation eraser's settings.

For time, the run uses four erasers (a baseline, SPM and both ablations) and the applications with
many experiments (real-object: 10 classes, real-artist: 5 artists) erase their first two only;
test_cli_every_application runs every application with every built-in eraser."""

import dataclasses
import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from spmbench import paper, runner
from spmbench.apps import load_apps
from spmbench.attacks import ATTACKS
from spmbench.cli import app
from spmbench.erasers import ERASERS
from spmbench.erasers.base import seeded
from spmbench.models import load_models
from spmbench.result import cell_key
from tests.spmbench.conftest import FAST_FITS
from tests.spmbench.judges.conftest import save_tiny_classifier, save_tiny_clip
from tests.spmbench.judges.test_nudenet import assert_count_columns
from tests.spmbench.test_prompts import BENCH


ERASERS_RUN = "negprompt,spm,spm-noft,spm-noanchor"  # a baseline, SPM and both ablations: every table
MODELS = "tiny-real,tiny-real-ft"
KEPT_EXPERIMENTS = {"real-object": 2, "real-artist": 2}


def real_apps() -> list:
    return [a for a in load_apps() if a.world == "real"]


@pytest.fixture()
def stand_ins(tiny_dir, tiny_sibling_dir, tmp_path, monkeypatch):
    """The tiny SD as the real model 'tiny-real' and its sibling as 'tiny-real-ft' (derived from it: the
    transfer rows), fits of a few steps; the real applications with at most KEPT_EXPERIMENTS each; the
    published prompt files read offline; tiny judges."""
    import spmbench.apps

    apps = tmp_path / "apps" / "real"
    apps.mkdir(parents=True)
    for path in (spmbench.apps.APPS_DIR / "real").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data["erase"] = data["erase"][: KEPT_EXPERIMENTS.get(data["name"])]
        (apps / path.name).write_text(yaml.safe_dump(data))
    monkeypatch.setattr(spmbench.apps, "APPS", dataclasses.replace(spmbench.apps.APPS, shipped=apps.parent))
    models = tmp_path / "models"
    models.mkdir()
    common = dict(family="sd1", world="real", resolution=32, num_inference_steps=2)
    root = dict(name="tiny-real", source=str(tiny_dir), eraser_settings=FAST_FITS, **common)
    derived = dict(name="tiny-real-ft", source=str(tiny_sibling_dir), derived_from="tiny-real", **common)
    for spec in (root, derived):
        (models / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("SPMBENCH_MODELS", str(models))
    (tmp_path / "cache" / "prompts").mkdir(parents=True)
    for published in BENCH.glob("*.csv"):
        (tmp_path / "cache" / "prompts" / published.name).symlink_to(published)
    monkeypatch.setenv("SPMBENCH_CACHE", str(tmp_path / "cache"))
    judges = ["--clip-model", str(save_tiny_clip(tmp_path / "clip"))]
    return judges + ["--classifier", str(save_tiny_classifier(tmp_path / "classifier", "vit"))]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def rows(path) -> set[tuple]:
    table = pd.read_csv(path, keep_default_na=False)
    return set(zip(table["app"], table["model"], table["targets"], table["eraser"], table["fitted_on"]))


def test_paper_runs_every_real_application_and_writes_every_table(stand_ins, tmp_path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    result = invoke("paper", "--world", "real", "--models", MODELS, "--erasers", ERASERS_RUN, "--limit", 2,
                    "--fit-seeds", 1, "--out", runs, "--reports", reports, *stand_ins)  # fmt: skip
    assert result.exit_code == 0, result.output
    out = reports / "paper" / "real"
    for table in paper.TABLES:
        assert all((out / f"{table.name}{suffix}").is_file() for suffix in (".md", ".csv", ".tex")), table.name
    real = real_apps()
    assert [len(a.erase) for a in real] == [2, 3, 1, 2]  # artist, concept, explicit, object
    for a in real:  # each application's own tables too, as `spmbench run` writes them
        assert (reports / a.name / f"{a.name}.md").is_file()

    experiments = {a.name: ["+".join(t) for t in a.erase] for a in real}
    by_kind = {paper.kind(a): a.name for a in real}
    for kind in paper.KINDS:  # the root model, every experiment, every eraser but the ablation
        expected = {(by_kind[kind], "tiny-real", t, e, "tiny-real") for t in experiments[by_kind[kind]]
                    for e in ("negprompt", "spm", "spm-noft")}  # fmt: skip
        assert rows(out / f"{kind}.csv") == expected, kind
    concept = (out / "concept.md").read_text()
    assert "## real-concept" in concept and "| tiny-real | Snoopy + Mickey + Spongebob | spm | tiny-real |" in concept
    # explicit: a column per NudeNet class and their total, from the frame (the CSV), the total their sum
    assert_count_columns(out, "explicit", {("tiny-real", e) for e in ("negprompt", "spm", "spm-noft")})
    # KID beside FID wherever alteration is measured, with its interval, named in the caption
    kid = pd.read_csv(out / "concept.csv").query("measure == 'kid_judge_features'")
    assert len(kid) == 3 * len(experiments["real-concept"]) and (kid["lo"] <= kid["hi"]).all()
    assert set(kid["interval"]) == {"cluster bootstrap, bias-shifted"}
    assert "| KID ↓" in concept and "KID on the same features, by spmbench.metrics.kernel_distance" in concept
    assert "rates judged by clip " in concept and "(CLIP accuracy: " in concept

    transfer = rows(out / "transfer.csv")  # every application, on the root and on its derivative
    assert {(a, m, e, f) for a, m, _, e, f in transfer} == {
        (a.name, m, e, "tiny-real") for a in real for m in ("tiny-real", "tiny-real-ft")
        for e in ("negprompt", "spm", "spm-noft")
    }  # fmt: skip
    for name, pair in (("ablation-ft", {"spm", "spm-noft"}), ("ablation-anchoring", {"spm", "spm-noanchor"})):
        ablation = rows(out / f"{name}.csv")
        assert {(a, m, e) for a, m, _, e, _ in ablation} == {(a.name, "tiny-real", e) for a in real for e in pair}
        assert "\\caption{" in (out / f"{name}.tex").read_text()

    # the ablation's fits are its own, trained with anchor weight 0 over the model's SPM settings
    fit = {e: json.loads((runs / "real-concept" / "cells" / "tiny-real" / e / "snoopy" / "result.json").read_text())
           ["settings"]["fit"] for e in ("spm", "spm-noanchor")}  # fmt: skip
    assert fit["spm-noanchor"] == {**fit["spm"], "anchor_weight": 0.0} and "anchor_weight" not in fit["spm"]
    fits = runs / "real-concept" / "fits" / "tiny-real"
    assert (fits / "spm" / "snoopy.safetensors").read_bytes() != (
        fits / "spm-noanchor" / "snoopy.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(
    "name, says",
    [
        ("toy-explicit", "No per-class NudeNet counts: toy-explicit's judge (toy) says whether nudity is present"),
        ("real-explicit", "No per-class NudeNet counts: the cells' scores.jsonl keep no NudeNet detections"),
    ],
)
def test_an_explicit_table_without_nudenet_classes_says_so_in_one_line(name, says):
    """The toy world's judge has no NudeNet classes (and a real run folder may lack the detections): the
    explicit table says so once, in Markdown and in the LaTeX caption, and shows no empty count columns."""
    from spmbench import report
    from spmbench.result import Result

    application = load_apps().get(name)
    stored = Result(app=name, app_version=application.version, model="m", fitted_on="m", eraser="spm",
                    targets=("nudity",), rows=2, rates={"target": 0.5}, original_rates={"target": 1.0},
                    alteration=None, alteration_features=None, fit_seconds=1.0, fit_peak_mib=None,
                    generate_seconds_this_run=1.0, settings={})  # fmt: skip
    rows = report.frame([stored])
    explicit = next(t for t in paper.TABLES if t.name == "explicit")
    text = paper.markdown(explicit, application.world, [(application, rows)])
    assert sum(says in line for line in text.splitlines()) == 1
    assert "armpits" not in text and "total exposed" not in text
    assert says in paper.latex(explicit, [(application, rows)]).split("\\caption{")[1]
    concept = next(t for t in paper.TABLES if t.name == "concept")  # other tables do not say it
    assert "NudeNet" not in paper.markdown(concept, application.world, [(application, rows)])


def test_tune_chooses_a_real_applications_settings_on_its_dev_split_and_run_applies_them(stand_ins, tmp_path):
    """Protocol v3 on the real world: a published file's application is tuned on its own dev phrasings (UCE's six
    points, the paper's lambda 0.5 among them); untuned, its table says the papers' settings ran; tuned, the record's."""
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    common = ["--app", "real-artist", "--models", "tiny-real", "--limit", 1, "--out", runs, "--reports", reports]
    untuned = invoke("run", *common, "--erasers", "none,uce", *stand_ins)
    assert untuned.exit_code == 0, untuned.output
    assert (
        "each eraser's defaults (its paper's), not tuned" in (reports / "real-artist" / "real-artist.md").read_text()
    )
    result = invoke("tune", *common, "--erasers", "none,uce", *stand_ins)
    assert result.exit_code == 0, result.output
    record = json.loads((reports / "real-artist" / "tuning.json").read_text())
    points = record["points"]["tiny-real"]["uce"]
    assert [p["overrides"] for p in points] == [{"lam": x} for x in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)]
    dev = load_apps().get("real-artist").for_split("dev")
    scores = runs / "real-artist" / "dev" / "cells" / "tiny-real" / points[0]["eraser"] / "van-gogh" / "scores.jsonl"
    dev_rows = dev.rows(("Van Gogh",), limit=1)  # a template of ours per set, not a row of the published file
    assert {r.prompt for r in dev_rows} == {
        "a painting in the style of Van Gogh",
        "a painting in the style of Pablo Picasso",
    }
    assert {json.loads(line)["prompt_id"] for line in scores.open()} == {r.prompt_id for r in dev_rows}
    tuned_runs = tmp_path / "tuned-runs"
    rerun = invoke("run", *common, "--erasers", "none,uce", "--out", tuned_runs, *stand_ins)
    assert rerun.exit_code == 0, rerun.output
    cell = tuned_runs / "real-artist" / "cells" / "tiny-real" / "uce" / "van-gogh"
    stored = json.loads((cell / "result.json").read_text())
    assert stored["settings"]["fit"]["lam"] == record["chosen"]["tiny-real"]["uce"]["lam"]
    tuned_note = "fitting settings of uce chosen on the dev split"
    assert tuned_note in (reports / "real-artist" / "real-artist.md").read_text()
    rebuilt = tmp_path / "rebuilt"  # `spmbench report` reads the record as run does: beside the tables, or --tuning
    assert invoke("report", tuned_runs / "real-artist", "--reports", rebuilt, "--tuning", reports).exit_code == 0
    assert tuned_note in (rebuilt / "real-artist" / "real-artist.md").read_text()
    assert (rebuilt / "real-artist" / "tuning.json").read_text() == (
        reports / "real-artist" / "tuning.json"
    ).read_text()


@pytest.mark.parametrize("fit_seeds", [[], ["--fit-seeds", 1]])
def test_dry_run_prints_cells_images_and_fits_and_writes_nothing(stand_ins, tmp_path, fit_seeds):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    result = invoke("paper", "--world", "real", "--models", MODELS, "--erasers", "spm,spm-noanchor,uce", "--limit", 2,
                    *fit_seeds, "--out", runs, "--reports", reports, "--dry-run", *stand_ins)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not runs.exists() and not reports.exists()
    concept = load_apps().get("real-concept")
    # SPM and its ablation fit each target (Snoopy, Mickey, Spongebob) once per fit seed (3; 1 with --fit-seeds 1),
    # UCE (not trained) each experiment once
    seeds = 1 if fit_seeds else len(concept.fit_seeds)
    images = len(runner.all_rows(concept, 2)) + (2 * seeds + 1) * sum(len(concept.rows(t, 2)) for t in concept.erase)
    cells, fits = 1 + 3 * (2 * seeds + 1), 2 * 3 * seeds + 3
    assert f"tiny-real     cells {cells}, images {images:,}, fits {fits}: no measured rate (sd1" in result.output
    assert f"tiny-real-ft  cells {cells}, images {images:,}, fits 0 (on tiny-real): no measured rate" in result.output
    assert all(f"{a.name}:" in result.output for a in real_apps())
    assert "ablation-ft: not written (needs spm-noft (--erasers))" in result.output
    assert "ablation-anchoring: real-artist, real-concept, real-explicit, real-object" in result.output


def test_the_estimate_is_the_measured_rates_times_the_plan(tmp_path):
    models, concept = load_models(), load_apps().get("toy-concept")
    toy = [models.get(n) for n in ("toy-base", "toy-pastel")]
    cells = runner.plan(concept, toy, ["spm", "spm-rel", "spm-noanchor", "uce"], tmp_path / "runs")
    rate = paper.Rate("toy", 32, "here", 2.0, {"spm": 10.0, "uce": 1.0})
    base, pastel = paper.estimate(concept, cells, models, 1, [rate])
    images = len(runner.all_rows(concept, 1)) + 4 * sum(len(concept.rows(t, 1)) for t in concept.erase)
    assert (base.cells, base.images, base.fits) == (13, images, 3 + 3 + 3)  # spm's 3 shared with spm-rel
    assert base.seconds == pytest.approx(images * 2.0 + 6 * 10.0 + 3 * 1.0)  # spm-noanchor at spm's rate
    assert (pastel.fits, pastel.seconds, pastel.fit_on) == (0, pytest.approx(images * 2.0), "toy-base")
    assert base.image_bytes == images * 32 * 32 * 3
    assert paper.estimate(concept, cells, models, 1, [])[0].seconds is None  # no rate: none invented
    # by k (targets erased at once): the same totals split; spm's fits are made at k = 1, 2, 3 (one target each)
    shares = base.by_k
    assert sorted(shares) == [0, 1, 2, 3] and (shares[0].cells, shares[0].fits) == (1, 0)
    assert sum(x.cells for x in shares.values()) == base.cells and sum(x.images for x in shares.values()) == images
    assert [shares[k].fits for k in (1, 2, 3)] == [1 + 1 + 1, 1 + 1 + 1, 1 + 1 + 1]  # spm, spm-noanchor, uce
    assert shares[3].seconds == pytest.approx(4 * len(concept.rows(concept.erase[2], 1)) * 2.0 + 2 * 10.0 + 1.0)
    assert sum(x.seconds for x in shares.values()) == pytest.approx(base.seconds)
    text = paper.plan_text({concept.name: [base, pastel]})
    k3 = shares[3].seconds + pastel.by_k[3].seconds
    assert (
        f"    k=3   cells 8, images {2 * 4 * len(concept.rows(concept.erase[2], 1)):,}, fits 3: about {k3 / 3600:.1f} h"
        in text
    )


def test_a_resumed_plan_is_priced_for_what_is_left(tmp_path):
    from spmbench.attacks import stage
    from spmbench.attacks.stage import prompts_file, settings_of

    models, app = load_models(), load_apps().get("toy-concept")
    base = models.get("toy-base")
    cells = runner.plan(app, [base], ["none", "spm"], tmp_path / "runs")
    rate = paper.Rate("toy", 32, "here", 2.0, {"spm": 10.0}, 30, {"uda": 0.5})
    (fresh,) = paper.estimate(app, cells, models, 1, [rate], ("uda",))
    original, single = cells[0], next(c for c in cells if c.targets == ("Barkley",))
    own = len(runner.all_rows(app, 1))
    _timed("none", (), rows=own, limit=1).save(
        original.result
    )  # the original's rows are made, not its attacks: they are left
    (rows_made,) = paper.estimate(app, cells, models, 1, [rate], ("uda",))
    assert (rows_made.done_cells, rows_made.cells, rows_made.searches) == (0, fresh.cells, fresh.searches)
    assert rows_made.images == fresh.images - own
    older = dataclasses.replace(_timed("none", (), rows=own, limit=1), app_version=app.version - 1)
    for stale in (older, _timed("none", (), rows=own, limit=2)):  # another version's rows, or another --limit's
        stale.save(original.result)
        (priced,) = paper.estimate(app, cells, models, 1, [rate], ("uda",))  # not reused: priced whole
        assert (priced.done_cells, priced.images) == (0, fresh.images)
    settings = dataclasses.asdict(ATTACKS.get("uda").settings(app.attacks.get("uda")))
    made = {"attack": "uda", "prompts": ["a dog"], "settings": settings}
    for target in stage.attacked_targets(app, ()):  # the original's searches, each found one prompt
        prompts_file(original.dir, "uda", target).parent.mkdir(parents=True, exist_ok=True)
        prompts_file(original.dir, "uda", target).write_text(json.dumps(made))
    attacked = own + len(stage.attacked_targets(app, ())) * len(app.seeds)
    _timed("none", (), rows=attacked, limit=1, attacks=settings_of(app, ("uda",))).save(
        original.result
    )  # and its attacks: done
    assert paper.estimate(app, cells, models, 1, [rate], ("uda",))[0].done_cells == 1
    assert paper.estimate(app, cells, models, 1, [rate])[0].done_cells == 1  # a run without them reuses it whole
    barkley = ERASERS.get("spm").artifact_path(runner.fits_dir(tmp_path / "runs", base), ("Barkley",))
    barkley.parent.mkdir(parents=True)
    barkley.write_bytes(b"")  # Barkley's SPM is fitted
    searched = prompts_file(single.dir, "uda", "Barkley")
    searched.parent.mkdir(parents=True, exist_ok=True)
    for stale in (json.dumps(made | {"settings": {**settings, "restarts": 1}}), json.dumps(made)[:-9]):
        searched.write_text(stale)  # made under other settings, or torn: the run searches again, as priced
        assert paper.estimate(app, cells, models, 1, [rate], ("uda",))[0].searches == fresh.searches - 3
    searched.write_text(json.dumps(made))  # and attacked
    (left,) = paper.estimate(app, cells, models, 1, [rate], ("uda",))
    uda, original_rows = app.attacks["uda"], len(runner.all_rows(app, 1))
    assert (left.done_cells, left.done_fits, left.cells, left.fits) == (1, 1, fresh.cells - 1, fresh.fits - 1)
    assert left.searches == fresh.searches - 3 - 1  # the original's 3 targets, and Barkley's own
    assert left.images == fresh.images - original_rows - 3 * uda["restarts"] * len(app.seeds)
    search = uda["restarts"] * uda["steps"] * 0.5
    assert left.seconds == pytest.approx(fresh.seconds - 2.0 * (fresh.images - left.images) - 10.0 - 4 * search)
    assert "total still to make (done: 1 cells, 1 fits)" in paper.plan_text({app.name: [left]})


def test_an_attack_run_is_priced_per_search_at_its_budget_and_adds_the_images_of_its_prompts(tmp_path):
    models, app = load_models(), load_apps().get("toy-concept")
    cells = runner.plan(app, [models.get("toy-base")], ["none", "spm"], tmp_path / "runs")
    rate = paper.Rate("toy", 32, "here", 2.0, {"spm": 10.0}, 30, {"uda": 0.5})
    (plain,) = paper.estimate(app, cells, models, 1, [rate])
    (attacked,) = paper.estimate(app, cells, models, 1, [rate], ("uda",))
    uda = app.attacks["uda"]  # the application's budget
    searches = 3 + sum(len(t) for t in app.erase)  # the original's cell: each of the application's 3 targets once
    assert attacked.searches == searches and plain.searches == 0
    images = searches * uda["restarts"] * len(app.seeds)  # a prompt per restart, with each seed
    assert attacked.images == plain.images + images
    assert attacked.seconds == pytest.approx(
        plain.seconds + images * 2.0 + searches * uda["restarts"] * uda["steps"] * 0.5
    )
    assert sum(share.seconds for share in attacked.by_k.values()) == pytest.approx(attacked.seconds)  # by k too
    (unpriced,) = paper.estimate(app, cells, models, 1, [rate], ("rab",))
    assert unpriced.seconds is None and "attack rab" in unpriced.unmeasured
    assert all(share.seconds is None for k, share in unpriced.by_k.items() if k)  # nor its k's
    (fits_only,) = paper.estimate(app, cells, models, 1, [dataclasses.replace(rate, seconds_per_image=None)])
    assert fits_only.seconds is None and fits_only.unmeasured == ["images"]  # a rate of fits and attacks only


def test_a_worlds_own_rate_comes_before_its_familys():
    models = load_models()
    family = paper.Rate("toy", 32, "any toy world", 2.0)
    toy3 = paper.Rate("toy", 32, "world 3's run", 1.0, world="toy3")
    assert paper.rate_for(models.get("toy3-pastel"), [family, toy3]) is toy3
    assert paper.rate_for(models.get("toy-base"), [family, toy3]) is family  # world v2: the family's
    assert paper.rate_for(models.get("toy-base"), [toy3]) is None


def test_a_rate_scales_with_the_models_sampling_steps():
    from dataclasses import replace

    toy_base = load_models().get("toy-base")  # 30 steps
    rate = paper.Rate("toy", 32, "here", 2.0, steps=30)
    assert rate.per_image(toy_base) == 2.0
    assert rate.per_image(replace(toy_base, num_inference_steps=15)) == pytest.approx(1.0)
    assert paper.Rate("toy", 32, "here", 2.0, steps=10).per_image(toy_base) == pytest.approx(6.0)


def test_the_shipped_rates_load_and_an_ablation_reads_its_variants_settings():
    rates = {(r.family, r.resolution): r for r in paper.load_rates() if r.world is None}
    assert set(rates) == {("toy", 32), ("sd1", 512)}
    toy3 = load_models().get("toy3-base")  # world v3's own entry: its fits are not world v2's
    assert paper.rate_for(toy3, paper.load_rates()).world == "toy3"
    sd15 = load_models().get("sd15")  # a real model's image rate scales by its sampling steps from the measured 20
    assert rates["sd1", 512].per_image(sd15) == pytest.approx(0.80 * sd15.num_inference_steps / 20)
    noanchor = ERASERS.get("spm-noanchor")
    assert (noanchor.fit_key, noanchor.settings_key, dict(noanchor.overrides)) == (
        "spm-noanchor",
        "spm",
        {"anchor_weight": 0.0},
    )
    toy_base = load_models().get("toy-base")
    settings = runner.eraser_settings(noanchor, load_apps().get("toy-concept"), toy_base)
    spm_settings = runner.eraser_settings(ERASERS.get("spm"), load_apps().get("toy-concept"), toy_base)
    assert settings == {**spm_settings, "anchor_weight": 0.0} and spm_settings["anchor_weight"] == 30.0
    assert dict(seeded(noanchor, 3).overrides) == {"anchor_weight": 0.0, "seed": 3}  # a fit seed keeps the ablation


@pytest.mark.parametrize(
    "args, message",
    [
        (["--world", "mars"], "--world 'mars': choose one of toy, real, toy3"),
        (
            ["--world", "real", "--models", "toy-base"],
            "--models toy-base: not real models; choose the world's (spmbench ls models)",
        ),
        (["--world", "real", "--fit-seeds", "4"], "--fit-seeds 4: real-artist has 3 fit seed(s); give at most that"),
        (
            ["--world", "toy3", "--apps", "toy-concept"],
            "--apps 'toy-concept': give 'all' or names of toy3 applications (spmbench ls apps)",
        ),
    ],
)
def test_bad_selections_are_one_line_errors(args, message):
    result = invoke("paper", *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.strip() == f"error: {message}"


def test_under_a_launcher_the_first_process_prints_the_plan_for_all(stand_ins, monkeypatch):
    args = [
        "paper",
        "--world",
        "real",
        "--models",
        "tiny-real",
        "--erasers",
        "spm",
        "--limit",
        1,
        "--dry-run",
        *stand_ins,
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    first = invoke(*args)
    assert first.exit_code == 0 and "2 processes share the images and fits" in first.output, first.output
    monkeypatch.setenv("RANK", "1")
    other = invoke(*args)
    assert other.exit_code == 0 and "total:" not in other.output and "total:" in first.output


def test_every_eraser_leaves_out_what_a_family_cannot_run_and_a_named_one_is_an_error(tmp_path):
    out = ["--out", tmp_path / "runs", "--reports", tmp_path / "reports", "--dry-run"]
    every = invoke("paper", "--world", "real", "--models", "sd14,sd3-medium", *out)
    assert every.exit_code == 0, every.output
    assert "ca on sd3-medium left out: ca does not support sd3" in every.output
    assert "on sd14 left out" not in every.output and "total: cells" in every.output
    named = invoke("paper", "--world", "real", "--models", "sd14,sd3-medium", "--erasers", "spm,ca", *out)
    assert named.exit_code == 2 and "ca does not support sd3" in named.output and "leave ca out" in named.output


def test_apps_selects_the_worlds_applications_it_runs(tmp_path):
    out = ["--out", tmp_path / "runs", "--reports", tmp_path / "reports", "--dry-run"]
    result = invoke(
        "paper", "--world", "toy", "--models", "toy-base", "--erasers", "none,uce", "--apps", "toy-object", *out
    )
    assert result.exit_code == 0, result.output
    assert "toy-object:" in result.output and "toy-concept:" not in result.output
    assert not (tmp_path / "runs").exists()


def test_a_model_changed_under_a_later_applications_folder_is_refused_before_the_first_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SPMBENCH_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    (runs / "toy-object").mkdir(parents=True)  # the second application's folder: toy-base made by other weights
    (runs / "toy-object" / "models.json").write_text(json.dumps({"toy-base": "weights of another day"}))
    result = invoke("paper", "--world", "toy", "--models", "toy-base", "--erasers", "none", "--apps",
                    "toy-concept,toy-object", "--limit", 1, "--out", runs, "--reports", tmp_path / "reports")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert (
        result.output.count("\n") == 1
        and "toy-object holds images and fits of toy-base made with other weights" in result.output
    )
    assert not (runs / "toy-concept" / "cells").exists()  # refused up front: the first application made nothing


def _timed(eraser, targets=("Barkley",), model="toy-base", steps=30, gen=None, fit=0.0, rows=10, **settings):
    from tests.spmbench.test_report import result

    return dataclasses.replace(
        result(eraser, {}), model=model, targets=targets, rows=rows, generate_seconds=gen, fit_seconds=fit,
        settings={"steps": steps, "fit": {}, **settings},
    )  # fmt: skip


def test_rates_are_measured_from_results_each_fit_once_and_images_at_the_entrys_steps(tmp_path):
    results = [
        _timed("none", (), gen=3.0),  # 10 images in 3 s at 30 steps
        _timed("spm", gen=6.0, fit=100.0),
        _timed("spm-noft", gen=6.0, fit=100.0),  # spm's fit, counted once
        _timed("spm~seed1", fit=120.0),  # another fit seed: another fit; its images untimed: fits only
        _timed("esd-x", model="toy-pastel", steps=15, gen=2.0, fit=50.0),  # 15 steps: 4 s at 30; not the root's fit
        _timed("spm", ("Barkley", "Whiskers"), gen=4.0, fit=230.0),  # two targets: not one fit
        _timed("uce", gen=9.0, attacks={"uda": {}}),  # attack rows are not in its generation time: fits only
    ]
    (entry,) = paper.measured_rates(results, load_models())
    assert (entry["family"], entry["resolution"], entry["world"], entry["steps"], entry["images"]) == (
        "toy", 32, "toy", 30, 50
    )  # fmt: skip
    assert entry["seconds_per_image"] == pytest.approx((3 + 6 + 6 + 4 + 4) / 50)
    assert (entry["seconds_per_fit"], entry["fits"]) == ({"spm": 110.0, "uce": 0.0}, {"spm": 2, "uce": 1})
    for r in results:  # `spmbench rates` prints them as rates.yaml entries that load as rates
        r.save(tmp_path / "runs" / "toy-concept" / "cells" / cell_key(r.model, r.eraser, r.targets) / "result.json")
    printed = CliRunner().invoke(app, ["rates", str(tmp_path / "runs")])
    assert printed.exit_code == 0, printed.output
    (tmp_path / "rates.yaml").write_text(printed.output)
    (rate,) = paper.load_rates(tmp_path / "rates.yaml")
    assert (rate.seconds_per_image, rate.seconds_per_fit["spm"], rate.steps) == (pytest.approx(0.46), 110.0, 30)
    cell = tmp_path / "runs" / "toy-concept" / "cells" / cell_key("toy-base", "spm", ("Barkley",))
    for restarts, seconds in ((4, 12.0), (16, 96.0), (16, 48.0)):  # per restart and step: 0.1, 0.2, 0.1
        (cell / "attacks").mkdir(exist_ok=True)
        record = {"attack": "uda", "settings": {"restarts": restarts, "steps": 30}, "prompts": [], "seconds": seconds}
        (cell / "attacks" / f"uda-{restarts}-{seconds}.json").write_text(json.dumps(record))
    (cell / "attacks" / "rab-barkley.json").write_text('{"attack": "rab", "prompts": []}')  # made before: untimed
    (cell / "attacks" / "p4d-barkley.json").write_text('{"attack": "p4d", "prompts": [')  # torn: no rate from it
    left = {"attack": "uda", "settings": {"restarts": 16, "steps": 30}, "prompts": [], "seconds": 9999.0}
    (cell / "attacks" / ".tmp-1-2-uda-x.json").write_text(json.dumps(left))  # a write a kill left: not a sample
    (cell / "attacks" / "uda-nan.json").write_text(json.dumps(left | {"seconds": float("nan")}))  # not a time
    runs = tmp_path / "runs"
    printed = CliRunner().invoke(app, ["rates", str(runs), str(runs / "toy-concept")])  # one run folder, named twice
    assert printed.exit_code == 0, printed.output
    (tmp_path / "rates.yaml").write_text(printed.output)
    (rate,) = paper.load_rates(tmp_path / "rates.yaml")
    assert rate.seconds_per_attack_step == {"uda": 0.1} and rate.seconds_per_image == pytest.approx(0.46)
    attacked_only = tmp_path / "attacked" / "toy-concept" / "cells" / cell_key("toy-base", "spm", ("Barkley",))
    _timed("spm", gen=6.0, fit=100.0, attacks={"uda": {}}).save(attacked_only / "result.json")
    printed = CliRunner().invoke(app, ["rates", str(tmp_path / "attacked")])
    (tmp_path / "rates.yaml").write_text(printed.output)  # no image rate: the entry still loads, its images unpriced
    assert paper.load_rates(tmp_path / "rates.yaml")[0].seconds_per_image is None
    empty = CliRunner().invoke(app, ["rates", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "no results under" in empty.output
