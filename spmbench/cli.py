"""`spmbench`: the evaluation suite's command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark concept erasers.")
toy = typer.Typer(no_args_is_help=True, help="The embedded toy world.")
app.add_typer(toy, name="toy")


@toy.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def toy_train(ctx: typer.Context) -> None:
    """Retrain the toy world from nothing, resumably (`spmbench toy train --help` for settings)."""
    from spmbench.toy.cli import main as toy_main

    toy_main(list(ctx.args))


@toy.command(
    "card",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def toy_card(ctx: typer.Context) -> None:
    """Measure the toy world with its judge and write reports/toyworld.md (`--help` for settings)."""
    from spmbench.toy.cli import card_main

    card_main(list(ctx.args))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _registries():
    from spmbench.apps import load_apps
    from spmbench.specs import SpecError, load_models

    try:
        from spmbench.erasers import ERASERS  # registers the released-checkpoint YAML files too

        return load_models(), load_apps(), ERASERS
    except SpecError as e:
        _fail(str(e))


@app.command("ls")
def ls(kind: str = typer.Argument(..., help="models, apps or erasers")) -> None:
    """List a registry."""
    models, apps, erasers = _registries()
    if kind == "models":
        for m in models:
            derived = f" (from {m.derived_from})" if m.derived_from else ""
            typer.echo(f"{m.name:22s} {m.world:5s} {m.family:4s} {m.source}{derived}")
    elif kind == "apps":
        for a in apps:
            typer.echo(f"{a.name:16s} v{a.version} {a.world:5s} erase {' | '.join(' + '.join(e) for e in a.erase)}")
    elif kind == "erasers":
        for name in erasers.names():
            typer.echo(name)
    else:
        _fail(f"unknown registry {kind!r}: choose models, apps or erasers")


JUDGES = ("toy", "clip", "nudenet", "imagenet")
DEFAULT_CLASSIFIER = "microsoft/resnet-50"  # spmbench.judges.imagenet.DEFAULT_CLASSIFIER, without importing torch


def _classifier_labels(classifier: str) -> dict | None:
    """The classifier's id2label if its config is on this machine (validate downloads nothing)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(classifier, local_files_only=True).id2label
    except (OSError, ValueError):  # not cached (or not a valid name or folder)
        return None


@app.command()
def validate(
    classifier: str = typer.Option(DEFAULT_CLASSIFIER, help="ImageNet classifier whose labels 'imagenet' apps use"),
) -> None:
    """Load every model and application file and say what is wrong, if anything."""
    from spmbench.judges.toy import concept_label

    models, apps, _ = _registries()
    labels = None
    for a in apps:
        if a.judge not in JUDGES:
            _fail(f"{a.path}: unknown judge {a.judge!r}; available: {', '.join(JUDGES)}")
        if a.world == "toy":
            try:
                for targets in a.erase:
                    for row in a.rows(targets, limit=None):
                        concept_label(row.concept)
            except ValueError as e:
                _fail(f"{a.path}: {e}")
        if a.judge == "imagenet":
            from spmbench.judges.imagenet import label_index

            labels = labels if labels is not None else _classifier_labels(classifier)
            if labels is None:
                typer.echo(f"note: {classifier} is not on this machine; {a.name}'s classes were not checked")
                continue
            named = {t for e in a.erase for t in e} | {
                c for ps in a.prompt_sets if isinstance(ps.concepts, tuple) for c in ps.concepts
            }
            try:
                for concept in sorted(named):
                    label_index(concept, labels)
            except ValueError as e:
                _fail(f"{a.path}: {e} (classifier {classifier})")
    typer.echo(f"ok: {len(models)} models, {len(apps)} applications")


def _judge(name: str, device: str, clip_model: str, classifier: str = DEFAULT_CLASSIFIER):
    from spm.models import TOY_WEIGHTS
    from spmbench.judges.toy import ToyJudge

    if name == "nudenet":
        from spmbench.judges.nudenet import NudeNetJudge

        return NudeNetJudge()
    if name == "clip":
        from spmbench.judges.clip import ClipJudge

        return ClipJudge(clip_model, device)
    if name == "imagenet":
        from spmbench.judges.imagenet import ImageNetJudge

        return ImageNetJudge(classifier, device)
    if name != "toy":
        _fail(f"unknown judge {name!r}; available: {', '.join(JUDGES)}")
    if not (TOY_WEIGHTS / "judge" / "judge.json").exists():
        _fail(f"the toy judge is not trained yet: run `spmbench toy train` (expected in {TOY_WEIGHTS / 'judge'})")
    return ToyJudge(TOY_WEIGHTS / "judge", device)


@app.command()
def run(
    app_name: str = typer.Option(..., "--app", help="application name (spmbench ls apps), or 'all'"),
    models_sel: str = typer.Option("toy", "--models", help="'all', 'toy', 'real' or comma-separated names"),
    erasers_sel: str = typer.Option(
        "none,spm,spm-rel,spm-noft", "--erasers", help="comma-separated eraser names, or 'all' (every built-in eraser)"
    ),
    limit: int | None = typer.Option(None, help="at most this many prompts per prompt set (smoke runs)"),
    out: Path = typer.Option(Path("runs"), help="run directories go here"),
    reports: Path = typer.Option(Path("reports"), help="tables go to REPORTS/<app>/"),
    batch_size: int = 32,
    device: str = "cpu",
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and stop"),
    rescore: bool = typer.Option(
        False, "--rescore", help="score the stored images again (after the judge changed); nothing is regenerated"
    ),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", help="CLIP for real-model applications"),
    classifier: str = typer.Option(DEFAULT_CLASSIFIER, help="ImageNet classifier for the object application"),
) -> None:
    """Plan, fit, generate, score and report; a rerun computes only what is missing."""
    models, apps, _ = _registries()  # first: a malformed spec file is a one-line error
    from spmbench import report, runner
    from spmbench.erasers import BUILTIN
    from spmbench.registry import UnknownName
    from spmbench.specs import select_models

    try:
        named = None if app_name == "all" else apps.get(app_name)
        chosen_models = select_models(models, models_sel, world=named.world if named else "toy")
        worlds = {m.world for m in chosen_models}
        if len(worlds) != 1:
            _fail(f"--models mixes worlds {sorted(worlds)}: run the toy and the real models separately")
        world = worlds.pop()
        chosen_apps = [named] if named else [a for a in apps if a.world == world]
        if named and named.world != world:
            _fail(f"application {named.name} is for {named.world} models, but --models selected {world} ones")
        erasers = list(BUILTIN) if erasers_sel == "all" else [e.strip() for e in erasers_sel.split(",") if e.strip()]
        for a in chosen_apps:
            cells = runner.plan(a, chosen_models, erasers)
            typer.echo(f"{a.name}: {len(cells)} cells")
            if dry_run:
                for cell in cells:
                    typer.echo(f"  {cell.key}")
                continue
            started = time.monotonic()
            judge = _judge(a.judge, device, clip_model, classifier)
            try:
                results = runner.run(a, cells, out / a.name, judge, models, limit, batch_size, device, rescore)
            except (runner.FitSettingsChanged, runner.JudgeChanged) as e:
                _fail(str(e))
            for path in report.write_reports(a, out / a.name, reports / a.name):
                typer.echo(f"wrote {path}")
            typer.echo(report.markdown(a, results))
            typer.echo(f"{a.name}: {len(cells)} cells in {(time.monotonic() - started) / 60:.1f} min (this run)")
    except UnknownName as e:
        _fail(str(e))


@app.command("report")
def report_cmd(run_dir: Path, reports: Path = typer.Option(Path("reports"))) -> None:
    """Rebuild the tables of RUN_DIR from its stored results (nothing is recomputed)."""
    from spmbench import report

    _, apps, _ = _registries()
    results = report.load_results(run_dir)
    if not results:
        _fail(f"no results under {run_dir}/cells: run `spmbench run` first")
    a = apps.get(results[0]["app"])
    for path in report.write_reports(a, run_dir, reports / a.name):
        typer.echo(f"wrote {path}")


def main() -> None:
    app()
