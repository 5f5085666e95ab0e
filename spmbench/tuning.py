"""Equal tuning budgets (protocol v3): every eraser's settings are chosen on the dev split by one rule.

An application's `tuning.grids` gives each eraser (by its settings key: 'spm' for spm, spm-rel and
spm-noft, which share a fit) the same number of setting overrides, at most `apps.MAX_GRID`. `tune`
fits and generates every grid point on the dev split of the family roots (each point is a `Tuned`
eraser: its own fits and cells), judges them, and applies RULE, fixed in advance for every eraser.
The record (the grid, each point's dev numbers with n and interval, the rule, the choice) is written
beside the application's table; `spmbench run` applies the chosen settings to the test split. An
application with `tuning: {from: <other>}` is not tuned: run applies <other>'s record to it (toy3-many takes
toy3-concept's: every eraser inherits the same single-concept tuning, and SPM claims composition without it).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from spm.files import write_text_atomic
from spmbench import report, runner
from spmbench.apps import ERASURE_SETS, Application
from spmbench.erasers.base import ERASERS, NoSettings, tuned
from spmbench.models import ModelSpec
from spmbench.report import TUNING_RECORD as RECORD
from spmbench.shard import Shard


log = logging.getLogger(__name__)
TARGET_SHARE = 0.10  # erased: a dev target rate at most this share of the original's
RULE = (
    f"among the settings whose dev target rate is at most {TARGET_SHARE:.0%} of the original model's, "
    "the best near-set retention (near rate over the original's); if none gets there, the lowest target "
    "rate; ties go to the lower target rate, then to the earlier grid point"
)


@dataclass(frozen=True)
class Point:
    """One grid point's dev numbers on one fitted model, averaged over the application's experiments."""

    eraser: str  # the Tuned eraser's name (its cells and fits are under it)
    overrides: dict
    target: float  # judged-present rate on the erasure sets
    original_target: float
    near: float  # on the 'near' set (every erosion set where there is none)
    original_near: float

    @property
    def erased(self) -> bool:
        return self.target <= TARGET_SHARE * self.original_target

    @property
    def retention(self) -> float:
        return self.near / self.original_near if self.original_near > 0 else self.near


def choose(points: list[Point]) -> int:
    """RULE: the index of the chosen point."""
    erased = [i for i, p in enumerate(points) if p.erased]
    if erased:  # an application without erosion sets has no retention (nan): it ties, and the target decides
        return min(erased, key=lambda i: (-_or_zero(points[i].retention), points[i].target, i))
    return min(range(len(points)), key=lambda i: (points[i].target, -_or_zero(points[i].retention), i))


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def grids(app: Application, erasers: list[str]) -> dict[str, list[str]]:
    """Each settings key's grid as Tuned eraser names: grid points of the first selected eraser with that
    key, which decides for the others sharing its fit. Erasers with nothing to set are not tuned."""
    if not app.grids:
        raise ValueError(f"{app.name} has no tuning grids ({app.path} says why): its erasers run with their defaults")
    out: dict[str, list[str]] = {}
    for name in erasers:
        eraser = ERASERS.get(name)
        key = eraser.settings_key
        if eraser.Settings is NoSettings or key in out:
            continue
        if key not in app.grids:
            raise ValueError(
                f"eraser {name!r} has settings but {app.path} gives no tuning.grids.{key}: "
                f"add one with {len(next(iter(app.grids.values()), [1]))} settings (the same budget as the others)"
            )
        out[key] = [tuned(eraser, point).name for point in app.grids[key]]
    return out


@dataclass(frozen=True)
class DevPlan:
    """What tuning an application computes: its dev split, each settings key's grid points, their cells."""

    app: Application  # the dev split, each grid point fitted once (equal budgets)
    by_key: dict[str, list[str]]  # settings key: its grid points as Tuned eraser names
    cells: list[runner.Cell]  # the originals' and every grid point's, on the family roots


def plan(app: Application, roots: list[ModelSpec], erasers: list[str], run_dir: Path) -> DevPlan:
    """The dev cells `tune` computes (and `spmbench tune --dry-run` prices); a grid point the eraser would
    refuse is a one-line ValueError here, before any work."""
    if app.tuning_from:
        raise ValueError(
            f"{app.name} takes its settings from {app.tuning_from}'s tuning: run spmbench tune --app {app.tuning_from}"
        )
    dev = replace(app.for_split("dev"), fit_seeds=app.fit_seeds[:1])
    by_key = grids(app, erasers)
    if not by_key:
        raise ValueError(f"none of {erasers} has settings to tune: choose erasers with settings (--erasers)")
    names = [n for points in by_key.values() for n in points]
    for name in names:
        for root in roots:
            ERASERS.get(name).settings(runner.eraser_settings(ERASERS.get(name), dev, root))  # refused: ValueError
    return DevPlan(dev, by_key, runner.plan(dev, roots, ["none", *names], run_dir))


def tune(
    app: Application, roots: list[ModelSpec], erasers: list[str], run_dir: Path, judge, registry, **run_options
) -> dict | None:
    """Fit, generate and judge every grid point on the dev split of `roots` (the family roots: the test
    run's fits are made there); returns the record (see `record`), or None in a process of a launch that
    does not lead (`run_options["shard"]`: it computed its share; the leading one records). `run_options`:
    runner.run's."""
    dev = plan(app, roots, erasers, run_dir)
    runner.run(dev.app, dev.cells, run_dir, judge, registry, **run_options)
    if not run_options.get("shard", Shard()).leads:
        return None
    weights = {root.name: runner.recorded_identity(root, registry) for root in roots}  # as the run checked them
    return record(app, roots, dev.by_key, report.results(run_dir), weights)


def record(
    app: Application, roots: list[ModelSpec], by_key: dict[str, list[str]], frame: pd.DataFrame, weights: dict
) -> dict:
    """The tuning record: per fitted model and settings key, each point's dev numbers and the choice; `weights`:
    each model's identity (model_identity) when it was tuned, so a record is not applied to other weights."""
    out = {"app": app.name, "app_version": app.version, "rule": RULE, "grids": app.grids, "weights": weights}
    out |= {"points": {}, "chosen": {}}
    for root in roots:
        for key, names in by_key.items():
            points = [_point(frame[frame.model == root.name], name) for name in names]
            best = choose(points)
            out["points"].setdefault(root.name, {})[key] = [
                {**p.__dict__, "erased": p.erased, "retention": p.retention, **_intervals(frame, root.name, p.eraser)}
                for p in points
            ]
            out["chosen"].setdefault(root.name, {})[key] = points[best].overrides
            out["points"][root.name][key][best]["chosen"] = True
    return out


def _point(frame: pd.DataFrame, name: str) -> Point:
    rows = frame[frame.eraser == name]
    if rows.empty:
        raise ValueError(f"no dev results for {name}: the tuning run did not finish; rerun `spmbench tune`")
    erasure = rows[rows.measure.isin(ERASURE_SETS)]
    sets = set(rows[rows.unit == "fraction"].measure)
    near = rows[rows.measure == "near"] if "near" in sets else rows[rows.measure.isin(sets - set(ERASURE_SETS))]
    # each experiment weighs the same; within one, the sets' rates are averaged
    target = erasure.groupby("targets")[["value", "original_value"]].mean().mean()
    kept = near.groupby("targets")[["value", "original_value"]].mean().mean()
    return Point(
        name, dict(ERASERS.get(name).overrides), float(target.value), float(target.original_value),
        _or_nan(kept, "value"), _or_nan(kept, "original_value"),
    )  # fmt: skip


def _or_nan(means: pd.Series, column: str) -> float:
    return float(means[column]) if column in means and not pd.isna(means[column]) else math.nan


def _intervals(frame: pd.DataFrame, model: str, eraser: str) -> dict:
    """Each rate's n and 95 % interval, per experiment and prompt set, for the record."""
    rows = frame[(frame.model == model) & (frame.eraser == eraser) & (frame.unit == "fraction")]
    return {
        "rates": [
            {"targets": r.targets, "set": r.measure, "value": r.value, "n": _int(r.n), "lo": r.lo, "hi": r.hi}
            for r in rows.itertuples()
        ]
    }


def _int(value) -> int | None:
    return None if pd.isna(value) else int(value)


def write(record_: dict, folder: Path) -> list[Path]:
    """The record as JSON (what `run` reads) and Markdown (what a reader reads), beside the table."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / RECORD, folder / "tuning.md"
    write_text_atomic(json_path, json.dumps(record_, indent=1, default=float))
    write_text_atomic(md_path, markdown(record_))
    return [md_path, json_path]


def markdown(record_: dict) -> str:
    lines = [
        f"# Tuning of {record_['app']} v{record_['app_version']} on its dev split",
        "",
        f"Rule: {record_['rule']}.",
    ]
    weights = record_.get("weights", {})
    if weights:  # which weights the choice was made on: `run` applies it to those only
        lines += ["", "Weights: " + "; ".join(f"{model} {identity}" for model, identity in weights.items()) + "."]
    for model, by_key in record_["points"].items():
        for key, points in by_key.items():
            lines += [
                "",
                f"## {key} on {model}",
                "",
                "| point | settings | target (original) | near retention | chosen |",
            ]
            lines += ["|---|---|---|---|---|"]
            for p in points:
                settings = ", ".join(f"{k}={v}" for k, v in p["overrides"].items()) or "spec defaults"
                lines.append(
                    f"| {p['eraser']} | {settings} | {p['target']:.0%} ({p['original_target']:.0%}) | "
                    f"{p['retention']:.2f} | {'**yes**' if p.get('chosen') else ''} |"
                )
            lines += ["", "Per experiment and set (dev, n images, 95 % interval):", ""]
            for p in points:
                for r in p["rates"]:
                    targets = " + ".join(r["targets"]) if isinstance(r["targets"], (list, tuple)) else r["targets"]
                    lines.append(
                        f"- {p['eraser']}, {targets}, {r['set']}: {r['value']:.0%} "
                        f"[{r['lo']:.0%}, {r['hi']:.0%}] n={r['n']}"
                    )
    return "\n".join(lines) + "\n"


def apply_record(app: Application, folder: Path, registry=None) -> Application:
    """`app` with the settings its tuning record chose, if there is one made for this version of the tuned
    application and its grids and, given the model `registry`, with the weights its models hold now; otherwise
    `app` as it is (a stale record is named in a warning). `folder`: the application's report folder,
    REPORTS/<app>, where its record is; one with `tuning: {from: <other>}` applies <other>'s record, in
    REPORTS/<other> beside it, dated by <other>'s version and grids."""
    tuned, path = source(app), record_path(app, folder)
    if not path.exists():
        if tuned.grids and app.world == "real":  # the defaults are the papers' settings, as the protocol keeps them
            log.info("%s has no tuning record at %s: each eraser runs with its paper's setting", tuned.name, path)
        elif tuned.grids:  # the grids' erasers would run with their untuned defaults, which may not erase at all
            whose = tuned.name if tuned is app else f"{app.name} takes its settings from {tuned.name}, which"
            log.warning(
                "%s has no tuning record at %s: %s run with their untuned settings; run `spmbench tune --app %s` first"
                " (or give --tuning the reports folder that holds it, e.g. --tuning reports)",
                whose, path, ", ".join(tuned.grids), tuned.name,
            )  # fmt: skip
        return app
    try:
        stored = json.loads(path.read_text())
        current = json.loads(json.dumps({"app_version": tuned.version, "grids": tuned.grids}))
        if {k: stored[k] for k in current} != current:
            log.warning(
                "%s was made for another version or grid of %s: not applied%s; rerun `spmbench tune --app %s`",
                path, tuned.name, "" if tuned is app else f" to {app.name}", tuned.name,
            )  # fmt: skip
            return app
        changed = _retrained(stored.get("weights", {}), registry)
        if changed:
            log.warning(
                "%s was tuned on other weights of %s than it holds now: not applied%s; rerun `spmbench tune --app %s`",
                path, changed, "" if tuned is app else f" to {app.name}", tuned.name,
            )  # fmt: skip
            return app
        return replace(app, tuned=stored["chosen"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not a tuning record ({e}): delete it and rerun `spmbench tune --app {tuned.name}`"
        ) from None


def _retrained(recorded: dict, registry) -> str | None:
    """The first model among `recorded` ({name: identity}) whose weights differ now; None without a registry,
    for a model no longer registered, or one whose identity cannot be known yet (a hub model not downloaded)."""
    if registry is None:
        return None
    for name, identity in recorded.items():
        if name in registry:
            now = runner.recorded_identity(registry.get(name), registry)
            if now is not None and now != identity:
                return name
    return None


def record_path(app: Application, folder: Path) -> Path:
    """Where `app`'s tuning record is, `folder` being REPORTS/<app> (see `apply_record`)."""
    tuned = source(app)
    return (folder if tuned is app else folder.parent / tuned.name) / RECORD


def copy_record(app: Application, records: Path, reports: Path, applied: bool) -> None:
    """Put the tuning record `app` applied from the tables under `records` beside those under `reports`
    (REPORTS/<tuned app>/), so that a table written elsewhere has the record of its settings beside it; where none
    was applied (absent or stale), remove a copy an earlier run left there, which no longer says how it was made."""
    path = record_path(app, records / app.name)
    target = reports / path.parent.name
    for name in (RECORD, "tuning.md"):
        if applied and (path.parent / name).exists():
            target.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target / name, (path.parent / name).read_text())
        elif not applied:
            (target / name).unlink(missing_ok=True)


def source(app: Application) -> Application:
    """The application whose tuning `app` applies: itself, or the one its `tuning: {from: ...}` names."""
    if not app.tuning_from:
        return app
    if app.tuning_source is None:
        raise ValueError(f"{app.path}: tuning.from {app.tuning_from!r} is not linked: load it with apps.load_apps")
    return app.tuning_source
