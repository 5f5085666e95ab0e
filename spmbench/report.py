"""Tables from stored results, all rendered from one tidy frame (`results`): every measured number
with its sample size and 95 % interval (`spmbench.stats`), and the paired comparisons of SPM with
each baseline.

The values come from the cells' result.json; their intervals from the cells' per-image scores and
alteration features (scores.jsonl, alteration_features.safetensors). Nothing is generated or judged
again. Markdown, CSV, LaTeX and the trade-off plot are views of the frame.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from spm.files import save_image_atomic, write_text_atomic
from spmbench import stats
from spmbench.apps import ERASURE_SETS, PROMPT, Application
from spmbench.erasers.base import fit_seed_of
from spmbench.judges.nudenet import COUNT_UNIT, COUNTS
from spmbench.metrics import (
    ALTERATION,
    ALTERATION_FEATURES_FILE,
    FIT_MEMORY,
    FIT_SECONDS,
    OPTIONAL_ALTERATION,
    PER_IMAGE_FILE,
    measures_kid,
    package_version,
    rate_info,
)
from spmbench.registry import targets_slug
from spmbench.result import SCHEMA, Result, cell_key


log = logging.getLogger(__name__)

FIT_COSTS = {"fit_seconds": FIT_SECONDS, "fit_peak_mib": FIT_MEMORY}
# The CSV's first seven columns are the old CSV's, in its order, so that readers by position keep
# working; every column added since comes after them.
COLUMNS = [
    "model", "targets", "eraser", "fitted_on", "measure", "value", "original_value",
    "app", "n", "n_prompts", "lo", "hi", "original_lo", "original_hi", "interval", "higher_is_better", "unit",
]  # fmt: skip
# The signs that mark, on an eraser's rate, a difference from each SPM variant that holds at 95 %; a sixth variant
# on is marked by its number, superscript (mark(5) = '⁶').
MARKS = ("†", "‡", "§", "¶", "‖")
SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def mark(index: int) -> str:
    """The sign of the index-th SPM variant (in `spm_variants` order)."""
    return MARKS[index] if index < len(MARKS) else str(index + 1).translate(SUPERSCRIPT_DIGITS)


NO_INTERVAL = "none"
TUNING_RECORD = "tuning.json"  # spmbench.tuning's record, beside the table  # the cell's per-image scores or features are not in the run folder


def result_paths(run_dir: Path) -> list[Path]:
    """Every cell's stored result: cells/<model>/<eraser>/<targets>/result.json."""
    return sorted((run_dir / "cells").glob("*/*/*/result.json"))  # the layout of cell_key


def load_results(run_dir: Path) -> list[Result]:
    """The stored results; one that is torn or of another schema is a one-line error naming it."""
    results = []
    for path in result_paths(run_dir):
        result = Result.load(path)
        if result is None:
            raise ValueError(f"{path}: not a readable result of schema {SCHEMA}: rerun `spmbench run` to recompute it")
        results.append(result)
    return results


def run_folders(path: Path) -> list[Path]:
    """The run folder `path` (one with cells/), or the run folders in it (runs/: one per application)."""
    return [path] if (path / "cells").is_dir() else sorted(p.parent for p in path.glob("*/cells"))


def results(path: str | Path) -> pd.DataFrame:
    """Every number of the run in `path` (an application's run folder, or a folder of them) as one tidy
    frame: one row per model x targets x eraser x measure (a prompt set's rate, NudeNet's per-class counts
    'nudenet:<class>', the judge's per-image measure per set 'clip_score:<set>', an alteration measure, a fit
    cost), with n, n_prompts, the 95 % interval (lo, hi) and its method (`interval`), the
    original model's rate and interval, and for every eraser the paired difference from each other SPM
    variant (minus_<spm>, its lo and hi, differs_from_<spm>; '-' in an SPM's name is '_' here)."""
    from spmbench.apps import load_apps

    path = Path(path)
    run_dirs = run_folders(path)
    if not run_dirs:
        raise ValueError(f"no results under {path}: give a run folder (runs/<app>) or the folder holding them")
    apps, frames = load_apps(), []
    for run_dir in run_dirs:
        stored = load_results(run_dir)
        if stored:
            name = stored[0].app
            if name not in apps:  # e.g. a run folder copied from a machine with other applications
                log.warning("%s: application %r is not registered here: values without intervals", run_dir, name)
            frames.append(frame(stored, run_dir, apps.get(name) if name in apps else None))
    return pd.concat(frames, ignore_index=True) if frames else frame([])


# ---- the frame ----------------------------------------------------------------------------------


@dataclass
class _Sample:
    """One prompt set of one cell, image by image: for the intervals and the paired comparisons."""

    ids: list[str]
    present: list[bool]
    prompts: list[str]


def frame(stored: list[Result], run_dir: Path | None = None, app: Application | None = None) -> pd.DataFrame:
    """The tidy frame of `stored` results (see `results`); intervals need the run folder and the
    application (its prompts group the images into clusters), else they are left empty; so are they
    where the results were made from another version of the application (other prompts)."""
    current = _current_models(app, stored)
    judge = _judge_identity(run_dir)
    erased = [r for r in stored if r.eraser != "none"]
    original_results = {r.model: r for r in stored if r.eraser == "none"}  # their FID against real images
    samples: dict[tuple, _Sample] = {}
    originals: dict[str, dict[str, dict]] = {}  # each model's original cell's records, read once
    rows = []
    for r in erased:
        cell = (r.model, "+".join(r.targets), r.eraser, r.fitted_on)
        prompts = _prompts(app, r) if r.model in current and run_dir is not None else None
        own_records = _records(run_dir, r.model, r.eraser, r.targets) if prompts is not None else {}
        if prompts is not None and r.model not in originals:
            originals[r.model] = _records(run_dir, r.model, "none", ())
        original_records = originals.get(r.model, {})
        own, original = ({i: rec["present"] for i, rec in recs.items()} for recs in (own_records, original_records))
        own_prompts, original_prompts = _with_attacks(app, run_dir, r, prompts)
        for s, value in r.rates.items():
            sample = _sample(own, own_prompts, s)
            samples[(r.model, cell[1], r.eraser, s)] = sample
            interval = _rate_interval(sample, value, r, s)
            before = _rate_interval(_sample(original, original_prompts, s), r.original_rates.get(s), r, s)
            info = rate_info(s, _lower_is_better(s))
            rows.append(_row(r, cell, s, value, interval, info.higher_is_better, "fraction", r.original_rates.get(s)))
            rows[-1].update(original_lo=before.lo, original_hi=before.hi)
        if app is not None and app.judge == "nudenet":
            rows += _class_count_rows(r, cell, prompts, judge, own_records, original_records)
        rows += _judge_score_rows(r, cell, prompts, app, own_records, original_records)
        features = _alteration(run_dir, r, prompts, kid=app is not None and measures_kid(app.world))
        for key, value in (r.alteration or {}).items():
            info = ALTERATION.get(key) or OPTIONAL_ALTERATION.get(key)
            interval = features.get(key) or _none(value)
            rows.append(_row(r, cell, key, value, interval, info.higher_is_better if info else None, ""))
        for key in [k for k in features if k not in (r.alteration or {})]:  # KID: computed here, from the features
            rows.append(_row(r, cell, key, features[key].value, features[key], False, ""))
        rows += _real_fid_rows(r, cell, original_results.get(r.model))
        for key, info in FIT_COSTS.items():
            value = getattr(r, key)
            if value is not None:  # one measured fit: no sample to draw an interval from
                rows.append(
                    _row(
                        r,
                        cell,
                        key,
                        value,
                        stats.Interval(value, math.nan, math.nan, 1, None, "single fit"),
                        None,
                        info.unit,
                    )
                )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n"], table["n_prompts"] = table["n"].astype("Int64"), table["n_prompts"].astype("Int64")
    _add_comparisons(table, samples)
    _add_fit_spread(table)
    table.attrs["settings"] = stored[0].settings if stored else {}
    # what the alteration was measured on, and by which packages: the caption names them
    table.attrs["feature_sources"] = sorted({r.alteration_features for r in erased if r.alteration_features})
    table.attrs["packages"] = next((r.meta["packages"] for r in erased if r.meta.get("packages")), {})
    table.attrs["score_names"] = {k: info.name for k, info in _per_image_measures(app).items()} if app else {}
    table.attrs["real_images"] = sorted({m["reference"] for r in erased for m in (r.real_fid or {}).values()})
    table.attrs["judge"] = judge  # the judge's identity (runner.check_judge's judge.json), for the caption
    table.attrs["code"] = next((r.meta["code"] for r in erased if r.meta.get("code")), None)
    return table


def _judge_identity(run_dir: Path | None) -> str | None:
    """The identity of the judge that made the run's scores (runner.check_judge's judge.json), if recorded."""
    try:
        return json.loads((run_dir / "judge.json").read_text()).get("judge")
    except (TypeError, OSError, ValueError, AttributeError):
        return None


def _add_fit_spread(table: pd.DataFrame) -> None:
    """Where an eraser was fitted with several seeds (an application's fit_seeds: its `~seed<N>` cells),
    each of its rows gains the number of fits and the mean, lowest and highest value over them: what
    another training run moves the number by, beside the sampling interval. Nothing where none was."""
    bases = table["eraser"].map(lambda name: fit_seed_of(name)[0])
    if (bases == table["eraser"]).all():
        return
    grouped = table.groupby([table["model"], table["targets"], bases, table["measure"]], sort=False)["value"]
    table["fits"] = grouped.transform("count").astype("Int64")
    for stat in ("mean", "min", "max"):
        table[f"fits_{stat}"] = grouped.transform(stat)


def _primary(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the tables show: every eraser's own, its later fit seeds folded into them (fits_*)."""
    # astype(bool): an empty mask of dtype object would select columns, not rows (a run of the original alone)
    return table[table["eraser"].map(lambda name: fit_seed_of(name)[1] is None).astype(bool)]


def _current_models(app: Application | None, stored: list[Result], warn: bool = True) -> set[str]:
    """The models whose every result (the original's too: the erased images are compared with its) was made from
    `app`'s version; the others' rows get no intervals (one warning): another version's rows may group the images
    into other prompts, or name other images. None: no model (the application is not registered)."""
    if app is None:
        return set()
    stale = sorted({r.model for r in stored if r.app_version != app.version})
    if stale and warn:
        versions = sorted({r.app_version for r in stored if r.app_version != app.version})
        log.warning("%s: results of %s made from version %s, the registered application is version %s: no intervals "
                    "for them; rerun `spmbench run` to recompute them", app.name, ", ".join(stale), versions, app.version)  # fmt: skip
    return {r.model for r in stored} - set(stale)


def _row(r: Result, cell, measure, value, interval: stats.Interval, higher, unit, original=None) -> dict:
    return dict(
        app=r.app, model=cell[0], targets=cell[1], eraser=cell[2], fitted_on=cell[3], measure=measure,
        value=float(value), original_value=math.nan if original is None else float(original),
        n=interval.n, n_prompts=interval.n_prompts, lo=interval.lo, hi=interval.hi,
        original_lo=math.nan, original_hi=math.nan, interval=interval.method, higher_is_better=higher, unit=unit,
    )  # fmt: skip


def _none(value) -> stats.Interval:
    return stats.Interval(value, math.nan, math.nan, None, None, NO_INTERVAL)


def _prompts(app: Application, r: Result) -> dict[str, tuple[str, str]]:
    """prompt_id -> (set, prompt) of the cell's rows: images of one prompt (its seeds) form a cluster."""
    rows = app.for_split(r.settings.get("split", "test")).rows(tuple(r.targets), r.settings.get("limit"))
    return {row.prompt_id: (row.set, row.prompt) for row in rows}


def _with_attacks(app: Application | None, run_dir: Path | None, r: Result, prompts: dict | None) -> tuple:
    """The prompts of the cell's own images and of the original's it is compared with: each adds its own attack
    rows (`spmbench run --attack`: prompts found against each model, so the two differ) to the application's."""
    attacks = list(r.settings.get("attacks", {}))
    if prompts is None or not attacks:
        return prompts, prompts
    from spmbench.attacks import stage

    split = app.for_split(r.settings.get("split", "test"))
    own, original = (
        {
            row.prompt_id: (row.set, row.prompt)
            for row in stage.rows(split, run_dir / "cells" / key, r.targets, attacks)
        }
        for key in (cell_key(r.model, r.eraser, r.targets), cell_key(r.model, "none", ()))
    )
    return prompts | own, prompts | original


def _is_attack_set(prompt_set: str) -> bool:
    return prompt_set.startswith("attack-")  # spmbench.attacks.stage.SET_PREFIX, without importing the attacks


def _lower_is_better(prompt_set: str) -> tuple[str, ...]:
    """The sets whose rate is better lower for `rate_info`: erasure's, and an attack's success."""
    return (*ERASURE_SETS, prompt_set) if _is_attack_set(prompt_set) else ERASURE_SETS


def _records(run_dir: Path, model: str, eraser: str, targets) -> dict[str, dict]:
    """prompt_id -> the judge's record (verdict and raw outputs) from a cell's scores.jsonl (a line torn by a kill is skipped)."""
    path = run_dir / "cells" / cell_key(model, eraser, targets) / "scores.jsonl"
    records = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("present"), bool):
                records[record.get("prompt_id")] = record
    return records


def _class_count_rows(
    r: Result, cell, prompts: dict | None, judge: str | None, own: dict, original: dict
) -> list[dict]:
    """NudeNet's per-class counts on the target prompts, the original's beside them (spmbench.judges.nudenet
    .count_intervals), where both cells' scores kept its detections; none otherwise. `own`, `original`: the cell's
    and the original's records by prompt id."""
    from spmbench.judges.nudenet import COUNT_SET, count_intervals, threshold_of

    if prompts is None:
        return []
    ids = [i for i, (s, _) in prompts.items() if s == COUNT_SET]
    texts = [prompts[i][1] for i in ids]
    counted = []
    for records in (own, original):
        complete = bool(ids) and all(i in records for i in ids)
        counted.append(count_intervals([records[i] for i in ids], texts, threshold_of(judge)) if complete else None)
    if None in counted:
        return []
    rows = []
    for measure, interval in counted[0].items():
        before = counted[1][measure]
        rows.append(_row(r, cell, measure, interval.value, interval, False, COUNT_UNIT, before.value))
        rows[-1].update(original_lo=before.lo, original_hi=before.hi)
    return rows


REAL_FID_UNIT = "vs real images"  # the frame's 'fid_real:<set>': FID of a set's images against real ones


def _real_fid_rows(r: Result, cell, original: Result | None) -> list[dict]:
    """FID of the cell's images of each set against the real images of `--real-images` (Result.real_fid), the
    original model's beside it where it was measured against the same real images."""
    from spmbench.real_images import MEASURE

    rows = []
    for prompt_set, measured in (r.real_fid or {}).items():
        interval = _stored_interval(measured)
        theirs = ((original.real_fid if original else None) or {}).get(prompt_set, {})
        same = theirs.get("reference") == measured.get("reference")
        before = _stored_interval(theirs) if same else _none(math.nan)
        rows.append(_row(r, cell, f"{MEASURE}:{prompt_set}", interval.value, interval, False, REAL_FID_UNIT,
                         before.value))  # fmt: skip
        rows[-1].update(original_lo=before.lo, original_hi=before.hi)
    return rows


def _stored_interval(measured: dict) -> stats.Interval:
    return stats.Interval(**{f.name: measured[f.name] for f in dataclasses.fields(stats.Interval)})


SCORE_UNIT = "judge score"  # the frame's per-set means of a judge's per-image measure: '<measure>:<set>'


def _per_image_measures(app: Application) -> dict:
    """The measures of the application's judges (its own and its sets'), by name: those their records hold per
    image (CLIP score) become score columns; those computed from the records (NudeNet's class counts) are in no
    record and make none."""
    from spmbench.judges import judge_class
    from spmbench.registry import UnknownName

    measures = {}
    for name in app.judge_names():
        try:
            measures.update(judge_class(name).metrics)
        except (UnknownName, ImportError):
            continue
    return measures


def _judge_score_rows(
    r: Result, cell, prompts: dict | None, app: Application | None, own: dict, original: dict
) -> list[dict]:
    """Each per-image measure the judge records (the CLIP judge's CLIP score, 2.5 max(cos, 0) of the image with its
    concept's text), per prompt set: the mean with a cluster bootstrap interval over prompts (over images where the
    set has one prompt), the original's beside it where its records hold it too. `own`, `original`: the cell's and
    the original's records by prompt id. Lower is better on the erasure sets."""
    if prompts is None or app is None or not own:
        return []
    rows = []
    for key in _per_image_measures(app):
        for prompt_set in dict.fromkeys(s for s, _ in prompts.values()):
            ids = [i for i, (s, _) in prompts.items() if s == prompt_set]
            if not all(_finite(own.get(i, {}).get(key)) for i in ids):  # the set's judge records no such value
                continue
            mean = _mean_interval([own[i][key] for i in ids], [prompts[i][1] for i in ids])
            before = _none(math.nan)
            if all(_finite(original.get(i, {}).get(key)) for i in ids):
                before = _mean_interval([original[i][key] for i in ids], [prompts[i][1] for i in ids])
            higher = prompt_set not in ERASURE_SETS
            rows.append(_row(r, cell, f"{key}:{prompt_set}", mean.value, mean, higher, SCORE_UNIT, before.value))
            rows[-1].update(original_lo=before.lo, original_hi=before.hi)
    return rows


ONE_PROMPT_BOOTSTRAP = "bootstrap over images (one prompt)"


def _mean_interval(values: list[float], texts: list[str]) -> stats.Interval:
    """The mean over a set's images, bootstrapped over its prompts; a set of one prompt (its seeds), whose prompt
    bootstrap would collapse to [m, m], over its images, said in the interval's method."""
    if len(set(texts)) > 1:
        return stats.mean_interval(values, texts)
    interval = stats.mean_interval(values, list(range(len(values))))
    return dataclasses.replace(interval, n_prompts=1, method=ONE_PROMPT_BOOTSTRAP)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sample(scores: dict[str, bool], prompts: dict | None, prompt_set: str) -> _Sample | None:
    """The set's images with their verdicts; None where some image has no score (no interval)."""
    if not prompts:
        return None
    ids = [i for i, (s, _) in prompts.items() if s == prompt_set]
    if not ids or any(i not in scores for i in ids):
        return None
    return _Sample(ids, [scores[i] for i in ids], [prompts[i][1] for i in ids])


def _rate_interval(sample: _Sample | None, stored: float | None, r: Result, prompt_set: str) -> stats.Interval:
    if sample is None or stored is None:
        return _none(stored)
    interval = stats.rate_interval(sample.present, sample.prompts)
    if abs(interval.value - stored) > 1e-9:  # the scores changed after the result was made
        log.warning("%s %s %s: the scores give %s on %s, result.json %s: no interval", r.model, r.eraser,
                    r.targets, interval.value, prompt_set, stored)  # fmt: skip
        return _none(stored)
    return interval


def _alteration(run_dir: Path | None, r: Result, prompts: dict | None, kid: bool = False) -> dict[str, stats.Interval]:
    """The intervals of the cell's alteration measures: as result.json keeps them, or for a result made
    before it did, bootstrapped from the cell's stored features (`kid`: KID and its interval too, where the
    features give the paired distance), each only where the features give result.json's value."""
    from spmbench.metrics import (
        alteration_intervals,
        frechet_distance,
        load_alteration_features,
        load_per_image,
        paired_distance,
    )

    if run_dir is None or prompts is None or not r.alteration:  # as rates: no intervals without the app's prompts
        return {}
    if r.alteration_intervals is not None:
        return {key: stats.Interval(**interval) for key, interval in r.alteration_intervals.items()}
    cell = run_dir / "cells" / cell_key(r.model, r.eraser, r.targets)
    loaded = load_alteration_features(cell / ALTERATION_FEATURES_FILE)
    if loaded is None:
        return {}
    ids, erased, original = loaded
    per_image = {key: v for key, v in load_per_image(cell / PER_IMAGE_FILE).items() if len(v) == len(ids)}
    clusters = [prompts.get(i, (None, i)) for i in ids]  # (set, prompt): one cluster per prompt
    # FID is not reproducible to 1e-9 where images are fewer than dimensions: the square roots of the
    # covariances' rounding-level eigenvalues move it by ~1e-5 between runs and implementations (39
    # toy-artist cells, 72 images in 192-D: up to 5e-8 of tr(cov_a) + tr(cov_b)); so 1e-6 of that scale
    scale = float(erased.double().var(0).sum() + original.double().var(0).sum()) if len(ids) >= 2 else 0.0
    reproduced = {
        "paired_feature_distance": _reproduces(r, "paired_feature_distance", paired_distance(erased, original), 0.0),
        **{key: _reproduces(r, key, float(values.mean()), 0.0) for key, values in per_image.items()},
    }
    if len(ids) >= 2:
        fid = frechet_distance(erased, original)
        reproduced["fid_judge_features"] = _reproduces(r, "fid_judge_features", fid, 1e-6 * scale)
    if not any(reproduced.values()):
        return {}
    reproduced["kid_judge_features"] = reproduced["paired_feature_distance"]
    kept = {key: values for key, values in per_image.items() if reproduced[key]}
    intervals = alteration_intervals(erased, original, clusters, kept, kid and reproduced["kid_judge_features"])
    return {key: interval for key, interval in intervals.items() if reproduced.get(key)}


def _reproduces(r: Result, measure: str, recomputed: float, tolerance: float) -> bool:
    """Whether the features give result.json's value, to 1e-9 relative or `tolerance` (else they
    changed after it was made: no interval, one warning)."""
    stored = r.alteration.get(measure)
    if stored is None:
        return False
    if math.isclose(recomputed, stored, rel_tol=1e-9, abs_tol=max(tolerance, 1e-12)):
        return True
    log.warning("%s %s %s: the features give %s %s, result.json %s: no interval", r.model, r.eraser, r.targets,
                measure, recomputed, stored)  # fmt: skip
    return False


def spm_variants(erasers) -> list[str]:
    """The SPM erasers (names starting with 'spm'), which every other eraser is compared with."""
    return sorted({e for e in erasers if e.startswith("spm") and "~" not in e})


def _add_comparisons(table: pd.DataFrame, samples: dict[tuple, _Sample | None]) -> None:
    """For each eraser's rate: minus each other SPM variant's on the shared prompts and seeds, with the
    paired bootstrap interval, and whether the difference holds at 95 % (else a tie). SPM variants are
    paired with each other too: that pairing is what an ablation table (FT off, no anchoring) reports."""
    for spm in spm_variants(table["eraser"]):
        diffs, los, his, differs = [], [], [], []
        for row in table.itertuples():
            ours = samples.get((row.model, row.targets, row.eraser, row.measure))
            d = _paired(ours, _paired_with(samples, row, spm)) if row.eraser.split("~")[0] != spm else None
            diffs.append(math.nan if d is None else d.value)
            los.append(math.nan if d is None else d.lo)
            his.append(math.nan if d is None else d.hi)
            differs.append(pd.NA if d is None else stats.holds(d))
        name = _column_name(spm)
        table[f"minus_{name}"], table[f"minus_{name}_lo"], table[f"minus_{name}_hi"] = diffs, los, his
        table[f"differs_from_{name}"] = pd.array(differs, dtype="boolean")


def _paired_with(samples: dict, row, spm: str) -> _Sample | None:
    """What `row` is compared with: `spm`'s first fit; for a later fit seed of an SPM variant ('spm-noft~seed1'),
    `spm`'s fit of the same seed (they share it: the difference is the variant's, not the seed's), none if absent.
    A variant's own later seeds ('spm~seed1' against spm) are its spread, not a comparison (the caller's)."""
    base, _, tag = row.eraser.partition("~")
    theirs = f"{spm}~{tag}" if tag and base.startswith("spm") else spm
    return samples.get((row.model, row.targets, theirs, row.measure))


def _column_name(eraser: str) -> str:
    """An eraser's name as part of a column name (an attribute of itertuples' rows: no '-')."""
    return eraser.replace("-", "_")


def _paired(ours: _Sample | None, theirs: _Sample | None) -> stats.Interval | None:
    if ours is None or theirs is None:
        return None
    theirs_by_id = dict(zip(theirs.ids, theirs.present))
    shared = [k for k, i in enumerate(ours.ids) if i in theirs_by_id]
    if not shared:
        return None
    a = [ours.present[k] for k in shared]
    b = [theirs_by_id[ours.ids[k]] for k in shared]
    return stats.paired_difference(a, b, [ours.prompts[k] for k in shared])


def _as_frame(data) -> pd.DataFrame:
    """A frame as is; a list of results as their frame (values only: no run folder, no intervals)."""
    return data if hasattr(data, "itertuples") else frame(list(data))


# ---- views of the frame ------------------------------------------------------------------------


def _rate_sets(table: pd.DataFrame) -> list[str]:
    rates = table[table["unit"] == "fraction"]["measure"].unique()
    return sorted(rates, key=lambda s: (s not in ERASURE_SETS, not _is_attack_set(s), s))


def _column_n(table: pd.DataFrame, measure: str) -> int | None:
    """The column's n when every cell shares it (stated once, in the header), else None (per cell)."""
    ns = table[table["measure"] == measure]["n"].dropna().unique()
    return int(ns[0]) if len(ns) == 1 else None


def table_rows(data) -> tuple[list[str], list[list[str]]]:
    """One row per (model, targets, eraser): each set's rate with its interval and the original's
    rate in brackets, each alteration measure with its interval, and the fit cost."""
    table = _primary(_as_frame(data))
    sets = _rate_sets(table)
    spms = spm_variants(table["eraser"])
    measured = set(table["measure"])  # the vision extra's measures are columns only where some result has them
    alteration = {**ALTERATION, **{k: info for k, info in OPTIONAL_ALTERATION.items() if k in measured}}
    counts = _count_columns(table)  # NudeNet's per-class counts, where the judge kept them
    scores = _score_columns(table)  # the judge's per-image measure (CLIP score) per set, where it kept one
    real = _real_fid_columns(table)  # FID against real images, where --real-images gave some
    shared_n = {m: _column_n(table, m) for m in [*sets, *counts, *scores, *real, *alteration]}

    def title(measure: str, base: str) -> str:
        return base + (f" (n={shared_n[measure]})" if shared_n[measure] is not None else "")

    header = ["model", "erased", "eraser", "fitted on"]
    header += [title(s, f"{s} {rate_info(s, _lower_is_better(s)).arrow}") for s in sets]
    header += [title(m, info.header) for m, info in counts.items()]
    header += [title(m, name) for m, name in scores.items()]
    header += [title(m, name) for m, name in real.items()]
    header += [title(key, info.header) for key, info in alteration.items()] + [FIT_SECONDS.header, FIT_MEMORY.header]
    cells = list(table.groupby(["model", "targets", "eraser", "fitted_on"], sort=False))
    cells.sort(key=lambda item: (item[0][0], len(item[0][1].split("+")), item[0][2]))  # stable: run order within
    rows = []
    for key, cell in cells:
        by_measure = {row.measure: row for row in cell.itertuples()}
        line = [_rate_cell(by_measure.get(s), spms, shared_n[s] is None) for s in sets]
        line += [_count_cell(by_measure.get(m), shared_n[m] is None) for m in counts]
        line += [_score_cell(by_measure.get(m), shared_n[m] is None) for m in scores]
        line += [_number_cell(by_measure.get(m), shared_n[m] is None, ".2f", ".2f", spread=True) for m in real]
        line += [_alteration_cell(by_measure.get(k), shared_n[k] is None, k) for k in alteration]
        line += [
            _fit_cell(by_measure.get("fit_seconds"), "{:.0f}"),
            _fit_cell(by_measure.get("fit_peak_mib"), "{:.0f}"),
        ]
        rows.append([key[0], _erased(key[1]), key[2], key[3], *line])
    return header, rows


ERASED_LISTED = 10  # an experiment erasing more targets names its first few and k (the CSV lists them all)


def _erased(targets: str) -> str:
    names = targets.split("+")
    if len(names) <= ERASED_LISTED:
        return " + ".join(names)
    return f"{' + '.join(names[:3])} + {len(names) - 3} more (k = {len(names)})"


def _percent(rate: float) -> str:
    return "-" if rate is None or math.isnan(rate) else f"{rate * 100:.0f} %"


def _has(x) -> bool:
    """Not missing (None, NaN or pandas' NA)."""
    return x is not None and not pd.isna(x)


def _rate_cell(row, spms: list[str], per_cell: bool) -> str:
    if row is None:
        return "-"
    interval = f" [{row.lo * 100:.0f}, {row.hi * 100:.0f}]" if _has(row.lo) else " [-]"
    differs = [getattr(row, f"differs_from_{_column_name(spm)}", None) for spm in spms]
    marks = "".join(mark(i) for i, d in enumerate(differs) if _has(d) and bool(d))
    n = f" n={row.n}" if per_cell and _has(row.n) else ""
    return f"{_percent(row.value)}{interval} ({_percent(row.original_value)}){marks}{n}{_fit_spread(row)}"


def _fit_spread(row, form: Callable[[float], str] = _percent) -> str:
    """'; k fits mean (lowest-highest)' for a value fitted with several seeds, else nothing."""
    fits = getattr(row, "fits", None)
    if not _has(fits) or fits < 2:
        return ""
    return f"; {fits} fits {form(row.fits_mean)} ({form(row.fits_min)}-{form(row.fits_max)})"


def _number(value: float) -> str:
    return f"{round(value, 3) + 0.0:.3f}"  # + 0.0: FID of two identical sets comes out as a rounding error's -0.000


def _alteration_cell(row, per_cell: bool, measure: str = "") -> str:
    if row is None:
        return "-"
    number = _small_number if measure == "kid_judge_features" else _number  # KID is ~1e-3 on Inception features
    interval = f" [{number(row.lo)}, {number(row.hi)}]" if _has(row.lo) else " [-]"
    n = f" n={row.n}" if per_cell and _has(row.n) else ""
    return f"{number(row.value)}{interval}{n}"


def _small_number(value: float) -> str:
    return f"{value:.2e}"


def _count_columns(table: pd.DataFrame) -> dict:
    """The count measures of the frame (NudeNet's classes, then their total), with what they are."""
    present = set(table.loc[table["unit"] == COUNT_UNIT, "measure"])
    return {m: info for m, info in COUNTS.items() if m in present}


def _score_columns(table: pd.DataFrame) -> dict[str, str]:
    """The judge-score measures of the frame ('clip_score:<set>'), each with its column title, sets in rate order."""
    scored = table[table["unit"] == SCORE_UNIT]
    order = {s: i for i, s in enumerate(_rate_sets(table))}
    measures = sorted(dict.fromkeys(scored["measure"]), key=lambda m: order.get(m.partition(":")[2], len(order)))
    titles = {}
    for measure in measures:
        key, _, prompt_set = measure.partition(":")
        name = table.attrs.get("score_names", {}).get(key, key)
        titles[measure] = f"{name} {prompt_set} {'↓' if prompt_set in ERASURE_SETS else '↑'}"
    return titles


def _real_fid_columns(table: pd.DataFrame) -> dict[str, str]:
    """The FID-against-real-images measures of the frame ('fid_real:<set>'), each with its column title."""
    measures = dict.fromkeys(table.loc[table["unit"] == REAL_FID_UNIT, "measure"])
    return {m: f"FID vs real {m.partition(':')[2]} ↓" for m in measures}


def _score_cell(row, per_cell: bool) -> str:
    """'mean [lo, hi] (the original's mean)', as rates show theirs, with the fits' spread."""
    return _number_cell(row, per_cell, ".2f", ".2f", spread=True)


def _count_cell(row, per_cell: bool) -> str:
    """'count [lo, hi] (the original's count)', as rates show theirs."""
    return _number_cell(row, per_cell, ".0f", ".1f")


def _number_cell(row, per_cell: bool, value: str, bound: str, spread: bool = False) -> str:
    if row is None:
        return "-"
    interval = f" [{row.lo:{bound}}, {row.hi:{bound}}]" if _has(row.lo) else " [-]"
    original = f" ({row.original_value:{value}})" if _has(row.original_value) else ""
    n = f" n={row.n}" if per_cell and _has(row.n) else ""
    fits = _fit_spread(row, lambda x: f"{x:{value}}") if spread else ""
    return f"{row.value:{value}}{interval}{original}{n}{fits}"


def _fit_cell(row, form: str) -> str:
    return "-" if row is None else form.format(row.value)


def caption(app: Application, data) -> str:
    table = _as_frame(data)
    settings = table.attrs.get("settings", {})
    spms = spm_variants(table["eraser"])
    marks = ", ".join(f"{mark(i)} {spm}" for i, spm in enumerate(spms))
    return (
        f"{app.name} v{app.version}; judge: {_judges(app)}; judged-present rate per prompt set with its 95 % interval, the original model's in brackets; "
        f"↓ erasure (target prompts, lower is better), ↑ erosion sets (higher is better); alteration of the non-target images against the original's (same seeds) on judge features, with its 95 % interval; "
        f"n: images per cell (in the header where every cell has the same); intervals: Wilson where each prompt has one image, else a percentile bootstrap over prompts "
        f"({stats.BOOTSTRAPS} resamples, seed {stats.SEED}; at 0 % or 100 % Wilson over the number of prompts; from fewer than {stats.FEW_PROMPTS} prompts the wider of the two), paired distance and FID recomputed on each bootstrap resample of prompts; [-]: no per-image record in the run folder; "
        + (f"marks ({marks}): this rate differs from that SPM's on the same prompts and seeds at 95 % (paired bootstrap over prompts), unmarked: a tie; " if spms else "")
        + f"fit cost: time and peak memory above the loaded model (CUDA allocation on a GPU, resident set size on CPU), summed over the targets for erasers fitted per target (SPM), one fit (no interval; -: a fit resumed from its checkpoint after a stop, not timed whole); {_sampler(settings)} {settings.get('steps')} steps, "
        f"guidance {settings.get('guidance')}, {settings.get('resolution')} px, seeds {settings.get('seeds')}"
        + (f", limit {settings['limit']} prompts per set" if settings.get("limit") else "")
        + _tuning_note(app)
        + _fit_seeds_note(app, table)
        + _scores_note(app, table)
        + _real_images_note(app, table)
        + _implementations(app, table)
        + _attacks_note(settings.get("attacks", {}))
    )  # fmt: skip


def _judges(app: Application) -> str:
    """The application's judge, and those its sets name instead ('nudenet (coco set: clip)')."""
    own = app.set_judges()
    return app.judge + (f" ({', '.join(f'{s} set: {name}' for s, (name, _) in own.items())})" if own else "")


def _sampler(settings: dict) -> str:
    """The scheduler that sampled, short ('DPMSolverMultistep'); results stored before it was recorded were DDIM's."""
    return settings.get("sampler", "DDIMScheduler").removesuffix("Scheduler")


def _scores_note(app: Application, table: pd.DataFrame) -> str:
    names = sorted({table.attrs.get("score_names", {}).get(m.partition(":")[0], m) for m in _score_columns(table)})
    if not names:
        return ""
    captions = _caption_sets(app)
    text = (
        f"its concept's text ({', '.join(captions)}: its own prompt, a caption)" if captions else "its concept's text"
    )
    return (f"; {', '.join(names)} per set: the mean over its images of the judge's per-image value (CLIP score: 2.5 "
            f"max(cos, 0) of the image with {text}), with a percentile bootstrap interval over prompts (over "
            "images where a set has one prompt), the original's in brackets")  # fmt: skip


def _caption_sets(app: Application) -> list[str]:
    """The application's sets judged against each row's own prompt (COCO captions: concepts "{prompt}")."""
    return [ps.name for ps in app.prompt_sets if ps.concepts == PROMPT]


def _real_images_note(app: Application, table: pd.DataFrame) -> str:
    """What the FID-vs-real columns are measured against, where the run was given real images; where it was not,
    that a caption set's FID (COCO utility) is against the original model's images."""
    references = table.attrs.get("real_images", [])
    captions = [name for name in _caption_sets(app) if (table["measure"] == name).any()]
    if not references:
        return (f"; FID of the {', '.join(captions)} images: against the original model's images of the same prompts "
                "and seeds (the alteration columns), no real images given (spmbench run --real-images "
                f"{captions[0]}=DIR)") if captions else ""  # fmt: skip
    return (f"; FID vs real <set>: FID of the set's images against real images ({'; '.join(references)}; "
            "center-cropped and resized), the reference fixed, its 95 % interval a percentile bootstrap over the "
            "set's prompts, shifted as FID's (spmbench.stats.reference_fid_interval, equal to torchmetrics "
            f"{package_version('torchmetrics')} FrechetInceptionDistance on the same features, tested), the original's "
            "in brackets")  # fmt: skip


def _fit_seeds_note(app: Application, table: pd.DataFrame) -> str:
    """The fit seeds the table's cells hold (not the application's list: `--fit-seeds` runs hold fewer)."""
    later = sorted({seed for name in table["eraser"] if (seed := fit_seed_of(name)[1]) is not None})
    if not later:
        return ""
    return (f"; trained erasers fitted with seeds {[app.fit_seeds[0], *later]}: the rate of the first fit, then the "
            "number of fits, their mean and range")  # fmt: skip


def _tuning_note(app: Application) -> str:
    """Where the fitting settings came from: this application's dev split, or another's (`tuning: {from: ...}`)."""
    if not app.tuned:
        # the real world's defaults are each eraser's published setting on SD 1.x (protocol v3 keeps them)
        return "; fitting settings: each eraser's defaults (its paper's), not tuned" if app.world == "real" else ""
    if not app.tuning_from:
        keys = sorted({key for chosen in app.tuned.values() for key in chosen})
        return f"; fitting settings of {', '.join(keys)} chosen on the dev split (tuning.md beside this table)"
    source, inherited = app.tuning_from, app.inherited_kinds()
    kinds = f", also for the {', '.join(inherited)} targets, kinds {source} does not tune" if inherited else ""
    where = f"{source}'s dev split (../{source}/tuning.md)"
    return f"; fitting settings chosen on {where}, not retuned here: every fit uses them{kinds}"


def _attacks_note(attacks: dict[str, dict]) -> str:
    """What the attack columns are (only where the run had attacks: other tables stay as they were)."""
    if not attacks:
        return ""
    budgets = "; ".join(
        f"{name}{' (adaptive)' if s.get('adaptive') else ''}: {s.get('steps')} steps, {s.get('tokens')} tokens, "
        f"{s.get('restarts')} restarts, seed {s.get('seed')}"
        for name, s in attacks.items()
    )
    return (
        "; attack-<name>: attack success, the judged-present rate of the target from the prompts that attack found "
        "against each model (each distinct prompt its restarts found, with every seed; the original's in brackets), "
        "lower is better; "
        "adaptive attacks also optimise against the defence (SPM's Facilitated Transport); erasers that act only "
        "in sampling (negprompt, SLD) are not seen by the attacks' losses, their prompts are then generated with "
        f"them on; budgets: {budgets}"
    )


def _implementations(app: Application, table: pd.DataFrame) -> str:
    """'; rates judged by ...; NudeNet per-class counts ...; alteration measures: ...' naming each
    measure's implementation and versions, on real models (the toy world's tables say 'judge: toy'
    and 'on judge features', as they always have)."""
    from spmbench.judges.nudenet import COUNTS_NOTE
    from spmbench.metrics import code_note, implementation_note, judge_note

    if app.world.startswith("toy"):
        return ""
    packages, measured = table.attrs.get("packages"), set(table["measure"])
    notes = [
        judge_note(table.attrs.get("judge"), packages),
        COUNTS_NOTE if measured & set(COUNTS) else "",
        implementation_note(table.attrs.get("feature_sources", []), packages, "kid_judge_features" in measured),
        code_note(packages, table.attrs.get("code")),
    ]
    return "".join(f"; {note}" for note in notes if note)


def markdown(app: Application, data) -> str:
    header, rows = table_rows(data)
    lines = [
        f"# {app.name}",
        "",
        caption(app, data),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _original_only(stored: list[Result]) -> str:
    """What a run of the original model alone (`--erasers none`) measured: the table's rows are erasers'."""
    lines = ["", "No eraser was run, so the table has no rows. The original model's judged-present rates (values only;"
             " the intervals come with an eraser's rows, beside which they are shown in brackets):", ""]  # fmt: skip
    for r in sorted((r for r in stored if r.eraser == "none"), key=lambda r: r.model):
        rates = ", ".join(f"{name} {value:.3f}" for name, value in r.rates.items())
        lines.append(f"- {r.model}: {rates} ({r.rows} images)")
    return "\n".join(lines) + "\n"


def _csv_value(measure_unit: str, value) -> str:
    if not _has(value):
        return ""
    # + 0.0: a rounding error below zero (FID of two identical sets) is written 0.0000, as the tables show it
    return f"{round(value, 4) + 0.0:.4f}" if measure_unit != "cost" else str(value)


def csv_text(data) -> str:
    """Every measured number in long form, one row each: the frame, values as the tables always gave
    them (rates and alteration to 4 decimals, fit costs as recorded)."""
    table = _as_frame(data)
    columns = [*COLUMNS, *[c for c in table.columns if c not in COLUMNS]]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in table[columns].itertuples(index=False):
        record = dict(zip(columns, row))
        kind = "cost" if record["measure"] in FIT_COSTS else "number"
        line = []
        for column, value in record.items():
            if column in ("value", "lo", "hi", "original_lo", "original_hi") or column.startswith("minus_"):
                line.append(_csv_value(kind, value))
            elif column == "original_value":
                line.append(
                    f"{value:.4f}" if record["unit"] in ("fraction", COUNT_UNIT, SCORE_UNIT, REAL_FID_UNIT) else ""
                )  # nan: a set the original lacks
            else:
                line.append("" if not _has(value) else str(value))
        writer.writerow(line)
    return out.getvalue()


def write_reports(app: Application, run_dir: Path, out_dir: Path) -> list[Path]:
    stored = load_results(run_dir)
    table = frame(stored, run_dir, app)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, text = out_dir / f"{app.name}.md", out_dir / f"{app.name}.csv"
    write_text_atomic(md, markdown(app, table) + (_original_only(stored) if _primary(table).empty else ""))
    write_text_atomic(text, csv_text(table))
    tex, plot = out_dir / f"{app.name}.tex", out_dir / f"{app.name}_tradeoff.svg"
    write_text_atomic(tex, latex(app, table))
    write_text_atomic(plot, tradeoff_svg(table))
    written = [md, text, tex, plot]
    current = [r for r in stored if r.model in _current_models(app, stored, warn=False)]  # the frame warned
    concepts = per_concept_markdown(app, run_dir, current) if current else None
    by_concept = out_dir / f"{app.name}_per_concept.md"
    if concepts is None:
        by_concept.unlink(missing_ok=True)  # one from an earlier run would describe other results
    else:
        written.append(by_concept)
        write_text_atomic(by_concept, concepts)
    scaling = scaling_svg(table)
    if scaling is not None:  # experiments erase different numbers of targets: each rate against k
        written.append(out_dir / f"{app.name}_vs_k.svg")
        write_text_atomic(written[-1], scaling)
    if (out_dir / TUNING_RECORD).exists():  # spmbench tune chose the settings: its grid beside the test result
        tuning_plot = out_dir / f"{app.name}_tuning.svg"
        write_text_atomic(tuning_plot, tuning_svg(json.loads((out_dir / TUNING_RECORD).read_text()), table))
        written.append(tuning_plot)
    erasers = sorted(e for e in _primary(table)["eraser"].unique())
    for (model, targets), _ in table.groupby(["model", "targets"], sort=False):
        if erasers:  # one grid per (model, experiment)
            limit = table.attrs["settings"].get("limit")
            grid = image_grid(run_dir, model, targets.split("+"), erasers, app, limit)
            if grid is not None:
                name = targets_slug(targets.split("+"), lambda t: t.replace(" ", "-"))  # 40 targets: shortened
                path = out_dir / "grids" / f"{model}_{name}.png"
                path.parent.mkdir(exist_ok=True)
                save_image_atomic(grid, path)
                written.append(path)
    return written


def per_concept_markdown(app: Application, run_dir: Path, stored: list[Result]) -> str | None:
    """Each cell's rate per concept on every prompt set of several concepts, the original's beside it: which
    sibling an eraser erodes, where the table's rate averages them. None where no set has several concepts."""
    lines, originals = [], {}
    for r in sorted(stored, key=lambda r: (r.model, r.targets, r.eraser)):
        if r.eraser == "none" or fit_seed_of(r.eraser)[1] is not None:  # each eraser's first fit, as the table
            continue
        prompts = _prompts(app, r)
        if r.model not in originals:  # read once per model, not once per cell
            originals[r.model] = _records(run_dir, r.model, "none", ())
        ours, original = _records(run_dir, r.model, r.eraser, r.targets), originals[r.model]
        for (prompt_set, concept), ids in _by_concept(prompts, ours).items():
            texts = [prompts[i][1] for i in ids]  # a concept of one prompt (its seeds): each image its own draw
            rate = stats.rate_interval([ours[i]["present"] for i in ids], texts if len(set(texts)) > 1 else ids)
            before = [original[i]["present"] for i in ids if i in original]
            was = f"{_percent(sum(before) / len(before))}" if len(before) == len(ids) else "-"
            lines.append(f"| {r.model} | {_erased('+'.join(r.targets))} | {r.eraser} | {prompt_set} | {concept} | "
                         f"{_percent(rate.value)} [{rate.lo * 100:.0f}, {rate.hi * 100:.0f}] ({was}) | {rate.n} |")  # fmt: skip
    if not lines:
        return None
    return (
        f"# {app.name}: rates per concept\n\nEach eraser's first fit; the prompt sets of several concepts, each concept's "
        "judged-present rate with its 95 % interval (as the table's), the original model's on the same prompts and "
        "seeds in brackets.\n\n| model | erased | eraser | set | concept | rate (original) | n |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def _by_concept(prompts: dict[str, tuple[str, str]], records: dict[str, dict]) -> dict[tuple[str, str], list[str]]:
    """(set, concept) -> its prompt ids, for the non-attack sets of several concepts whose every image is scored (a
    partly scored set has no rate, as in the table)."""
    sets: dict[str, list[str]] = {}
    for i, (prompt_set, _) in prompts.items():
        if not _is_attack_set(prompt_set):
            sets.setdefault(prompt_set, []).append(i)
    groups: dict[tuple[str, str], list[str]] = {}
    for prompt_set, ids in sets.items():
        if all(i in records for i in ids):
            for i in ids:
                groups.setdefault((prompt_set, str(records[i].get("concept"))), []).append(i)
    concepts = Counter(prompt_set for prompt_set, _ in groups)
    return {key: ids for key, ids in groups.items() if concepts[key[0]] > 1}


LATEX_SUPERSCRIPTS = {ord(c): f"$^{{{d}}}$" for d, c in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")}


def latex(app: Application, data) -> str:
    header, rows = table_rows(data)

    def esc(text: str) -> str:
        return (
            text.replace("%", r"\%")
            .replace("_", r"\_")
            .replace("&", r"\&")
            .replace("↓", r"$\downarrow$")
            .replace("↑", r"$\uparrow$")
            .replace("†", r"$^{\dagger}$")
            .replace("‡", r"$^{\ddagger}$")
            .replace("§", r"$^{\S}$")
            .replace("¶", r"$^{\P}$")
            .replace("‖", r"$^{\|}$")
            .translate(LATEX_SUPERSCRIPTS)
        )

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}",
        r"\toprule",
    ]
    lines.append(" & ".join(esc(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(caption(app, data)) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _tradeoff_points(table: pd.DataFrame) -> list[tuple]:
    """Per cell: erasure (target rate / original's) and its interval, erosion (mean kept-set rate /
    original's) and the mean of the sets' interval ends over the original's (an approximate band)."""
    points = []
    rates = table[table["unit"] == "fraction"]
    for (model, targets, eraser), cell in rates.groupby(["model", "targets", "eraser"], sort=False):
        target = cell[cell["measure"] == "target"]
        if target.empty or not target["original_value"].iloc[0]:
            continue
        t = target.iloc[0]
        kept = cell[
            ~cell["measure"].isin(ERASURE_SETS) & ~cell["measure"].map(_is_attack_set) & (cell["original_value"] > 0)
        ]
        if kept.empty:
            continue
        ratio = lambda column, rows: float((rows[column] / rows["original_value"]).mean())  # noqa: E731
        x = (t.value / t.original_value, t.lo / t.original_value, t.hi / t.original_value)
        y = (ratio("value", kept), ratio("lo", kept), ratio("hi", kept))
        points.append((x, y, f"{eraser} {model} {targets}"))
    return points


PLOT_SCALE = 1.2  # axes of relative rates run from 0 to this (a derivative may beat its original)


def _plot_axes(width: int, height: int, x_label: str, y_label: str, note: str, pad: int = 50):
    """An SVG plot's background, axes, labels and ticks, and its x and y scales (relative rates, 0-1.2)."""
    sx = lambda v: pad + min(max(v, 0), PLOT_SCALE) / PLOT_SCALE * (width - 2 * pad)  # noqa: E731
    sy = lambda v: height - pad - min(max(v, 0), PLOT_SCALE) / PLOT_SCALE * (height - 2 * pad)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">{x_label}</text>',
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">{y_label}</text>',
        f'<text x="{width - pad}" y="{pad - 10}" text-anchor="end">{note}</text>',
    ]
    for tick in (0, 0.5, 1.0):
        parts.append(f'<text x="{sx(tick)}" y="{height - pad + 14}" text-anchor="middle">{tick}</text>')
        parts.append(f'<text x="{pad - 6}" y="{sy(tick) + 4}" text-anchor="end">{tick}</text>')
    return parts, sx, sy


TARGET_AXIS = "target presence / original (lower: more erased)"
PALETTE = {"spm": "#d62728", "spm-rel": "#ff7f0e", "spm-noft": "#1f77b4"}


def tradeoff_svg(data, width: int = 480, height: int = 360) -> str:
    """Erasure (target rate relative to the original) against erosion (kept accuracy on the other
    sets), with 95 % error bars where the run folder gave intervals."""
    points = _tradeoff_points(_primary(_as_frame(data)))
    y_label = "non-target accuracy / original (higher: less eroded)"
    parts, sx, sy = _plot_axes(width, height, TARGET_AXIS, y_label, "bars: 95 % intervals over the original's rate")
    for (x, x_lo, x_hi), (y, y_lo, y_hi), label in points:
        colour = PALETTE.get(label.split()[0], "#555")
        if _has(x_lo) and _has(y_lo):
            parts.append(
                f'<line x1="{sx(x_lo):.1f}" y1="{sy(y):.1f}" x2="{sx(x_hi):.1f}" y2="{sy(y):.1f}" stroke="{colour}" stroke-opacity="0.5"/>'
            )
            parts.append(
                f'<line x1="{sx(x):.1f}" y1="{sy(y_lo):.1f}" x2="{sx(x):.1f}" y2="{sy(y_hi):.1f}" stroke="{colour}" stroke-opacity="0.5"/>'
            )
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}"><title>{label}: {x:.2f}, {y:.2f}</title></circle>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


BASELINE_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#555555")


def scaling_svg(data, panel: int = 220, height: int = 240) -> str | None:
    """Each rate against k, the number of targets erased at once: one panel per prompt set (the rate over
    the original's, 95 % bars), one per alteration measure (over its largest value, 95 % bars) and one of
    the fit's seconds (SPM: its k single-target fits summed; the others: one k-target fit), one line per
    eraser, on the family root (the model the erasers were fitted on). None where every experiment erases
    as many targets."""
    table = _primary(_as_frame(data))
    root = table[table["model"] == table["fitted_on"]]
    ks = sorted({len(t.split("+")) for t in root["targets"]})
    if len(ks) < 2:
        return None
    sets = _rate_sets(root)
    erasers = list(dict.fromkeys(root["eraser"]))
    colours = {e: PALETTE.get(e) or BASELINE_COLOURS[i % len(BASELINE_COLOURS)] for i, e in enumerate(erasers)}
    alteration = [m for m in ALTERATION if m in set(root["measure"])]
    width = panel * (len(sets) + len(alteration) + 1) + 140
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']  # fmt: skip
    for i, measure in enumerate([*sets, *alteration, "fit_seconds"]):
        rows = root[root["measure"] == measure]
        scale = None if measure in sets else _largest(rows)
        parts += _scaling_panel(rows, measure, ks, colours, i * panel, panel, height, scale)
    for j, eraser in enumerate(erasers):
        y = 20 + 14 * j
        parts.append(f'<text x="{width - 130}" y="{y}" fill="{colours[eraser]}">{eraser}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _scaling_panel(rows, measure: str, ks: list[int], colours: dict, left: int, width: int, height: int, scale):
    """One panel of `scaling_svg`: `measure` against k for each eraser, relative to the original's rate
    (rates, 0-1.2) or to `scale` (fit seconds, 0-1), with its 95 % bars where the frame has them."""
    pad = 36
    sx = lambda k: left + pad + ks.index(k) / max(len(ks) - 1, 1) * (width - 2 * pad)  # noqa: E731
    top = 1.0 if scale else PLOT_SCALE
    sy = lambda v: height - pad - min(max(v, 0), top) / top * (height - 2 * pad)  # noqa: E731
    title = f"{measure} / original"
    if scale:
        title = f"fit (s), max {scale:.0f}" if measure == "fit_seconds" else f"{measure}, max {scale:.3g}"
    parts = [f'<text x="{left + width / 2}" y="16" text-anchor="middle">{title}</text>',
             f'<line x1="{left + pad}" y1="{height - pad}" x2="{left + width - pad}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{left + pad}" y1="{pad}" x2="{left + pad}" y2="{height - pad}" stroke="black"/>']  # fmt: skip
    parts += [f'<text x="{sx(k):.1f}" y="{height - pad + 14}" text-anchor="middle">{k}</text>' for k in ks]
    parts.append(f'<text x="{left + width / 2}" y="{height - 6}" text-anchor="middle">k targets</text>')
    for eraser, cells in rows.groupby("eraser", sort=False):
        base = (lambda r: scale) if scale else (lambda r: r.original_value if _has(r.original_value) else math.nan)
        by_k = {}
        for r in cells.itertuples():
            if _has(base(r)) and base(r) > 0:
                by_k.setdefault(len(r.targets.split("+")), []).append(
                    (r.value / base(r), r.lo / base(r), r.hi / base(r))
                )
        means = {k: tuple(_mean(c) for c in zip(*v)) for k, v in sorted(by_k.items())}  # over models' cells
        colour = colours[eraser]
        line = " ".join(f"{sx(k):.1f},{sy(v):.1f}" for k, (v, _, _) in means.items())
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}"/>')
        for k, (v, lo, hi) in means.items():
            if _has(lo) and _has(hi):
                parts.append(f'<line x1="{sx(k):.1f}" y1="{sy(lo):.1f}" x2="{sx(k):.1f}" y2="{sy(hi):.1f}" '
                             f'stroke="{colour}" stroke-opacity="0.5"/>')  # fmt: skip
            parts.append(f'<circle cx="{sx(k):.1f}" cy="{sy(v):.1f}" r="3" fill="{colour}">'
                         f"<title>{eraser}, k={k}: {v:.2f}</title></circle>")  # fmt: skip
    return parts


def _largest(rows) -> float:
    """A panel's scale: the largest value or interval end of its rows (1 where there is none above 0)."""
    ends = [v for v in (*rows["value"], *rows["hi"]) if _has(v)]
    return float(max(ends)) if ends and max(ends) > 0 else 1.0


def _mean(values) -> float:
    """The mean of the values that are not missing; NaN if none is."""
    kept = [v for v in values if _has(v)]
    return sum(kept) / len(kept) if kept else math.nan


def tuning_svg(record: dict, data, width: int = 480, height: int = 360) -> str:
    """Each tuned eraser's dev grid (target rate / original's against near retention, a line through its
    points in grid order, the chosen one ringed) and the chosen setting's result on the test split (a
    filled square: the same eraser on the same fitted model, from `data`, the test frame)."""
    test = _primary(_as_frame(data))
    parts, sx, sy = _plot_axes(width, height, TARGET_AXIS, "near retention (dev: circles, test: square)",
                               "dev grid and the chosen setting on test")  # fmt: skip
    for model, by_key in record["points"].items():
        for points in by_key.values():
            eraser = fit_seed_of(points[0]["eraser"])[0].split("~")[0]
            colour = PALETTE.get(eraser, "#555")
            xy = [
                (p["target"] / p["original_target"] if p["original_target"] else math.nan, p["retention"])
                for p in points
            ]
            line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in xy if _has(x) and _has(y))
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-opacity="0.5"/>')
            for p, (x, y) in zip(points, xy):
                ring = ' stroke="black" stroke-width="2"' if p.get("chosen") else ""
                settings = ", ".join(f"{k}={v}" for k, v in p["overrides"].items())
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}"{ring}>'
                             f"<title>{eraser} on {model}, dev: {settings}</title></circle>")  # fmt: skip
            chosen = _test_point(test, model, eraser)
            if chosen is not None:
                x, y = chosen
                parts.append(f'<rect x="{sx(x) - 5:.1f}" y="{sy(y) - 5:.1f}" width="10" height="10" fill="{colour}" '
                             f'stroke="black"><title>{eraser} on {model}, test</title></rect>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _test_point(test: pd.DataFrame, model: str, eraser: str) -> tuple[float, float] | None:
    """(target / original, near / original) of `eraser` on `model` in the test frame, over its experiments."""
    rates = test[(test["model"] == model) & (test["eraser"] == eraser) & (test["unit"] == "fraction")]
    target, near = rates[rates["measure"] == "target"], rates[rates["measure"] == "near"]
    if (
        target.empty
        or near.empty
        or not (target["original_value"] > 0).all()
        or not (near["original_value"] > 0).all()
    ):
        return None
    return float((target["value"] / target["original_value"]).mean()), float(
        (near["value"] / near["original_value"]).mean()
    )


def image_grid(
    run_dir: Path,
    model: str,
    targets: list[str],
    erasers: list[str],
    app: Application,
    limit: int | None = None,
    per_set: int = 4,
    scale: int = 3,
):
    """Rows: the original then each eraser; columns: the first prompts of each set, same seeds."""
    rows = app.rows(tuple(targets), limit)
    columns = []
    for ps in app.prompt_sets:
        columns += [r for r in rows if r.set == ps.name][:per_set]
    tiles = []
    for eraser in ["none", *erasers]:
        cell = run_dir / "cells" / cell_key(model, eraser, targets) / "images"
        row = [cell / f"{r.prompt_id}.png" for r in columns]
        if all(p.exists() for p in row):
            tiles.append(row)
    return tile_grid(tiles, scale) if tiles else None


def tile_grid(rows: list[list[Path]], scale: int = 3):
    """The images at `rows` (paths, rows of equal length) side by side, enlarged `scale` times (nearest
    neighbour: the toy world's 32 px stay sharp)."""
    from PIL import Image

    tiles = [[Image.open(p).convert("RGB") for p in row] for row in rows]
    w, h = tiles[0][0].size
    canvas = Image.new("RGB", (w * len(tiles[0]), h * len(tiles)), "white")
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas.paste(tile, (j * w, i * h))
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
