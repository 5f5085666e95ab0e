"""`spmbench paper`: the paper's evaluation as its tables, each rendered from the public results frame.

The runs are `spmbench run`'s (the same cells in the same run folders, OUT/<app>/), with every
built-in eraser and the SPM ablations; this module lays the frames (`spmbench.results`) out as the
paper's tables under REPORTS/paper/<world>/, Markdown, CSV and LaTeX, and estimates what a plan
costs from the measured rates in rates.yaml (`--dry-run`).

An application feeds the tables of its kind, its name after the world ('real-artist': artist):
    concept, artist, explicit, object   every eraser on the family roots (concept: one table, one row
                                        group per experiment: 1, 2 and 3 targets)
    transfer              every eraser fitted on a family's root, on the root and on its derivatives
    ablation-ft           spm vs spm-noft (Facilitated Transport on / off)
    ablation-anchoring    spm vs spm-noanchor (Latent Anchoring on / anchor weight 0)
A table with several applications holds one block per application (their prompt sets differ).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from spm.files import write_text_atomic
from spmbench import report
from spmbench.apps import Application
from spmbench.erasers import ABLATIONS, BUILTIN, ERASERS
from spmbench.judges.nudenet import COUNT_UNIT
from spmbench.models import ModelSpec
from spmbench.result import Result


KINDS = ("concept", "artist", "explicit", "object")
PAPER_ERASERS = (*BUILTIN, *ABLATIONS)  # what `spmbench paper --erasers all` runs
RATES_FILE = Path(__file__).resolve().parent / "rates.yaml"


def kind(app: Application) -> str | None:
    """The paper table an application feeds: its name after its world ('real-artist': 'artist')."""
    name = app.name.removeprefix(f"{app.world}-")
    return name if name in KINDS else None


# ---- the tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: which applications feed it, and which rows of each one's frame it shows."""

    name: str  # its files: REPORTS/paper/<world>/<name>.md|.csv|.tex
    title: str
    about: str
    kinds: tuple[str, ...]
    rows: Callable[[pd.DataFrame], pd.DataFrame]
    needs: tuple[str, ...] = ()  # erasers whose rows an application's block needs (a comparison)


def _on_roots(frame: pd.DataFrame) -> pd.DataFrame:
    """The models the erasers were fitted on (derivatives are the transfer table's), without ablations."""
    return frame[(frame["model"] == frame["fitted_on"]) & ~frame["eraser"].isin(ABLATIONS)]


def _transfer(frame: pd.DataFrame) -> pd.DataFrame:
    """Every model of a family that has derivatives in the frame: the root and its derivatives."""
    roots = set(frame.loc[frame["model"] != frame["fitted_on"], "fitted_on"])
    return frame[frame["fitted_on"].isin(roots) & ~frame["eraser"].isin(ABLATIONS)]


def _pair(*erasers: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda frame: frame[(frame["model"] == frame["fitted_on"]) & frame["eraser"].isin(erasers)]


TABLES = (
    PaperTable("concept", "Concept erasing: one, two and three targets", "each experiment erases its targets "
               "together; the rows of one target, then two, then three", ("concept",), _on_roots),
    PaperTable("artist", "Artistic style erasing", "the erased artist (target) against the other artists",
               ("artist",), _on_roots),
    PaperTable("explicit", "Explicit content erasing", "explicit prompts (target) and the kept sets",
               ("explicit",), _on_roots),
    PaperTable("object", "Object erasing", "the erased class (target) against the other classes",
               ("object",), _on_roots),
    PaperTable("transfer", "Transfer to derivative models", "every eraser is fitted once on the family's root "
               "(fitted on) and applied unchanged to the root's derivatives", KINDS, _transfer),
    PaperTable("ablation-ft", "Ablation: Facilitated Transport", "spm: with FT (the paper's gamma); spm-noft: "
               "the same membranes at a fixed gamma of 1", KINDS, _pair("spm", "spm-noft"), ("spm", "spm-noft")),
    PaperTable("ablation-anchoring", "Ablation: Latent Anchoring", "spm: trained with Latent Anchoring; "
               "spm-noanchor: the same training with anchor weight 0", KINDS, _pair("spm", "spm-noanchor"),
               ("spm", "spm-noanchor")),
)  # fmt: skip


def blocks(
    table: PaperTable, frames: list[tuple[Application, pd.DataFrame]]
) -> list[tuple[Application, pd.DataFrame]]:
    """The table's block of each application that feeds it and has its rows (every eraser it compares)."""
    chosen = []
    for app, frame in frames:
        if kind(app) not in table.kinds or frame.empty:
            continue
        rows = table.rows(frame)
        if rows.empty or not set(table.needs) <= set(rows["eraser"]):
            continue
        rows = rows.reset_index(drop=True)
        rows.attrs = dict(frame.attrs)  # the run's settings, for the caption
        chosen.append((app, rows))
    return chosen


def no_counts(table: PaperTable, app: Application, rows: pd.DataFrame) -> str:
    """The line an explicit table's block says where its judge gave no NudeNet classes (the toy world's
    judge: present or not), in place of empty count columns; '' elsewhere."""
    if table.name != "explicit" or (rows["unit"] == COUNT_UNIT).any():
        return ""
    if app.judge == "nudenet":
        return ("No per-class NudeNet counts: the cells' scores.jsonl keep no NudeNet detections for every target "
                "image of the cell and the original (score them again: spmbench run --rescore).")  # fmt: skip
    return (f"No per-class NudeNet counts: {app.name}'s judge ({app.judge}) says whether nudity is present, "
            "not which exposed classes; its table has the share of images judged nude (target) only.")  # fmt: skip


def markdown(table: PaperTable, world: str, chosen: list[tuple[Application, pd.DataFrame]]) -> str:
    """The table's title, what it shows, then each application's block as `spmbench run` renders it."""
    parts = [f"# {table.title} ({world} world)\n\n{table.about}.\n"]
    for app, rows in chosen:
        block = report.markdown(app, rows).replace("# ", "## ", 1)
        note = no_counts(table, app, rows)
        parts.append(block.replace("\n\n", f"\n\n{note}\n\n", 1) if note else block)
    return "\n".join(parts)


def latex(table: PaperTable, chosen: list[tuple[Application, pd.DataFrame]]) -> str:
    """One LaTeX table per block, its caption headed by the paper table's title."""

    def captioned(app: Application, rows: pd.DataFrame) -> str:
        note = no_counts(table, app, rows)
        head = f"{table.title} ({app.name}): " + (f"{note} " if note else "")
        return report.latex(app, rows).replace("\\caption{", f"\\caption{{{head}", 1)

    return "\n".join(captioned(app, rows) for app, rows in chosen)


def write_tables(world: str, runs: list[tuple[Application, Path]], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every paper table the results in `runs` (application, its run folder) support, written under
    `out_dir`; returns the files written and a line for each table left out (and why)."""
    order = {k: i for i, k in enumerate(KINDS)}
    runs = sorted(runs, key=lambda item: (order.get(kind(item[0]), len(KINDS)), item[0].name))
    frames = [(app, report.results(run_dir)) for app, run_dir in runs if report.result_paths(run_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for table in TABLES:
        chosen = blocks(table, frames)
        if not chosen:
            why = f"needs the erasers {', '.join(table.needs)}" if table.needs else "no results of its kind"
            skipped.append(f"{table.name}: not written ({why}; applications of kind {', '.join(table.kinds)})")
            continue
        md, text, tex = (out_dir / f"{table.name}{suffix}" for suffix in (".md", ".csv", ".tex"))
        write_text_atomic(md, markdown(table, world, chosen))
        write_text_atomic(text, report.csv_text(pd.concat([rows for _, rows in chosen], ignore_index=True)))
        write_text_atomic(tex, latex(table, chosen))
        written += [md, text, tex]
    return written, skipped


# ---- the dry run's estimate ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """Measured seconds per image and per fit (by fit key) of one model family at one resolution; with `world`, of
    that world's models only (the toy worlds share an architecture, not their fitting settings)."""

    family: str
    resolution: int
    measured_on: str
    seconds_per_image: float | None  # None: an entry with fit or attack rates only (`spmbench rates` of such runs)
    seconds_per_fit: dict[str, float] = field(default_factory=dict)
    steps: int = 30  # the sampling steps seconds_per_image was measured at
    # per attack, the seconds of one optimisation step of one restart of a search for one target (a search of
    # `restarts` x `steps` costs that many times it: the applications' budgets differ)
    seconds_per_attack_step: dict[str, float] = field(default_factory=dict)
    world: str | None = None

    def per_image(self, model: ModelSpec) -> float | None:
        """Seconds per image of `model`: the measured rate scaled by its sampling steps, as the UNet's calls
        dominate an image (reports/bench/toy3_sampler_cpu.md: 15 steps took 0.60x the time of 30 on the toy)."""
        if self.seconds_per_image is None:
            return None
        return self.seconds_per_image * model.num_inference_steps / self.steps


def load_rates(path: Path = RATES_FILE) -> list[Rate]:
    """The measured rates (rates.yaml); a malformed file is a one-line ValueError naming it."""
    try:
        entries = yaml.safe_load(path.read_text())["rates"]
        return [
            Rate(e["family"], int(e["resolution"]), str(e.get("measured_on", "")), _seconds(e.get("seconds_per_image")),
                 {k: float(v) for k, v in (e.get("seconds_per_fit") or {}).items()}, int(e.get("steps", 30)),
                 {k: float(v) for k, v in (e.get("seconds_per_attack_step") or {}).items()},
                 None if e.get("world") is None else str(e["world"]))
            for e in entries
        ]  # fmt: skip
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: not a rates file ({type(e).__name__}: {' '.join(str(e).split())}): restore it from the repository"
        ) from None


def measured_rates(results: list, registry, attack_records: list[tuple[str, dict]] = ()) -> list[dict]:
    """rates.yaml entries measured from stored results (`spmbench rates`), one per model family, resolution and world:
    seconds per image (`_image_rate`), per fit key (`_fit_rates`) and per attack step (`_attack_rates`, from
    `attack_records`: (model, stored search) pairs, attacks/<attack>-<target>.json of the runs' cells). Results
    without sampling steps (not a run's) are left out."""
    from collections import defaultdict

    groups: dict[tuple, list] = defaultdict(list)
    for r in results:
        model = registry.get(r.model)
        if isinstance(r.settings.get("steps"), int) and r.settings["steps"] > 0:  # as every run records them
            groups[model.family, model.resolution, model.world].append(r)
    searches = _attack_rates(attack_records, registry)
    entries = []
    for (family, resolution, world), rs in sorted(groups.items()):
        entry = {"family": family, "resolution": resolution, "world": world, **_image_rate(rs)}
        fits = _fit_rates(rs)
        entry["seconds_per_fit"] = {key: round(statistics.median(f.values()), 1) for key, f in fits.items()}
        entry["fits"] = {key: len(f) for key, f in fits.items()}
        attacked = searches.get((family, resolution, world), {})
        if attacked:
            entry["seconds_per_attack_step"] = {a: round(statistics.median(v), 4) for a, v in attacked.items()}
            entry["attack_searches"] = {a: len(v) for a, v in attacked.items()}
        entries.append(entry)
    return entries


def _image_rate(results: list) -> dict:
    """The sampling steps most results used, their count, the images of those with generation times (made before
    they were kept, or with attack rows, which generate_seconds leaves out: none) and, where there are any, the
    seconds per image: their generate_seconds over their images, each scaled to those steps."""
    from collections import Counter

    steps = Counter(r.settings["steps"] for r in results).most_common(1)[0][0]
    timed = [r for r in results if r.generate_seconds is not None and "attacks" not in r.settings]
    out = {"steps": steps, "results": len(results), "images": sum(r.rows for r in timed)}
    if out["images"]:
        scaled = sum(r.generate_seconds * steps / r.settings["steps"] for r in timed)
        out["seconds_per_image"] = round(scaled / out["images"], 4)
    return out


def _fit_rates(results: list) -> dict[str, dict[tuple, float]]:
    """Per fit key, the seconds of each single-target fit on a family root, each fit once (cells sharing a fit,
    e.g. spm and spm-noft, repeat its cost; another fit seed or grid point is another fit)."""
    from collections import defaultdict

    fits: dict[str, dict[tuple, float]] = defaultdict(dict)
    for r in results:
        if len(r.targets) == 1 and r.model == r.fitted_on and r.fit_seconds is not None:
            base, _, variant = r.eraser.partition("~")
            settings = json.dumps(r.settings.get("fit", {}), sort_keys=True)
            fits[ERASERS.get(base).fit_key][r.fitted_on, r.targets, variant, settings] = r.fit_seconds
    return dict(sorted(fits.items()))


def _attack_rates(records: list[tuple[str, dict]], registry) -> dict[tuple, dict[str, list[float]]]:
    """Per (family, resolution, world) and attack, each stored search's seconds per restart and step."""
    from collections import defaultdict

    from spmbench.attacks.stage import search_steps

    out: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, record in sorted(records, key=lambda r: (r[0], r[1]["attack"])):
        model = registry.get(name)
        out[model.family, model.resolution, model.world][record["attack"]].append(
            record["seconds"] / search_steps(record)
        )
    return {key: dict(sorted(by_attack.items())) for key, by_attack in out.items()}


def _seconds(value) -> float | None:
    return None if value is None else float(value)


def rate_for(model: ModelSpec, rates: list[Rate]) -> Rate | None:
    """The model's rate: its world's entry for its family and resolution, else the family's entry for any world."""
    found = [r for r in rates if (r.family, r.resolution) == (model.family, model.resolution)]
    return next((r for r in found if r.world == model.world), next((r for r in found if r.world is None), None))


@dataclass
class Share:
    """The part of one model's estimate whose cells erase k targets at once (k = 0: the original's cells)."""

    cells: int = 0
    images: int | None = 0
    fits: int = 0  # the fits first made for these cells (a later k reuses an earlier k's: SPM's per target)
    fit_seconds: float | None = 0.0  # the fits' and the attack searches' seconds
    seconds: float | None = None  # images, fits and searches at the measured rates; None: some unmeasured


@dataclass
class Estimate:
    """One application on one model: its cells, images and the fits it makes (on the family root)."""

    app: str
    model: ModelSpec
    cells: int = 0
    images: int | None = 0  # None: a prompt file is not on this machine yet
    fits: int = 0
    fit_on: str = ""
    searches: int = 0  # attack searches (`run --attack`): one per attack and attacked target of a cell
    done_cells: int = 0  # cells with their result on disk, fits on disk: not counted above (a resumed run skips them)
    done_fits: int = 0
    seconds: float | None = 0.0  # None: no measured rate for some of it
    unmeasured: list[str] = field(default_factory=list)
    rated: bool = True  # the model's family and resolution have an entry in the rates
    note: str = ""
    by_k: dict[int, Share] = field(default_factory=dict)  # the same, by the number of targets erased at once

    @property
    def image_bytes(self) -> int | None:
        """At most this much disk for the images: uncompressed RGB (the PNGs are smaller)."""
        return None if self.images is None else self.images * self.model.resolution**2 * 3


def estimate(
    app: Application, cells: list, registry, limit: int | None, rates: list[Rate], attacks: tuple[str, ...] = ()
) -> list[Estimate]:
    """Per model: the plan's cells, images and fits still to make, and the time they take at the measured rates: a
    cell whose result is on disk and a fit on disk are counted as done, not priced (a resumed run skips them; the
    images of an unfinished cell are all counted). A fit is counted once, on the first model whose family root it
    is made on (derivatives reuse it).
    `attacks` (`run --attack`): each cell's searches, priced by the model's rate per attack step, and the
    images of the prompts they find (one per restart, with each of the application's seeds)."""
    from spmbench.runner import all_rows, fit_model_for, fits_dir

    by_model: dict[str, Estimate] = {}
    made: set[tuple] = set()
    rows = _row_counter(app, limit, all_rows)
    for cell in cells:
        line = by_model.setdefault(cell.model.name, Estimate(app.name, cell.model))
        stored = Result.load(cell.result)
        # its own rows were made (the runner reuses their images and scores): this version's, at this --limit
        rows_made = stored is not None and stored.app_version == app.version and stored.settings.get("limit") == limit
        if _reused(app, cell, stored, rows(cell.prompt_targets), attacks):
            line.done_cells += 1
            continue
        line.cells += 1  # an attack step on a finished cell: what is left is its attacks
        count = 0 if rows_made else rows(cell.prompt_targets)
        line.images = None if line.images is None or isinstance(count, str) else line.images + count
        share = line.by_k.setdefault(len(cell.prompt_targets), Share())
        share.cells += 1
        share.images = None if share.images is None or isinstance(count, str) else share.images + count
        if isinstance(count, str):
            line.note = count
        for name, searches, images, seconds in _attack_costs(app, cell, attacks, rate_for(cell.model, rates)):
            line.searches += searches
            line.images = None if line.images is None else line.images + images
            share.images = None if share.images is None else share.images + images
            line.seconds = _add(line, seconds, f"attack {name}")
            share.fit_seconds = None if seconds is None or share.fit_seconds is None else share.fit_seconds + seconds
        eraser, root = ERASERS.get(cell.eraser), fit_model_for(cell.model, registry)
        line.fit_on = root.name
        groups = [(t,) for t in cell.targets] if eraser.fits_per_target else [cell.targets]
        for group in groups if eraser.computes_fits else []:
            if (root.name, eraser.fit_key, group) in made:
                continue
            made.add((root.name, eraser.fit_key, group))
            if eraser.artifact_path(fits_dir(cell.run_dir, root), group).exists():
                line.done_fits += 1
                continue
            line.fits += 1
            seconds = _fit_seconds(eraser, rate_for(root, rates))
            line.seconds = _add(line, seconds, f"fits of {eraser.fit_key}")
            share.fits += 1
            share.fit_seconds = None if seconds is None or share.fit_seconds is None else share.fit_seconds + seconds
    for line in by_model.values():
        rate = rate_for(line.model, rates)
        line.rated = rate is not None
        per_image = rate.per_image(line.model) if rate else None
        images = None if per_image is None or line.images is None else per_image * line.images
        line.seconds = _add(line, images, "images" if line.images is not None else "images (count unknown)")
        for share in line.by_k.values():
            if per_image is not None and share.images is not None and share.fit_seconds is not None:
                share.seconds = per_image * share.images + share.fit_seconds
    return list(by_model.values())


def _reused(app: Application, cell, stored, own_rows: int | str, attacks: tuple[str, ...]) -> bool:
    """Whether the runner reuses the cell's stored result (its rows and the attack rows its searches found)."""
    from spmbench.runner import reusable, stored_attack_rows

    if isinstance(own_rows, str):  # not countable here (a prompt file not fetched): nothing is stored either
        return False
    return reusable(app, stored, own_rows, attacks, attack_rows=stored_attack_rows(app, cell))


def _attack_costs(app: Application, cell, attacks: tuple[str, ...], rate: Rate | None) -> list[tuple]:
    """(attack, searches, images, seconds or None) of each attack on the cell: a search per attacked target whose
    prompts are not stored yet, and the images of every target's prompts."""
    from spmbench.attacks import ATTACKS
    from spmbench.attacks.stage import attacked_targets, unsearched

    costs = []
    targets = attacked_targets(app, cell.targets) if attacks else ()
    for name in attacks:
        settings = ATTACKS.get(name).settings(app.attacks.get(name))
        searches = len(unsearched(app, cell.dir, cell.targets, name))  # as the run
        per_step = rate.seconds_per_attack_step.get(name) if rate else None
        seconds = None if per_step is None else per_step * settings.restarts * settings.steps * searches
        costs.append((name, searches, len(targets) * settings.restarts * len(app.seeds), seconds))
    return costs


def _row_counter(app: Application, limit: int | None, all_rows) -> Callable[[tuple], int | str]:
    """Rows per experiment (() for the original's, every experiment's), or why they cannot be counted
    here: a published prompt file not fetched yet (a dry run downloads nothing)."""
    from spmbench.prompts import cache_dir

    missing = [ps.file for ps in app.prompt_sets if ps.file and not (Path(ps.file).is_file() or (cache_dir() / ps.file).is_file())]  # fmt: skip
    counted: dict[tuple, int | str] = {}

    def count(targets: tuple) -> int | str:
        if missing:
            return f"images not counted: {', '.join(dict.fromkeys(missing))} not fetched yet (a run fetches it)"
        if targets not in counted:
            try:
                counted[targets] = len(all_rows(app, limit) if targets == () else app.rows(targets, limit))
            except (OSError, ValueError) as e:
                counted[targets] = f"images not counted: {e}"
        return counted[targets]

    return count


def _fit_seconds(eraser, rate: Rate | None) -> float | None:
    if rate is None:
        return None
    fits = rate.seconds_per_fit
    return fits.get(eraser.fit_key, fits.get(eraser.settings_key))  # an ablation costs its variant's training


def _add(line: Estimate, seconds: float | None, what: str) -> float | None:
    if seconds is None:
        line.unmeasured.append(what)
        return None
    return None if line.seconds is None else line.seconds + seconds


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _hours(line: Estimate) -> str:
    if line.seconds is not None:
        return f"about {line.seconds / 3600:.1f} h"
    where = f"{line.model.family} at {line.model.resolution} px"
    if not line.rated:
        return f"no measured rate ({where})"
    return f"no measured rate ({where}: {', '.join(dict.fromkeys(line.unmeasured))})"


def plan_text(estimates: dict[str, list[Estimate]], rates_file: Path = RATES_FILE, processes: int = 1) -> str:
    """The dry run's plan: per application and model its cells, images, fits, hours and disk; totals."""
    width = max([len(e.model.name) for lines in estimates.values() for e in lines] + [5])
    out = [f"estimates: one process at the measured rates of {rates_file.name} (spmbench/{rates_file.name}); "
           f"images on disk at most their uncompressed size; fits' files not counted"]  # fmt: skip
    if processes > 1:
        out.append(f"{processes} processes share the images and fits: at best 1/{processes} of each time")
    every = [e for lines in estimates.values() for e in lines]
    for app, lines in estimates.items():
        out.append(f"{app}:")
        for e in lines:
            fits = f"fits {e.fits}" + (f" (on {e.fit_on})" if e.fit_on and e.fit_on != e.model.name else "")
            fits += f", attack searches {e.searches:,}" if e.searches else ""
            fits += f" (done: {e.done_cells:,} cells, {e.done_fits:,} fits)" if e.done_cells or e.done_fits else ""
            images = "images ?" if e.images is None else f"images {e.images:,}"
            disk = "" if e.image_bytes is None else f", <= {_size(e.image_bytes)} of images"
            out.append(f"  {e.model.name:{width}s}  cells {e.cells:,}, {images}, {fits}: "
                       f"{_hours(e)}{disk}")  # fmt: skip
            if e.note:
                out.append(f"  {'':{width}s}  {e.note}")
        out += _by_k_lines(lines)
    measured = [e.seconds for e in every if e.seconds is not None]
    unmeasured = sorted({e.model.name for e in every if e.seconds is None})
    images = [e.images for e in every]
    total_images = "?" if None in images else f"{sum(images):,}"
    hours = f"about {sum(measured) / 3600:.1f} h" if measured else "no measured rate"
    if measured and unmeasured:
        hours += f" for what has a measured rate, plus the unmeasured {', '.join(unmeasured)}"
    disk = f"<= {_size(sum(e.image_bytes for e in every if e.image_bytes is not None))} of images"
    disk += " counted" if None in images else ""
    searches, done = (
        sum(e.searches for e in every),
        (sum(e.done_cells for e in every), sum(e.done_fits for e in every)),
    )
    left = f" still to make (done: {done[0]:,} cells, {done[1]:,} fits)" if any(done) else ""
    out.append(f"total{left}: cells {sum(e.cells for e in every):,}, images {total_images}, "
               f"fits {sum(e.fits for e in every):,}{f', attack searches {searches:,}' if searches else ''}: "
               f"{hours}; {disk}")  # fmt: skip
    return "\n".join(out)


def _by_k_lines(lines: list[Estimate]) -> list[str]:
    """An application whose experiments erase different numbers of targets: its cost by k, over its models."""
    ks = sorted({k for e in lines for k in e.by_k})
    if len([k for k in ks if k]) < 2:
        return []
    out = ["  by k, every model (k = 0: the originals' cells; a fit counted at the first k that makes it):"]
    for k in ks:
        shares = [e.by_k[k] for e in lines if k in e.by_k]
        images = [s.images for s in shares]
        seconds = [s.seconds for s in shares]
        count = "?" if None in images else f"{sum(images):,}"
        hours = "no measured rate" if None in seconds else f"about {sum(seconds) / 3600:.1f} h"
        out.append(f"    k={k:<3d} cells {sum(s.cells for s in shares):,}, images {count}, "
                   f"fits {sum(s.fits for s in shares):,}: {hours}")  # fmt: skip
    return out


def planned_tables(apps: list[Application], erasers: list[str], out_dir: Path) -> str:
    """Which paper tables a run of `apps` with `erasers` writes, and from which applications."""
    lines = [f"tables, under {out_dir}:"]
    for table in TABLES:
        feeding = [a.name for a in apps if kind(a) in table.kinds]
        lacking = [e for e in table.needs if e not in erasers]
        if lacking or not feeding:
            why = f"needs {', '.join(lacking)} (--erasers)" if lacking else "no application of its kind"
            lines.append(f"  {table.name}: not written ({why})")
        else:
            lines.append(f"  {table.name}: {', '.join(feeding)}")
    return "\n".join(lines)
