"""`spmbench`: the evaluation suite's command line."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import NoReturn

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


def _fail_on(problem: str | None) -> None:
    if problem:
        _fail(problem)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _registries():
    from spmbench.apps import load_apps
    from spmbench.models import load_models
    from spmbench.specs import SpecError

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
            typer.echo(f"{m.name:22s} {m.world:5s} {m.family:4s} {_shown(m.source)}{derived}")
    elif kind == "apps":
        for a in apps:
            typer.echo(f"{a.name:16s} v{a.version} {a.world:5s} erase {' | '.join(' + '.join(e) for e in a.erase)}")
    elif kind == "erasers":
        for name in erasers.names():
            typer.echo(name)
    else:
        _fail(f"unknown registry {kind!r}: choose models, apps or erasers")


def _shown(source: str) -> str:
    """A source as `spm --model` takes it from here: a path under the working folder relative to it."""
    path = Path(source)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else source


def _judge_settings(given: list[str], clip_model: str | None, classifier: str | None) -> dict[str, dict]:
    """--judge-setting JUDGE.NAME=VALUE (and the shorthands --clip-model, --classifier), by judge name,
    checked against each judge's own settings before any work."""
    from spmbench import judges
    from spmbench.registry import UnknownName

    settings: dict[str, dict] = {}
    for item in given:
        key, equals, value = item.partition("=")
        judge, dot, name = key.strip().partition(".")
        if not (equals and dot and judge and name):
            _fail(f"--judge-setting {item!r}: write JUDGE.SETTING=VALUE, e.g. nudenet.threshold=0.5")
        settings.setdefault(judge, {})[name] = value
    for judge, name, value in (("clip", "model", clip_model), ("imagenet", "model", classifier)):
        if value is not None:
            settings.setdefault(judge, {})[name] = value
    try:
        return {judge: judges.check_settings(judge, chosen) for judge, chosen in settings.items()}
    except (UnknownName, ValueError) as e:
        _fail(f"--judge-setting: {e}")


_JUDGE_SETTING_HELP = "a judge's setting, JUDGE.SETTING=VALUE (e.g. nudenet.threshold=0.5, clip.model=...); repeatable"
_CLIP_HELP = "CLIP for real-model applications and alteration features (shorthand for -J clip.model=...)"
_REAL_IMAGES_HELP = (
    "SET=DIR: a folder of real images that every cell's images of prompt set SET are also measured against (FID), "
    "e.g. coco=/data/coco/val2014 for the explicit application's COCO captions; repeatable"
)
_CLASSIFIER_HELP = "ImageNet classifier for the object application (shorthand for -J imagenet.model=...)"


def _real_images(given: list[str], chosen_apps: list) -> dict:
    """--real-images, checked against the chosen applications' prompt sets (a one-line error otherwise)."""
    from spmbench.real_images import parse

    return parse(given, {ps.name for a in chosen_apps for ps in a.prompt_sets}) if given else {}


def _concept_checks(a, settings: dict) -> list[tuple[str, list[str], dict]]:
    """Each judge of the application with the concepts the spec asks it about (files are not read) and its
    settings: the application's judge (every target, every listed concept of its sets), then each set's own."""
    own = a.set_judges()
    named = [t for e in a.erase for t in e] + [
        c for ps in a.prompt_sets if ps.name not in own and isinstance(ps.concepts, tuple) for c in ps.concepts
    ]
    checks = [(a.judge, named, settings.get(a.judge) or {})]
    for ps in (ps for ps in a.prompt_sets if ps.name in own):
        concepts = list(ps.concepts) if isinstance(ps.concepts, tuple) else []
        checks.append((ps.judge, concepts, {**(settings.get(ps.judge) or {}), **ps.judge_settings}))
    return checks


def _concept_problem(a, settings: dict) -> str | None:
    """The judges' concept checks on the application (None also where they cannot be checked offline)."""
    from spmbench import judges
    from spmbench.judges.base import ConceptsUnchecked
    from spmbench.registry import UnknownName

    for judge, concepts, chosen in _concept_checks(a, settings):
        try:
            judges.check_concepts(judge, concepts, chosen)
        except ConceptsUnchecked as e:
            typer.echo(f"note: {a.name}: {e}")
        except (UnknownName, ValueError) as e:
            return f"{a.path}: {e}"
    return None


@app.command()
def validate(
    judge_setting: list[str] = typer.Option([], "--judge-setting", "-J", help=_JUDGE_SETTING_HELP),
    classifier: str | None = typer.Option(None, help=_CLASSIFIER_HELP),
) -> None:
    """Load every model and application file and say what is wrong, if anything."""
    models, apps, erasers = _registries()
    judge_settings = _judge_settings(judge_setting, None, classifier)
    problems = _selection_problems(list(apps), list(models), list(erasers), judge_settings)
    problems += _settings_problems(models, apps, erasers)
    for problem in dict.fromkeys(problems):
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(2)
    typer.echo(f"ok: {len(models)} models, {len(apps)} applications")


def _selection_problems(apps: list, models: list, erasers: list, judge_settings: dict) -> list[str]:
    """What `validate` checks of these applications, models and erasers, without loading a model: what
    `run` (and its dry run) checks of its selection before any work."""
    problems = [p for m in models if (p := _source_problem(m))]
    problems += [p for e in erasers if (p := _released_problem(e))]
    for a in apps:
        problems += _app_problems(a, judge_settings)
    return problems


def _source_problem(model) -> str | None:
    """What loading the model would say of its source, without loading it."""
    try:
        model.resolve()
    except ValueError as e:
        return f"{model.origin}: {e}"
    except FileNotFoundError:  # a toy model not trained yet: run says so, and how to train it
        pass
    return None


def _released_problem(eraser) -> str | None:
    from spmbench.erasers.released import Released

    try:
        if isinstance(eraser, Released):
            eraser.components()  # finds the weight files; loads nothing
    except (OSError, ValueError) as e:
        return str(e)
    return None


def _settings_problems(models, apps, erasers) -> list[str]:
    """The fitting settings, checked as `run` checks them (runner.settings_problem): every application
    with every model of its world and one eraser per settings key; and settings a run ignores silently."""
    from spmbench import runner

    by_key: dict[str, object] = {}
    for e in erasers:  # by name: 'spm' comes before 'spm-noft' and 'spm-rel', which share its settings
        by_key.setdefault(e.fit_key, e)
    specs = [(m.origin, m.eraser_settings) for m in models] + [(a.path, a.eraser_settings) for a in apps]
    problems = [f"{origin}: eraser_settings.{key}: {_unknown_key(key, by_key)}"
                for origin, settings in specs for key in settings if key not in by_key]  # fmt: skip
    problems += [p for m in models if (p := _unread_model_settings(m, models))]
    for a in apps:
        cells = runner.plan(a, [m for m in models if m.world == a.world], [e.name for e in by_key.values()], Path())
        problems += [p for cell in cells if (p := runner.settings_problem(a, [cell], models))]
    return problems


def _unread_model_settings(model, models) -> str | None:
    """A derived model's eraser_settings, which no run reads: its erasers are fitted on its family's root."""
    from spmbench.runner import fit_model_for

    root = fit_model_for(model, models)
    if not model.eraser_settings or root is model:
        return None
    return (
        f"{model.origin}: eraser_settings are never read: {model.name} reuses the fits of {root.name}, "
        f"made with the settings in {root.origin}: move them there"
    )


def _unknown_key(key: str, by_key: dict) -> str:
    from spmbench.erasers import ERASERS

    if key in ERASERS:
        return f"{key} shares the settings of {ERASERS.get(key).fit_key!r}: put them there"
    return f"no such eraser; use one of {', '.join(by_key)}"


def _app_problems(a, judge_settings: dict) -> list[str]:
    """The application's prompt files, and its concepts checked by its judge."""
    from spmbench.prompts import check_source

    problems = []
    for ps in [ps for ps in a.prompt_sets if ps.file]:
        try:
            check_source(ps.file)
        except ValueError as e:
            problems.append(f"{a.path}: prompts.{ps.name}: {e}")
    return problems or [p for p in [_concept_problem(a, judge_settings)] if p]


def _judges_for(a, judge_settings: dict, device: str):
    """The application's judge, and the source of its alteration features (said when it is another judge)."""
    from spmbench import judges

    judge = judges.build_for(a, judge_settings, device)
    _fail_on(_concept_problem(a, judge_settings))  # again: a classifier downloaded just now is checked too
    if not judge.has_features:
        source = judges.feature_source_name(judge, a.world)
        typer.echo(f"{a.name}: the {a.judge} judge gives no image features; alteration is measured on {source}'s")
    return judge, judges.alteration_features(judge, a.world, judge_settings, device)


def _chosen(models, apps, app_name: str, models_sel: str) -> tuple[list, list]:
    """The models `--models` selects and the applications `--app` names ('all': every one of the models'
    world), for `run` and `tune`; a selection that names nothing or mixes worlds is a one-line error."""
    from spmbench.models import select_models

    named = None if app_name == "all" else apps.get(app_name)
    chosen_models = select_models(models, models_sel, world=named.world if named else "toy")
    if not chosen_models:
        _fail(f"--models {models_sel!r} selected no model: give 'all', 'toy', 'real' or names (spmbench ls models)")
    worlds = {m.world for m in chosen_models}
    if len(worlds) != 1:
        _fail(f"--models mixes worlds {sorted(worlds)}: run the toy and the real models separately")
    world = worlds.pop()
    if named and named.world != world:
        _fail(f"application {named.name} is for {named.world} models, but --models selected {world} ones")
    return chosen_models, [named] if named else [a for a in apps if a.world == world]


def _selected_erasers(selector: str) -> list[str]:
    from spmbench.erasers import BUILTIN

    names = list(BUILTIN) if selector == "all" else [e.strip() for e in selector.split(",") if e.strip()]
    if not names:
        _fail("--erasers selected no eraser: give comma-separated names (spmbench ls erasers) or 'all'")
    return list(dict.fromkeys(names))  # a name given twice runs once


def _launched(device: str, out: Path, reports: Path, dry_run: bool):
    """This process's share of the work and its device, under `accelerate launch` (or torchrun) or alone;
    the device and (unless a dry run) the output folders checked before any work."""
    from spm.files import output_dir_problem
    from spm.models import device_problem
    from spmbench.shard import Shard, device_for

    try:
        shard, device = Shard.from_env(), device_for(device)
    except ValueError as e:
        _fail(str(e))
    _fail_on(device_problem(device))
    if not dry_run:
        _fail_on(output_dir_problem(out, "--out"))
        _fail_on(output_dir_problem(reports, "--reports"))
    return shard, device


_TUNING_HELP = (
    "read the settings `spmbench tune` chose on dev from TUNING/<app>/tuning.json [default: REPORTS]; "
    "a record read from elsewhere is copied beside the tables"
)


def _tuned(apps: list, tuning_dir: Path | None, reports: Path, write: bool, models) -> list:
    """The applications with their dev-chosen settings (tuning records made with the weights the `models`
    registry holds now), read from `tuning_dir` or beside the tables; a record read from elsewhere is copied
    beside the tables (when `write`), as `tune` would have put it."""
    from spmbench import tuning

    if tuning_dir is not None and not tuning_dir.is_dir():
        _fail(f"--tuning {tuning_dir}: not a folder; give the reports folder that holds <app>/tuning.json")
    records = tuning_dir or reports
    tuned = [tuning.apply_record(a, records / a.name, models) for a in apps]
    if tuning_dir is not None and write and tuning_dir.resolve() != reports.resolve():
        for a, applied in zip(apps, tuned):
            tuning.copy_record(a, records, reports, applied=applied is not a)  # apply_record: a new app if applied
    return tuned


_FIT_SEEDS_HELP = (
    "fit each trained eraser with only the first N of the application's fit seeds (smoke runs; the tables say "
    "which seeds they hold)"
)


def _fewer_fit_seeds(apps: list, count: int | None) -> list:
    """`--fit-seeds N`: the applications with their first N fit seeds (all of them when not given)."""
    if count is None:
        return apps
    fewer = [a for a in apps if len(a.fit_seeds) < count]
    if fewer:
        _fail(f"--fit-seeds {count}: {fewer[0].name} has {len(fewer[0].fit_seeds)} fit seed(s); give at most that")
    return [replace(a, fit_seeds=a.fit_seeds[:count]) for a in apps]


def _checked_plans(
    chosen_apps: list,
    chosen_models: list,
    erasers: list[str],
    models,
    judge_settings: dict,
    out: Path,
    skipped: list[str] | None = None,
):
    """Each application's cells (runner.plan), after everything validate checks of this selection (and the
    models its fits are made on), before any work. A cell whose eraser cannot run on its model's family is
    an error, or, given a `skipped` list, left out of the plan with one line there saying why."""
    from spmbench import runner
    from spmbench.erasers import ERASERS, family_problem

    plans = {a.name: runner.plan(a, chosen_models, erasers, out / a.name) for a in chosen_apps}
    if skipped is not None:
        plans = {name: _runnable(cells, skipped) for name, cells in plans.items()}
    involved = {m.name: m for m in chosen_models + [runner.fit_model_for(m, models) for m in chosen_models]}
    chosen_erasers = [ERASERS.get(e) for e in erasers]
    problems = _selection_problems(chosen_apps, list(involved.values()), chosen_erasers, judge_settings)
    _fail_on(problems[0] if problems else None)
    for a in chosen_apps:
        _fail_on(runner.settings_problem(a, plans[a.name], models))
        _fail_on(family_problem(plans[a.name]))  # an eraser that cannot run on a model's family
    return plans


def _runnable(cells: list, skipped: list[str]) -> list:
    """The cells whose eraser runs on their model's family; one line in `skipped` per eraser and model left out."""
    from spmbench.erasers import ERASERS

    kept = []
    for cell in cells:
        problem = ERASERS.get(cell.eraser).family_problem(cell.model.family)
        line = f"{cell.eraser} on {cell.model.name} left out: {problem}"
        if problem is None:
            kept.append(cell)
        elif line not in skipped:
            skipped.append(line)
    return kept


@dataclass(frozen=True)
class _RunOptions:
    """What `run`, `paper` and `tune` pass on to every application's run."""

    out: Path
    reports: Path
    limit: int | None
    batch_size: int
    device: str
    rescore: bool
    judge_settings: dict
    shard: object
    attacks: tuple[str, ...] = ()  # `run --attack`: each cell also gets these attacks' prompt sets
    real_images: dict = dataclass_field(default_factory=dict)  # --real-images: prompt set -> RealImages


def _run_app(a, cells: list, models, options: _RunOptions) -> None:
    """Fit, generate, score and report one application's cells (runner.run), as `run` does; the first
    process writes the tables to REPORTS/<app>/ once every result is on disk."""
    from spmbench import report, runner

    started = time.monotonic()
    # Expected failures (a spec, file or setting found bad mid-run) are one line; bugs keep their traceback.
    try:
        judge, features = _judges_for(a, options.judge_settings, options.device)
        runner.run(
            a,
            cells,
            options.out / a.name,
            judge,
            models,
            options.limit,
            options.batch_size,
            options.device,
            options.rescore,
            features,
            options.shard,
            options.attacks,
            {s: real for s, real in options.real_images.items() if s in {ps.name for ps in a.prompt_sets}},
        )
        written = (
            report.write_reports(a, options.out / a.name, options.reports / a.name) if options.shard.leads else None
        )
    except (ValueError, OSError, KeyError, ImportError) as e:
        _fail(str(e))
    if written is None:  # every result is on disk: the first process writes the tables
        typer.echo(
            f"{a.name}: process {options.shard.rank} of {options.shard.world_size} done; process 0 writes the reports"
        )
        return
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(written[0].read_text())  # the Markdown table, with the intervals the run folder gives
    typer.echo(f"{a.name}: {len(cells)} cells in {(time.monotonic() - started) / 60:.1f} min (this run)")


@app.command()
def run(
    app_name: str = typer.Option(..., "--app", help="application name (spmbench ls apps), or 'all'"),
    models_sel: str = typer.Option("toy", "--models", help="'all', 'toy', 'real' or comma-separated names"),
    erasers_sel: str = typer.Option(
        "none,spm,spm-rel,spm-noft", "--erasers", help="comma-separated eraser names, or 'all' (every built-in eraser)"
    ),
    limit: int | None = typer.Option(None, min=1, help="at most this many prompts per prompt set (smoke runs)"),
    fit_seeds: int | None = typer.Option(None, "--fit-seeds", min=1, help=_FIT_SEEDS_HELP),
    out: Path = typer.Option(Path("runs"), help="run directories go here"),
    reports: Path = typer.Option(Path("reports"), help="tables go to REPORTS/<app>/"),
    tuning_dir: Path | None = typer.Option(None, "--tuning", help=_TUNING_HELP),
    batch_size: int = typer.Option(32, min=1, help="images generated at once"),
    device: str = "cpu",
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and stop"),
    rescore: bool = typer.Option(
        False, "--rescore", help="score the stored images again (after the judge changed); nothing is regenerated"
    ),
    judge_setting: list[str] = typer.Option([], "--judge-setting", "-J", help=_JUDGE_SETTING_HELP),
    clip_model: str | None = typer.Option(None, help=_CLIP_HELP),
    classifier: str | None = typer.Option(None, help=_CLASSIFIER_HELP),
    attack_sel: str = typer.Option(
        "", "--attack", help="comma-separated attacks (uda, adaptive-ft, p4d, rab): each cell's attack success rate"
    ),
    real_images: list[str] = typer.Option([], "--real-images", help=_REAL_IMAGES_HELP),
) -> None:
    """Plan, fit, generate, score and report; a rerun computes only what is missing."""
    models, apps, _ = _registries()  # first: a malformed spec file is a one-line error
    from spmbench.registry import UnknownName

    shard, device = _launched(device, out, reports, dry_run)
    try:
        chosen_models, chosen_apps = _chosen(models, apps, app_name, models_sel)
        chosen_apps = _fewer_fit_seeds(
            _tuned(chosen_apps, tuning_dir, reports, shard.leads and not dry_run, models), fit_seeds
        )
        erasers = _selected_erasers(erasers_sel)
        judge_settings = _judge_settings(judge_setting, clip_model, classifier)
        plans = _checked_plans(chosen_apps, chosen_models, erasers, models, judge_settings, out)
        attacks = _selected_attacks(attack_sel)
        real = _real_images(real_images, chosen_apps)
        if dry_run:
            _print_run_plan(chosen_apps, plans, models, limit, shard, attacks)
            return
        options = _RunOptions(out, reports, limit, batch_size, device, rescore, judge_settings, shard, attacks, real)
        for a in chosen_apps:
            if shard.leads:
                typer.echo(f"{a.name}: {len(plans[a.name])} cells")
            _run_app(a, plans[a.name], models, options)
    except UnknownName as e:
        _fail(str(e))
    except ValueError as e:  # the rates file
        _fail(str(e))


def _print_run_plan(
    chosen_apps: list, plans: dict, models, limit: int | None, shard, attacks: tuple[str, ...]
) -> None:
    """`run --dry-run`: every cell, then the plan's cost at the measured rates, as `paper --dry-run` prints it."""
    from spmbench import paper

    if not shard.leads:
        return
    for a in chosen_apps:
        typer.echo(f"{a.name}: {len(plans[a.name])} cells")
        for cell in plans[a.name]:
            typer.echo(f"  {cell.key}")
    rates = paper.load_rates()
    estimates = {a.name: paper.estimate(a, plans[a.name], models, limit, rates, attacks) for a in chosen_apps}
    typer.echo(paper.plan_text(estimates, processes=shard.world_size))


def _selected_attacks(selection: str) -> tuple[str, ...]:
    """The --attack names, each known (an unknown one: UnknownName, naming the known ones)."""
    from spmbench.attacks import ATTACKS

    names = tuple(dict.fromkeys(n.strip() for n in selection.split(",") if n.strip()))
    for name in names:
        ATTACKS.get(name)
    return names


def _result_app(path: Path) -> str:
    """The application a stored result belongs to; a torn or foreign file is a one-line error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(f"{path}: not a readable result ({e}): delete it and rerun `spmbench run` to recompute it")
    if not isinstance(data, dict) or not isinstance(data.get("app"), str):
        _fail(f"{path}: not a result (no 'app' name): delete it and rerun `spmbench run` to recompute it")
    return data["app"]


@app.command()
def tune(
    app_name: str = typer.Option(
        ..., "--app", help="application name (spmbench ls apps), or 'all' of the models' world"
    ),
    models_sel: str = typer.Option("toy", "--models", help="models whose family roots are tuned on"),
    erasers_sel: str = typer.Option("all", "--erasers", help="comma-separated eraser names, or 'all'"),
    limit: int | None = typer.Option(None, min=1, help="at most this many prompts per prompt set (smoke runs)"),
    out: Path = typer.Option(Path("runs"), help="the dev runs go to OUT/<app>/dev"),
    reports: Path = typer.Option(Path("reports"), help="the tuning record goes to REPORTS/<app>/"),
    batch_size: int = typer.Option(32, min=1, help="images generated at once"),
    device: str = "cpu",
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dev plan and its estimated cost, and stop"),
    judge_setting: list[str] = typer.Option([], "--judge-setting", "-J", help=_JUDGE_SETTING_HELP),
    clip_model: str | None = typer.Option(None, help=_CLIP_HELP),
    classifier: str | None = typer.Option(None, help=_CLASSIFIER_HELP),
) -> None:
    """Choose each eraser's settings on the application's dev split: its grid (tuning.grids), one rule;
    `spmbench run` then applies the recorded choice. Resumable, and shared by launched processes, like run."""
    models, apps, _ = _registries()
    from spmbench import runner, tuning
    from spmbench.erasers import ERASERS
    from spmbench.registry import UnknownName

    shard, device = _launched(device, out, reports, dry_run)
    try:
        chosen, chosen_apps = _chosen(models, apps, app_name, models_sel)
        # 'all': the apps with grids tuned on their own dev split (one without, or taking another's, is refused by name)
        chosen_apps = [a for a in chosen_apps if a.dev and a.grids and not a.tuning_from or app_name != "all"]
        roots = list({m.name: m for m in (runner.fit_model_for(m, models) for m in chosen)}.values())
        erasers = _selected_erasers(erasers_sel)
        judge_settings = _judge_settings(judge_setting, clip_model, classifier)
        problems = _selection_problems(chosen_apps, roots, [ERASERS.get(e) for e in erasers], judge_settings)
        _fail_on(problems[0] if problems else None)
        plans = {a.name: tuning.plan(a, roots, erasers, out / a.name / "dev") for a in chosen_apps}
        if dry_run:
            _print_tune_plan(plans, models, limit, shard)
            return
        options = _RunOptions(out, reports, limit, batch_size, device, False, judge_settings, shard)
        for a in chosen_apps:
            _tune_app(a, roots, erasers, models, options)
    except UnknownName as e:
        _fail(str(e))
    except (ValueError, OSError, KeyError, ImportError) as e:
        _fail(str(e))


def _print_tune_plan(plans: dict, models, limit: int | None, shard) -> None:
    """`tune --dry-run`: the dev cells' cost at the measured rates, as `paper --dry-run` prints a plan's."""
    from spmbench import paper

    if not shard.leads:
        return
    rates = paper.load_rates()
    estimates = {name: paper.estimate(p.app, p.cells, models, limit, rates) for name, p in plans.items()}
    typer.echo(paper.plan_text(estimates, processes=shard.world_size))
    for name, p in plans.items():
        grids = ", ".join(f"{key} {len(points)}" for key, points in p.by_key.items())
        typer.echo(f"{name}: grid points per settings key: {grids}")


def _tune_app(a, roots: list, erasers: list[str], models, options: _RunOptions) -> None:
    """Tune one application (tuning.tune) in this process's share; the leading process writes the record."""
    from spmbench import tuning

    judge, features = _judges_for(a.for_split("dev"), options.judge_settings, options.device)
    record = tuning.tune(a, roots, erasers, options.out / a.name / "dev", judge, models, limit=options.limit,
                         batch_size=options.batch_size, device=options.device, features=features,
                         shard=options.shard)  # fmt: skip
    if record is None:  # every dev result is on disk: the first process writes the record
        typer.echo(f"{a.name}: process {options.shard.rank} of {options.shard.world_size} done; "
                   "process 0 writes the tuning record")  # fmt: skip
        return
    for path in tuning.write(record, options.reports / a.name):
        typer.echo(f"wrote {path}")
    for model, by_key in record["chosen"].items():
        typer.echo(f"{a.name} on {model}: chosen on dev: {json.dumps(by_key)}")


@app.command()
def paper(
    world: str = typer.Option(
        "toy", "--world", help="toy, real or toy3 (world v3, staged): the applications and models it runs"
    ),
    models_sel: str = typer.Option("all", "--models", help="'all' (the world's models) or comma-separated names"),
    erasers_sel: str = typer.Option(
        "all", "--erasers", help="comma-separated eraser names, or 'all': every built-in eraser and spm-noanchor"
    ),
    apps_sel: str = typer.Option(
        "all", "--apps", help="'all' (the world's applications) or comma-separated names of the world's"
    ),
    limit: int | None = typer.Option(None, min=1, help="at most this many prompts per prompt set (smoke runs)"),
    fit_seeds: int | None = typer.Option(None, "--fit-seeds", min=1, help=_FIT_SEEDS_HELP),
    out: Path = typer.Option(Path("runs"), help="run directories go here (OUT/<app>, as `spmbench run`'s)"),
    reports: Path = typer.Option(Path("reports"), help="tables go to REPORTS/<app>/ and REPORTS/paper/<world>/"),
    tuning_dir: Path | None = typer.Option(None, "--tuning", help=_TUNING_HELP),
    batch_size: int = typer.Option(32, min=1, help="images generated at once"),
    device: str = "cpu",
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and its estimated cost, and stop"),
    rescore: bool = typer.Option(False, "--rescore", help="score the stored images again (after the judge changed)"),
    judge_setting: list[str] = typer.Option([], "--judge-setting", "-J", help=_JUDGE_SETTING_HELP),
    clip_model: str | None = typer.Option(None, help=_CLIP_HELP),
    classifier: str | None = typer.Option(None, help=_CLASSIFIER_HELP),
    real_images: list[str] = typer.Option([], "--real-images", help=_REAL_IMAGES_HELP),
) -> None:
    """Run the paper's evaluation on every application of the world (`spmbench run`'s cells) and write its
    tables to REPORTS/paper/<world>/: concept, artist, explicit, object, transfer and the two ablations."""
    models, apps, _ = _registries()
    from spmbench import paper as tables
    from spmbench.models import WORLDS, select_models
    from spmbench.registry import UnknownName

    if world not in WORLDS:
        _fail(f"--world {world!r}: choose one of {', '.join(WORLDS)}")
    shard, device = _launched(device, out, reports, dry_run)
    try:
        chosen_models = select_models(models, models_sel, world=world)
        if not chosen_models:
            _fail(f"--models {models_sel!r} selected no model: give 'all' or names (spmbench ls models)")
        strangers = [m.name for m in chosen_models if m.world != world]
        if strangers:
            _fail(f"--models {', '.join(strangers)}: not {world} models; choose the world's (spmbench ls models)")
        chosen_apps = _world_apps(apps, world, apps_sel)
        chosen_apps = _fewer_fit_seeds(
            _tuned(chosen_apps, tuning_dir, reports, shard.leads and not dry_run, models), fit_seeds
        )
        erasers = list(tables.PAPER_ERASERS) if erasers_sel == "all" else _selected_erasers(erasers_sel)
        judge_settings = _judge_settings(judge_setting, clip_model, classifier)
        # Every eraser ('all'): those a family cannot run are left out of its cells and said so; named ones must run.
        left_out: list[str] | None = [] if erasers_sel == "all" else None
        plans = _checked_plans(chosen_apps, chosen_models, erasers, models, judge_settings, out, left_out)
        rates = tables.load_rates()
        real = _real_images(real_images, chosen_apps)
    except UnknownName as e:
        _fail(str(e))
    except ValueError as e:  # the rates file
        _fail(str(e))
    for line in left_out or [] if shard.leads else []:
        typer.echo(line)
    if dry_run:
        if shard.leads:
            estimates = {a.name: tables.estimate(a, plans[a.name], models, limit, rates) for a in chosen_apps}
            typer.echo(tables.plan_text(estimates, processes=shard.world_size))
            typer.echo(tables.planned_tables(chosen_apps, erasers, reports / "paper" / world))
        return
    _check_models_of(chosen_apps, plans, models, out)
    options = _RunOptions(out, reports, limit, batch_size, device, rescore, judge_settings, shard, (), real)
    for a in chosen_apps:
        _run_app(a, plans[a.name], models, options)
    if not shard.leads:
        return
    try:
        runs = [(a, out / a.name) for a in chosen_apps]
        written, skipped = tables.write_tables(world, runs, reports / "paper" / world)
    except (ValueError, OSError) as e:
        _fail(str(e))
    for line in skipped:
        typer.echo(line)
    for path in written:
        typer.echo(f"wrote {path}")


def _check_models_of(chosen_apps: list, plans: dict, models, out: Path) -> None:
    """Every application's models against the weights its folder's images and fits were made with, before
    the first application runs: a model changed since is refused up front, not hours later."""
    from spmbench import runner

    try:
        for a in chosen_apps:
            runner.check_models(out / a.name, runner.cell_models(plans[a.name], models), models)
    except ValueError as e:
        _fail(str(e))


def _world_apps(apps, world: str, selector: str) -> list:
    """The world's applications, all or those named; a name of another world's is refused in one line."""
    if selector == "all":
        return [a for a in apps if a.world == world]
    chosen = [apps.get(name.strip()) for name in dict.fromkeys(selector.split(",")) if name.strip()]
    strangers = [a.name for a in chosen if a.world != world]
    if strangers or not chosen:
        _fail(f"--apps {selector!r}: give 'all' or names of {world} applications (spmbench ls apps)")
    return chosen


@app.command("report")
def report_cmd(
    run_dir: Path,
    reports: Path = typer.Option(Path("reports")),
    tuning_dir: Path | None = typer.Option(None, "--tuning", help=_TUNING_HELP),
) -> None:
    """Rebuild the tables of RUN_DIR from its stored results (nothing is recomputed); the caption names the tuning
    record the run applied, read as `run` reads it (--tuning, else beside the tables)."""
    from spm.files import output_dir_problem
    from spmbench import report
    from spmbench.registry import UnknownName

    models, apps, _ = _registries()
    paths = report.result_paths(run_dir)
    if not paths:
        inner = sorted(p.parent for p in run_dir.glob("*/cells"))
        if inner:
            _fail(
                f"{run_dir} holds the runs of {len(inner)} application(s): give one, e.g. `spmbench report {inner[0]}`"
            )
        _fail(f"no results under {run_dir}/cells: run `spmbench run` first")
    names = [_result_app(p) for p in paths]
    try:
        a = apps.get(names[0])
    except UnknownName as e:
        _fail(f"{paths[0]}: {e}")
    _fail_on(output_dir_problem(reports, "--reports"))
    try:
        # the settings its run applied, for the caption
        a = _tuned([a], tuning_dir, reports, write=True, models=models)[0]
        written = report.write_reports(a, run_dir, reports / a.name)
    except (ValueError, OSError) as e:  # a full disk, say: one line, as in `run`
        _fail(str(e))
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("rates")
def rates_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run folders (runs/<app>, or a folder of them)"),
) -> None:
    """Print the rates measured by the runs (seconds per image and per fit, per model family), as entries of
    spmbench/rates.yaml, which `paper --dry-run` and `tune --dry-run` estimate hours from."""
    import yaml

    from spmbench import paper, report
    from spmbench.attacks import stage as attack_stage
    from spmbench.registry import UnknownName

    models, _, _ = _registries()
    # each run folder once, however it was named
    found = list(dict.fromkeys(d.resolve() for run_dir in run_dirs for d in report.run_folders(run_dir)))
    try:
        results = [r for d in found for r in report.load_results(d)]
    except ValueError as e:
        _fail(str(e))
    if not results:
        _fail(
            f"no results under {', '.join(map(str, run_dirs))}: give run folders (runs/<app>) that `spmbench run` wrote"
        )
    try:
        searches = [s for d in found for s in attack_stage.timed_searches(d)]
        entries = paper.measured_rates(results, models, searches)
    except (ValueError, UnknownName) as e:
        _fail(str(e))
    machines = sorted({r.meta.get("machine", "?") for r in results})
    typer.echo(f"# measured from {len(results)} results in {', '.join(map(str, found))} on {'; '.join(machines)}")
    typer.echo(yaml.safe_dump({"rates": entries}, sort_keys=False).rstrip())


def main() -> None:
    app()
