"""A run: plan -> fit -> generate -> score -> report, each stage handing off through files.

Layout under the run directory (one per application):
    fits/<model>/...                        eraser artifacts (fitted on the family's root model)
    cells/<model>/<eraser>/<experiment>/    images/<prompt_id>.png, rows.jsonl, scores.jsonl, result.json
A rerun computes only what is missing: an image file, a score line, a result. Images are written
atomically and scores are appended line by line, so a kill loses at most the batch in flight.
Processes sharing the folder (a launch of several: spmbench.shard) lock what they compute: a fit,
a batch of images, a cell.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from spm.files import appending, save_image_atomic, write_text_atomic
from spmbench.apps import ERASURE_SETS, Application, PromptRow
from spmbench.cost import peak_memory, release_freed_memory
from spmbench.erasers import ERASERS
from spmbench.erasers.base import Tuned, seeded, trains
from spmbench.judges.base import Judge
from spmbench.locks import holding
from spmbench.metrics import (
    ALTERATION_FEATURES_FILE,
    PER_IMAGE_FILE,
    alteration_intervals,
    load_alteration_features,
    measures_kid,
    paired_distance,
    save_alteration_features,
    save_per_image,
)
from spmbench.models import ModelSpec
from spmbench.real_images import CACHE_DIR as REAL_CACHE
from spmbench.real_images import RealImages, reference_features
from spmbench.registry import targets_slug
from spmbench.result import Result, cell_key, run_meta
from spmbench.shard import Shard
from spmbench.stats import reference_fid_interval


log = logging.getLogger(__name__)
R = TypeVar("R")


class FitSettingsChanged(ValueError):
    """Fits on disk were made with other settings than the specs now ask for."""


class EraserAppliedChanged(ValueError):
    """A cell's images on disk were made with its eraser applied another way than the eraser now applies it."""


class StateFileError(ValueError):
    """A run's state file is damaged (torn, emptied, edited); the message names it and what to delete."""


class JudgeChanged(ValueError):
    """Scores on disk were made by another judge (other weights, model or threshold)."""


def check_judge(run_dir: Path, judge, rescore: bool = False) -> None:
    """Scores are only reused under the judge that made them. `rescore` drops every cell's scores and
    result (images and fits stay) so that this judge scores them again."""
    identity = getattr(judge, "identity", type(judge).__name__)

    def record(known: dict) -> dict:
        stored = known.get("judge")
        if stored is not None and stored != identity:
            if not rescore:
                raise JudgeChanged(
                    f"the scores in {run_dir} were made by {stored}, this run's judge is {identity}: "
                    "add --rescore to score the stored images again (nothing is regenerated), or use another --out"
                )
            for name in ("scores.jsonl", "result.json"):
                for stale in (run_dir / "cells").glob(f"*/*/*/{name}"):
                    stale.unlink()
        return {"judge": identity}

    update_state(run_dir / "judge.json", "delete it and add --rescore to score the stored images again", record)


def recorded_identity(model: ModelSpec, registry, weights_of: Callable[[str], str | None] | None = None) -> str | None:
    """What a run records of `model`'s weights (check_models): the digest of its files (model_identity); a
    derivative's names its family root's too, whose fits its cells apply. None while it cannot be known (a hub
    model not downloaded yet). `weights_of`: model_identity.weights_identity, or a cached one."""
    from spmbench.model_identity import weights_identity

    weights_of = weights_of or weights_identity
    own, root = weights_of(model.resolve()), fit_model_for(model, registry)
    if root.name == model.name or own is None:
        return own
    fitted_on = weights_of(root.resolve())
    return None if fitted_on is None else f"{own}; fits made on {root.name}: {fitted_on}"


class ModelChanged(ValueError):
    """A model's images and fits on disk were made with other weights than its source holds now."""


def check_models(run_dir: Path, models: list[ModelSpec], registry) -> None:
    """Images, scores and fits are only reused with the weights that made them: each model's identity is
    recorded in models.json at its first run (model_identity: a digest of its files; a derivative's names
    its family root's too, whose fits its cells apply), and new weights under a recorded name are refused.
    A hub model not downloaded yet is recorded once loaded (Pipelines checks every model it loads)."""
    from functools import cache

    from spmbench.model_identity import weights_identity

    weights_of = cache(weights_identity)  # a root is every derivative's too: its folder is read once
    identities = {m.name: recorded_identity(m, registry, weights_of) for m in {m.name: m for m in models}.values()}

    def record(known: dict) -> dict:
        for name, now in identities.items():
            if now is not None and known.get(name, now) != now:
                raise ModelChanged(_changed_message(run_dir, name, known[name], now))
        return known | {name: now for name, now in identities.items() if now is not None}

    update_state(run_dir / "models.json", "delete it and the cells and fits it describes", record)


def cell_models(cells: list[Cell], registry) -> list[ModelSpec]:
    """The models `cells` use: each cell's own, and the model its fits are made on."""
    return [m for c in cells for m in (c.model, fit_model_for(c.model, registry))]


def _changed_message(run_dir: Path, name: str, recorded: str, now: str) -> str:
    remove = [p for p in (run_dir / "cells" / name, run_dir / "fits" / name) if p.exists()]
    return (
        f"{run_dir} holds images and fits of {name} made with other weights than it has now (recorded "
        f"{recorded[:80]}, now {now[:80]}): use another --out, or delete {', '.join(map(str, remove)) or 'them'}, "
        "the cells of models derived from it, and its line of models.json, to make them again"
    )


@dataclass(frozen=True)
class Cell:
    """One (model, erased targets, eraser) combination of an application, and where its stage files live:
    run_dir/cells/<model>/<eraser>/<experiment>/ with images/<prompt_id>.png, scores.jsonl, result.json."""

    model: ModelSpec
    targets: tuple[str, ...]
    eraser: str
    run_dir: Path

    @property
    def key(self) -> str:
        return cell_key(self.model.name, self.eraser, self.targets)

    @property
    def prompt_targets(self) -> tuple[str, ...]:
        """The targets whose prompt rows this cell generates: none for the original, which generates every row."""
        return () if self.eraser == "none" else self.targets

    @property
    def dir(self) -> Path:
        return self.run_dir / "cells" / self.key

    @property
    def images(self) -> Path:
        return self.dir / "images"

    def image(self, row: PromptRow) -> Path:
        return self.images / f"{row.prompt_id}.png"

    @property
    def scores(self) -> Path:
        return self.dir / "scores.jsonl"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def generation_log(self) -> Path:
        """One line per generated batch: its first row, images and seconds (whichever process made it)."""
        return self.dir / "generation.jsonl"

    @property
    def original(self) -> Cell:
        """The same model's original cell, which every eraser's cell is compared with."""
        return Cell(self.model, (), "none", self.run_dir)


def fits_dir(run_dir: Path, fit_model: ModelSpec) -> Path:
    """Where the erasers fitted on `fit_model` (a family root) keep their artifacts and records."""
    return run_dir / "fits" / fit_model.name


def plan(app: Application, models: list[ModelSpec], erasers: list[str], run_dir: Path) -> list[Cell]:
    """Every cell to compute; the original model gets one cell per model, shared by all experiments.
    A trained eraser has one cell per fit seed of the application (its later seeds as `seeded` variants)."""
    fitted = [name for e in erasers if e != "none" for name in _with_fit_seeds(ERASERS.get(e), app.fit_seeds)]
    cells = []
    for model in models:
        cells.append(Cell(model, (), "none", run_dir))
        for targets in app.erase:
            cells += [Cell(model, targets, e, run_dir) for e in fitted]
    return cells


def _with_fit_seeds(eraser, fit_seeds: tuple[int, ...]) -> list[str]:
    """The eraser (fitted with its settings' seed, the application's first) and its later fit seeds' variants."""
    later = fit_seeds[1:] if trains(eraser) and not isinstance(eraser, Tuned) else ()  # grid points: one seed
    return [eraser.name, *(seeded(eraser, seed).name for seed in later)]


def all_rows(app: Application, limit: int | None) -> list[PromptRow]:
    """The union of every experiment's rows (the original model is generated once for all)."""
    seen: dict[str, PromptRow] = {}
    for targets in app.erase:
        for row in app.rows(targets, limit):
            seen.setdefault(row.prompt_id, row)
    return list(seen.values())


def _read_jsonl(path: Path) -> list[dict]:
    """A cell's score records; a line torn by a kill is skipped (its image is scored again), any other
    line that is not a record is a one-line error naming the file."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not _is_score_record(record):
            raise StateFileError(f"{path}:{number}: not a score record: delete {path.name} to score the cell again")
        rows.append(record)
    return rows


def _is_score_record(record) -> bool:
    """What every score line holds, whatever scored it: the prompt and its set (the verdict, `present`
    for a Judge, is checked where it is read: summarise)."""
    return isinstance(record, dict) and isinstance(record.get("prompt_id"), str) and isinstance(record.get("set"), str)


def _is_cost(value) -> bool:
    """A recorded fit time (s) or memory (MiB); None: not measured (a fit resumed from its checkpoint)."""
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= sys.float_info.max


def _read_costs(path: Path, fix: str) -> dict[str, float | None]:
    costs = _read_state(path, fix)
    bad = next((key for key, value in costs.items() if not _is_cost(value)), None)
    if bad is not None:
        raise StateFileError(f"{path}: damaged ({bad!r} is {costs[bad]!r}, not a number of seconds or MiB): {fix}")
    return costs


def _read_state(path: Path, fix: str) -> dict:
    """A run's JSON state file (judge.json, fit records), {} if absent; damaged: one line naming it and `fix`."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFileError(f"{path}: damaged ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: damaged (not a JSON object): {fix}")
    return data


@dataclass(frozen=True)
class Batch:
    """Rows [start, start + len(rows)) of a cell's rows, generated together: always the same rows
    together (windows of --batch-size from the first row), whatever is already on disk or whichever
    process makes them, so that an image never depends on what it was batched with."""

    cell: Cell
    start: int
    rows: tuple[PromptRow, ...]

    @property
    def lock(self) -> Path:
        return self.cell.images / f"rows-{self.start}-{self.start + len(self.rows)}"

    def missing(self) -> list[PromptRow]:
        return [r for r in self.rows if not self.cell.image(r).exists()]


def batches(cell: Cell, rows: list[PromptRow], batch_size: int) -> list[Batch]:
    """A cell's rows in generation batches of `batch_size` (the last may be shorter)."""
    return [Batch(cell, start, tuple(rows[start : start + batch_size])) for start in range(0, len(rows), batch_size)]


def generate_cell(pipe, eraser, artifacts: list[Path], rows: list[PromptRow], cell: Cell, batch_size: int) -> None:
    """Generate the rows' missing images with the eraser applied; each image is written atomically."""
    generate_batches(pipe, eraser, artifacts, batches(cell, rows, batch_size))


def generate_batches(pipe, eraser, artifacts: list[Path], todo: list[Batch], wait: bool = True) -> list[Batch]:
    """Generate the missing images of `todo` (batches of one cell), each batch holding its lock until its images
    are on disk; with `wait` False, the batches another process holds are returned (put off) instead of waited for.
    A batch's PNGs are encoded and written by a thread while the next batch generates: at 512 px the encoding takes
    tens of ms per image, a few per cent of a GPU's time per image if the generation waited for it."""
    todo = [b for b in todo if b.missing()]
    if not todo:
        return []
    cell, put_off = todo[0].cell, []
    cell.images.mkdir(parents=True, exist_ok=True)
    with eraser.apply(pipe, artifacts) as generate, ThreadPoolExecutor(1, "spmbench-png") as writer:
        writing = None  # (lock, future) of the batch whose images are being written
        try:
            for batch in tqdm(todo, desc=f"generate {cell.key}", unit="batch"):
                lock = ExitStack()
                held = lock.enter_context(holding(batch.lock, wait=False))
                if not held and wait:  # never wait for a lock while holding another: processes take them in
                    previous, writing = writing, None  # other orders, and two waiting on each other wait forever
                    _finish(previous)
                    held = lock.enter_context(holding(batch.lock, wait=True))
                if not held:
                    lock.close()
                    put_off.append(batch)
                    continue
                try:
                    saving = _generate_batch(generate, batch, writer)
                except BaseException:
                    lock.close()
                    raise
                if saving is None:  # nothing was missing: nothing to wait for
                    lock.close()
                    continue
                previous, writing = writing, (lock, saving)
                _finish(previous)  # its images are on disk (or their error raised), then its lock goes
        finally:
            _finish(writing)
    return put_off


def _finish(writing: tuple[ExitStack, Future] | None) -> None:
    """Wait for a batch's images to be written, then release its lock (also when the writing failed)."""
    if writing is None:
        return
    lock, saving = writing
    with lock:
        try:
            saving.result()
        except KeyboardInterrupt:  # the images being written land before their lock goes
            futures_wait([saving])
            raise


def _generate_batch(generate, batch: Batch, writer: ThreadPoolExecutor) -> Future | None:
    """The whole batch, its missing images handed to `writer` (the others were made by the same batch before)."""
    missing = batch.missing()  # again under the lock: another process may have made them meanwhile
    if not missing:
        return None
    model = batch.cell.model
    prompts = [model.caption_prefix + r.prompt + model.caption_suffix for r in batch.rows]
    generators = [torch.Generator().manual_seed(r.seed) for r in batch.rows]
    t0 = time.perf_counter()
    out = generate(
        prompts, num_inference_steps=model.num_inference_steps, guidance_scale=model.guidance_scale,
        generator=generators, height=model.resolution, width=model.resolution,
    )  # fmt: skip
    timing = {"start": batch.start, "images": len(batch.rows), "seconds": round(time.perf_counter() - t0, 3)}
    todo = [(image, batch.cell.image(row)) for row, image in zip(batch.rows, out.images) if row in missing]
    return writer.submit(_save_images, todo, batch.cell.generation_log, timing)


def _save_images(todo: list[tuple[Image.Image, Path]], log: Path, timing: dict) -> None:
    """The batch's images, then its timing line (after them: a timed batch has its images on disk)."""
    for image, path in todo:
        save_image_atomic(image, path)
    with appending(log) as f:  # one write, after a newline ending any line torn by a kill (empty lines are skipped)
        f.write("\n" + json.dumps(timing) + "\n")


def _attack_batches(cell: Cell, own_rows: int, attacked: list[PromptRow], batch_size: int) -> list[Batch]:
    """The attack rows' batches, numbered on after the cell's own rows' (so they batch as the rows did without
    attacks); a batch whose rows are all scored is left out: its images are not needed again."""
    scored = {s["prompt_id"] for s in _read_jsonl(cell.scores)}
    todo = [Batch(cell, own_rows + b.start, b.rows) for b in batches(cell, attacked, batch_size)]
    return [b for b in todo if not all(row.prompt_id in scored for row in b.rows)]


def _remake_original_images(pipe, original: Cell, rows: list[PromptRow], batch_size: int) -> None:
    """The original's missing non-target images, remade in its own batches (those that made the images its scores
    judged), holding its folder as its computation does."""
    needed = [
        b
        for b in batches(original, rows, batch_size)
        if any(r.set not in ERASURE_SETS and not original.image(r).exists() for r in b.rows)
    ]
    if needed:
        with holding(original.dir):
            generate_batches(pipe, ERASERS.get("none"), [], needed)


def generation_seconds(cell: Cell, rows: list[PromptRow], batch_size: int) -> float | None:
    """The seconds the pipeline took for the cell's batches of `rows`, whichever process and run made them (the
    latest line of each batch, by first row and size, in its generation log): what a rate per image is measured
    from in a run of several processes, where the cell's own compute finds its images made. None where a batch
    has no line (made before batches were timed, batched otherwise, or its line lost to a kill)."""
    timed = {}
    if cell.generation_log.exists():
        for line in cell.generation_log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                timed[int(record["start"]), int(record["images"])] = float(record["seconds"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill, or another's: that batch counts as untimed
    wanted = [(b.start, len(b.rows)) for b in batches(cell, rows, batch_size)]
    return round(sum(timed[b] for b in wanted), 3) if all(b in timed for b in wanted) else None


def load_images(paths: list[Path]) -> torch.Tensor:
    return (
        torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )


def score_cell(judge, rows: list[PromptRow], cell: Cell, batch_size: int = 256) -> list[dict]:
    """Judge the rows' images not scored yet, appending a line each to scores.jsonl; all rows' scores."""
    scores_path = cell.scores
    done = {s["prompt_id"] for s in _read_jsonl(scores_path)}
    todo = [r for r in rows if r.prompt_id not in done]
    _end_torn_line(scores_path)
    with appending(scores_path) as f:
        for start in range(0, len(todo), batch_size):
            # each set's images by its own judge (Judge.for_set: the application's, or the one the set names)
            for set_judge, group in groupby(todo[start : start + batch_size], key=lambda r: _judge_of(judge, r.set)):
                batch = list(group)
                images = load_images([cell.image(r) for r in batch])
                for row, verdict in zip(batch, set_judge.assess(images, [r.concept for r in batch])):
                    record = {"prompt_id": row.prompt_id, "set": row.set, "concept": row.concept, **verdict}
                    f.write(json.dumps(record) + "\n")  # raw judge output kept (detections, CLIP scores)
            f.flush()
    wanted = {r.prompt_id for r in rows}
    # one score per prompt id: a row listed twice (an attack prompt two restarts found, before 7b9b2aa) was judged
    # twice, on the one image its id names
    by_id = {}
    for s in _read_jsonl(scores_path):
        if s["prompt_id"] in wanted:
            by_id.setdefault(s["prompt_id"], s)
    scores = list(by_id.values())
    if set(by_id) != wanted:
        raise RuntimeError(f"{scores_path} lacks scores for some of its {len(wanted)} prompts: delete it to rescore")
    return scores


def _judge_of(judge, prompt_set: str):
    """The judge of a set's images (Judge.for_set); a judge-like object without sets (the toy card's) judges all."""
    return judge.for_set(prompt_set) if hasattr(judge, "for_set") else judge


def _end_torn_line(path: Path) -> None:
    """Close a last line torn by a kill: a record appended to it would be lost with it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            f.write(b"\n")


def image_features(source: Judge, paths: list[Path], batch_size: int) -> torch.Tensor:
    """`source`'s features of the images at `paths`, loaded a batch at a time (COCO-30k's images at 512 px would
    take 94 GB at once)."""
    return torch.cat(
        [source.features(load_images(paths[i : i + batch_size])) for i in range(0, len(paths), batch_size)]
    )


def _set_features(source: Judge, result: Result, cell: Cell, rows: list[PromptRow], batch_size: int) -> torch.Tensor:
    """`source`'s features of the cell's images of `rows`: those its alteration stored where measured on the same
    source (an erased cell's), else from its images, which must be on disk."""
    stored = load_alteration_features(cell.dir / ALTERATION_FEATURES_FILE)
    if stored is not None and result.alteration_features == source.identity:
        index = {prompt_id: i for i, prompt_id in enumerate(stored[0])}
        if all(r.prompt_id in index for r in rows):
            return stored[1][[index[r.prompt_id] for r in rows]]
    gone = [r for r in rows if not cell.image(r).exists()]
    if gone:
        raise FileNotFoundError(
            f"{cell.dir}: {len(gone)} of its {rows[0].set} images are gone ({cell.image(gone[0]).name}, ...), so its FID "
            "against the real images cannot be measured: delete its result.json to make them again, or run without "
            "--real-images"
        )
    return image_features(source, [cell.image(r) for r in rows], batch_size)


def _paired(source, erased: list[Path], original: list[Path], batch_size: int) -> dict[str, torch.Tensor]:
    """`source.paired`'s per-image measures (LPIPS) of same-seed images, a batch at a time."""
    parts = [
        source.paired(load_images(erased[i : i + batch_size]), load_images(original[i : i + batch_size]))
        for i in range(0, len(erased), batch_size)
    ]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}


def measure_alteration(
    features: Callable[[], Judge], rows: list[PromptRow], cell: Cell, kid: bool = False, batch_size: int = 32
) -> tuple[dict[str, float], dict[str, dict]] | None:
    """How much non-target generations moved: paired feature distance and FID vs the original model,
    on the image features of `features()` (spmbench.judges.alteration_features: the judge's own, or
    the world's declared source), with their 95 % intervals over prompts (`metrics.alteration_intervals`;
    `kid`: KID's too), which result.json keeps; None where the application has no non-target prompts
    (nothing to measure, and the feature source is never loaded)."""
    kept = [r for r in rows if r.set not in ERASURE_SETS]
    if not kept:
        return None
    source = features()
    erased_paths, original_paths = [cell.image(r) for r in kept], [cell.original.image(r) for r in kept]
    erased, original = (
        image_features(source, erased_paths, batch_size),
        image_features(source, original_paths, batch_size),
    )
    ids = [r.prompt_id for r in kept]  # the features stay beside the result, for measures added later
    save_alteration_features(cell.dir / ALTERATION_FEATURES_FILE, ids, erased, original)
    per_image = _paired(source, erased_paths, original_paths, batch_size) if hasattr(source, "paired") else {}  # LPIPS
    save_per_image(cell.dir / PER_IMAGE_FILE, per_image)
    intervals = alteration_intervals(erased, original, [(r.set, r.prompt) for r in kept], per_image, kid)
    out = {"paired_feature_distance": paired_distance(erased, original)}
    out.update({key: float(values.mean()) for key, values in per_image.items()})
    if "fid_judge_features" in intervals:  # frechet_distance's value, computed once
        out["fid_judge_features"] = intervals["fid_judge_features"].value
    return out, {key: asdict(interval) for key, interval in intervals.items()}


def applied_eraser(app: Application, name: str):
    """The eraser `name` as the application applies it (its `apply:` options, for a grid point or fit seed too)."""
    options = app.apply.get(name.partition("~")[0], {})
    try:
        return ERASERS.get(name).configured(options)
    except ValueError as error:
        raise ValueError(f"{app.path or app.name}: apply: {error}") from None


def eraser_settings(eraser, app: Application, fit_model: ModelSpec) -> dict:
    """The eraser's setting overrides: the application's (what to erase towards), then the fitted
    model's (how long to train on it), then those chosen on the dev split (`spmbench tune`), then a
    tuning grid point's own. 'spm', 'spm-rel' and 'spm-noft' share a fit, so they share a key."""
    key = eraser.settings_key
    chosen = app.tuned.get(fit_model.name, {}).get(key, {})
    return {**app.eraser_settings.get(key, {}), **fit_model.eraser_settings.get(key, {}), **chosen, **eraser.overrides}


def settings_problem(app: Application, cells: list[Cell], registry) -> str | None:
    """What a run of `cells` would refuse in its erasers' fitting or apply settings (one line), before any work."""
    for name in app.apply:
        if "~" in name or name not in ERASERS:
            return f"{app.path}: apply: no eraser {name!r} (options go under an eraser's name, e.g. spm-hardened)"
    for cell in cells:
        try:
            eraser = applied_eraser(app, cell.eraser)
        except ValueError as e:
            return str(e)
        fit_model = fit_model_for(cell.model, registry)
        given = eraser_settings(eraser, app, fit_model)
        try:
            settings = eraser.settings(given)  # raises ValueError (one line) where a run would refuse them
        except ValueError as e:
            return f"{e} (eraser_settings.{eraser.fit_key} of {app.path} and {fit_model.origin})"
        seed = getattr(settings, "seed", None) if trains(eraser) and len(app.fit_seeds) > 1 else None
        if seed is not None and not eraser.overrides and seed != app.fit_seeds[0]:
            return (
                f"{app.path}: fit_seeds starts with {app.fit_seeds[0]}, but {eraser.name} is fitted with seed {seed} "
                f"on {fit_model.name}: list that seed first"
            )
    return None


def check_fit_settings(workdir: Path, eraser, settings: dict) -> None:
    """Record the settings an eraser is fitted with; refuse other settings while fits made with the
    old ones exist. Once they are deleted, the new settings (and new fit costs) replace the old."""
    key = eraser.fit_key

    def record(known: dict) -> dict:
        if known.get(key, settings) != settings and (workdir / key).exists():
            raise FitSettingsChanged(
                f"{workdir / key} was fitted with settings {known[key]}, now {settings}: "
                f"delete {workdir / key} and the cells using it to refit, or use another --out"
            )
        if known.get(key) != settings:  # the fits they cost are gone: they are measured again when refitted
            forget = _fit_costs_fix(workdir)
            for name in ("fit_seconds.json", "fit_memory.json"):
                update_state(
                    workdir / name, forget, lambda costs: {k: v for k, v in costs.items() if k.split("|")[0] != key}
                )
        return known | {key: settings}

    update_state(workdir / "fit_settings.json", f"delete it and {workdir} to fit again", record)


def check_applied(cell: Cell, eraser) -> None:
    """Record how the cell's eraser is applied (`Eraser.applied`); refuse another way while the cell holds anything
    made the first way: images, scores, a result, attack prompts (a changed default would otherwise mix them, or
    reuse them under the new setting; a run state unpacked without images still has the rest)."""
    now, fix = json.loads(json.dumps(eraser.applied)), f"delete {cell.dir} to make the cell again"

    def record(known: dict) -> dict:
        if known.get("applied", now) != now and _holds_work(cell):
            raise EraserAppliedChanged(
                f"{cell.dir} was made with {cell.eraser} applied as {known['applied']}, now {now}: {fix}"
            )
        return known | {"applied": now}

    cell.dir.mkdir(parents=True, exist_ok=True)
    update_state(cell.dir / "eraser.json", fix, record)


def _holds_work(cell: Cell) -> bool:
    """Whether anything of the cell was made: an image (not a batch's lock), a score, a result, an attack's prompts."""
    made = (cell.result, cell.scores, cell.dir / "attacks")
    return any(p.exists() for p in made) or (cell.images.is_dir() and any(cell.images.glob("*.png")))


def _fit_costs_fix(workdir: Path) -> str:
    return f"delete it and the fits in {workdir} whose cost the table should give (they are refitted)"


def update_state(path: Path, fix: str, change: Callable[[dict], dict]) -> None:
    """Read a JSON state file ({} if absent; damaged: StateFileError naming it and `fix`), apply
    `change` and write the outcome back if it differs, holding the file's lock throughout, so that two
    processes sharing a run folder never lose each other's records."""
    with holding(path):
        known = _read_state(path, fix)
        changed = change(dict(known))
        if changed != known:
            _write_json_atomic(path, changed)


def fit_timed(
    eraser, pipe, targets: tuple[str, ...], workdir: Path, resolution: int, settings: dict
) -> tuple[list[Path], float | None, float | None]:
    """Fit; return the artifacts, and the time (s) and peak memory (MiB, above what was in use
    before: `spmbench.cost`) the fit took when first computed, recorded beside them.

    A rerun finds the artifacts and the records. A fit resumed from its checkpoint after a kill records no time
    (None: it was not measured whole; its last part alone would understate it); its memory peak is still its own.
    Erasers sharing a fit ('spm', 'spm-rel', 'spm-noft') share its record, so each reports what the fit cost.
    An eraser that fits each target alone (`fits_per_target`: SPM) costs the sum of its targets'
    fits, however many of them an earlier experiment had already made.
    """
    if eraser.fits_per_target and len(targets) > 1:
        parts = [fit_timed(eraser, pipe, (t,), workdir, resolution, settings) for t in targets]
        peaks = [mib for _, _, mib in parts]
        peak = None if None in peaks else max(peaks)  # one fit at a time: the largest is the peak
        seconds = [s for _, s, _ in parts]
        total = None if None in seconds else sum(seconds)  # one fit not measured whole: the sum is not known
        return [a for artifacts, _, _ in parts for a in artifacts], total, peak
    record_path, memory_path = workdir / "fit_seconds.json", workdir / "fit_memory.json"
    key, forget = f"{eraser.fit_key}|{'+'.join(targets)}", _fit_costs_fix(workdir)
    # Held from the check to the record: a process that waited for another's fit measures nothing.
    with holding(workdir / f"{eraser.fit_key}-{targets_slug(targets)}"):
        first = key not in _read_costs(record_path, forget)
        resumed = first and eraser.checkpoint_path(eraser.artifact_path(workdir, targets)).exists()
        if first and eraser.computes_fits:
            _settle(pipe, resolution)
        with peak_memory(getattr(pipe, "device", "cpu")) as peak:
            t0 = time.time()
            artifacts = eraser.fit(pipe, targets, workdir, resolution, settings)
            seconds = time.time() - t0
        if first:
            update_state(record_path, forget, lambda record: record | {key: None if resumed else seconds})
            update_state(memory_path, forget, lambda memory: memory | {key: peak.mib})
    # no memory record: a fit from before memory was measured
    return artifacts, _read_costs(record_path, forget)[key], _read_costs(memory_path, forget).get(key)


def _settle(pipe, resolution: int) -> None:
    """Bring the process to the same state before every measured fit, whatever ran before it in this
    process: a one-step generation initialises what a model's first call does (an original cell
    generated just before a fit did that; skipped, the fit measured it, 79 MiB against 18-20), then
    freed heap memory goes back to the OS."""
    if hasattr(pipe, "unet") or hasattr(pipe, "transformer"):  # stand-in pipes in tests have no model to warm
        seeded = torch.Generator().manual_seed(0)  # leaves the global random state as it was
        pipe("", num_inference_steps=1, height=resolution, width=resolution, output_type="latent", generator=seeded)
    release_freed_memory()


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1))


def summarise(scores: list[dict], source: Path) -> dict[str, float]:
    """Judged-present rate per prompt set of the score records read from `source`."""
    by_set: dict[str, list[bool]] = {}
    for s in scores:
        if not isinstance(s.get("present"), bool):
            raise StateFileError(
                f"{source}: the line of {s['prompt_id']} has no verdict: delete it to score the cell again"
            )
        by_set.setdefault(s["set"], []).append(s["present"])
    return {name: float(np.mean(v)) for name, v in by_set.items()}


def fit_model_for(model: ModelSpec, registry) -> ModelSpec:
    """Erasers are fitted once per family, on its root model; derivatives reuse them (transfer)."""
    while model.derived_from and model.derived_from in registry:
        model = registry.get(model.derived_from)
    return model


def reusable(
    app: Application,
    stored: Result | None,
    rows: int,
    attacks: tuple[str, ...] = (),
    features: Callable[[], Judge] | None = None,
    attack_rows: Callable[[tuple[str, ...]], int] | None = None,
) -> bool:
    """Whether a run reuses a cell's stored result: made from this version of the application (another version's
    prompts may have the same count), over the cell's `rows` and the attack rows its searches stored
    (`attack_rows(attacks)`: their count; none: no attack rows), with these attacks under their settings (a search
    redone under new settings keeps its count of rows), and, given `features`, its alteration measured on them
    (another --clip-model, say, recomputes it from the stored images). A run without attacks (`attacks` empty)
    reuses a result made with attacks under their current settings: its rows' rates are the same, and it keeps
    the attack rates a later attack run would otherwise recompute from scratch."""
    if stored is None or stored.app_version != app.version:
        return False
    names = tuple(attacks) or tuple(stored.settings.get("attacks", {}))
    if not _made_with(app, stored, names):
        return False
    if stored.rows != rows + (attack_rows(names) if names and attack_rows else 0):
        return False
    return _measured_on(stored, features)


def _measured_on(stored: Result, features: Callable[[], Judge] | None) -> bool:
    """Whether a stored alteration was measured on `features` (nothing measured, or no source given: yes)."""
    return features is None or stored.alteration_features is None or stored.alteration_features == features().identity


def stored_attack_rows(app: Application, cell: Cell) -> Callable[[tuple[str, ...]], int]:
    """The count of attack rows the named searches stored in the cell's folder (reusable's `attack_rows`)."""
    from spmbench.attacks import stage

    return lambda names: len(stage.rows(app, cell.dir, cell.targets, list(names)))


def _current_attacks(app: Application, stored: Result | None, cell: Cell) -> tuple[str, ...]:
    """The attacks a stored result was made with, if under the application's current settings for them and with
    every target's prompts on file (a lost or torn one: none, rather than a rate over some targets)."""
    from spmbench.attacks.stage import unsearched

    names = tuple(stored.settings.get("attacks", {})) if stored is not None else ()
    if not names or not _made_with(app, stored, names):
        return ()
    return () if any(unsearched(app, cell.dir, cell.targets, name) for name in names) else names


def _made_with(app: Application, stored: Result, attacks: tuple[str, ...]) -> bool:
    """stage.made_with, false for attacks no longer known or no longer valid in the application."""
    from spmbench.attacks.stage import made_with

    try:
        return made_with(app, stored.settings, attacks)
    except (KeyError, ValueError):
        return False


def _kept_rows_part(
    app: Application, stored: Result | None, cell: Cell, rows: list[PromptRow], limit: int | None, features
) -> Result | None:
    """A stored result whose part over the cell's own rows (their scores and the alteration) a run that adds,
    redoes or recounts attacks keeps, so that it generates and scores only the attack rows: one made from this
    version at this --limit, its alteration on these features, every row's score on file."""
    if stored is None or stored.app_version != app.version or stored.settings.get("limit") != limit:
        return None
    if not _measured_on(stored, features) or not _has_alteration_intervals(stored, cell):
        return None
    scored = {s["prompt_id"] for s in _read_jsonl(cell.scores)}
    return stored if all(row.prompt_id in scored for row in rows) else None


def _has_alteration_intervals(stored: Result, cell: Cell) -> bool:
    """Whether a stored result's alteration has its intervals: in result.json, or (a result made before
    they were kept there) as the features the report computes them from."""
    if stored.alteration is None or stored.alteration_intervals is not None:
        return True
    return (cell.dir / ALTERATION_FEATURES_FILE).exists()


class Pipelines:
    """Loaded pipelines, at most two: the family root (fits) and the model being generated, so that
    alternating between them for a derivative's cells does not reload either from disk."""

    def __init__(self, device: str, loaded_check: Callable[[ModelSpec], None] = lambda model: None):
        self.device, self.loaded, self.loaded_check = device, {}, loaded_check

    def __call__(self, model: ModelSpec):
        if model.name not in self.loaded:
            if len(self.loaded) == 2:
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[model.name] = model.load(self.device)
            self.loaded_check(model)  # what was loaded (a hub download, weights changed since the run began)
        self.loaded[model.name] = self.loaded.pop(model.name)  # most recently used last
        return self.loaded[model.name]


def run(
    app: Application,
    cells: list[Cell],
    run_dir: Path,
    judge,
    registry,
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    rescore: bool = False,
    features: Callable[[], Judge] | None = None,
    shard: Shard = Shard(),
    attacks: tuple[str, ...] = (),
    real_images: dict[str, RealImages] | None = None,
) -> list[Result]:
    """Compute every missing artifact of `cells` and return one result per cell; `rescore`: see
    check_judge; `features`: the alteration feature source (default: the judge, which must have features);
    `shard`: this process's place in a launch of several (spmbench.shard), which then share the work:
    the fits and image batches first (share_generation), then the cells' scores and results; `attacks`:
    each cell also gets these attacks' prompt sets (spmbench.attacks.stage), found against its eraser;
    `real_images`: by prompt set, a folder of real images each cell's images of that set are also measured
    against (FID, Result.real_fid; spmbench.real_images)."""
    from spmbench.attacks import stage

    stage.check_attacks(app, list(attacks))
    check_models(run_dir, cell_models(cells, registry), registry)
    for cell in cells:  # before any work: a cell made with its eraser applied another way is refused now
        check_applied(cell, applied_eraser(app, cell.eraser))
    features = features or (lambda: judge)
    check_judge(run_dir, judge, rescore)
    pipes = Pipelines(device, lambda model: check_models(run_dir, [model], registry))
    rows_by_targets = {(): all_rows(app, limit)}  # the original's; each experiment's read once (prompt files)

    def rows_of(cell: Cell) -> list[PromptRow]:
        if cell.prompt_targets not in rows_by_targets:
            rows_by_targets[cell.prompt_targets] = app.rows(cell.prompt_targets, limit)
        return rows_by_targets[cell.prompt_targets]

    def fit(cell: Cell) -> tuple[list[Path], float | None, float | None]:
        eraser, fit_model = ERASERS.get(cell.eraser), fit_model_for(cell.model, registry)
        workdir = fits_dir(run_dir, fit_model)
        settings = eraser_settings(eraser, app, fit_model)
        check_fit_settings(workdir, eraser, settings)  # before reusing anything made with them
        return fit_timed(eraser, pipes(fit_model), cell.targets, workdir, fit_model.resolution, settings)

    def finished(cell: Cell) -> bool:
        """A finished cell's batches are not shared out: its result holds its rows (and maybe attack rows), or
        their part of it is kept (compute then makes only attack rows)."""
        stored, rows = Result.load(cell.result), rows_of(cell)
        if reusable(app, stored, len(rows), (), features, stored_attack_rows(app, cell)):
            return True
        return _kept_rows_part(app, stored, cell, rows, limit, features) is not None  # its rows' images not needed

    def generate(todo: list[Batch], wait: bool) -> list[Batch]:
        cell = todo[0].cell
        artifacts, _, _ = fit(cell)
        return generate_batches(pipes(cell.model), applied_eraser(app, cell.eraser), artifacts, todo, wait)

    references: dict[str, tuple[torch.Tensor, str]] = {}  # the real images' features, computed on first use

    def with_real_fid(result: Result, cell: Cell) -> Result:
        """`result` with FID of the cell's images of each `real_images` set against them, where not measured yet
        against those (the same folder, files and feature source); saved where it changed."""
        measured = dict(result.real_fid or {})
        for prompt_set, real in (real_images or {}).items():
            kept = [r for r in rows_of(cell) if r.set == prompt_set]
            if len(kept) < 2:
                continue
            if prompt_set not in references:
                cache = run_dir / REAL_CACHE / f"{prompt_set}.safetensors"
                with holding(cache):  # one process of a launch featurises the folder, the others read it
                    references[prompt_set] = reference_features(real, features(), cache, batch_size)
            reference, identity = references[prompt_set]
            if measured.get(prompt_set, {}).get("reference") != identity:
                own = _set_features(features(), result, cell, kept, batch_size)
                interval = reference_fid_interval(own, reference, [r.prompt for r in kept])
                measured[prompt_set] = {**asdict(interval), "reference": identity}
        if measured == (result.real_fid or {}):
            return result
        result = replace(result, real_fid=measured)
        result.save(cell.result)
        return result

    def attack_rows(cell: Cell) -> list[PromptRow]:
        """The cell's attack rows, each attack's prompts found once against the cell's eraser and kept."""
        pipe, eraser = pipes(cell.model), applied_eraser(app, cell.eraser)
        erased = lambda: eraser.apply(pipe, fit(cell)[0])  # noqa: E731 (fitted only when a search runs)
        return stage.find(app, cell.dir, cell.targets, list(attacks), pipe, erased, cell.model)

    def compute(cell: Cell) -> Result:
        rows = rows_of(cell)
        eraser = applied_eraser(app, cell.eraser)
        fit_model = fit_model_for(cell.model, registry)
        settings = eraser_settings(eraser, app, fit_model)
        check_fit_settings(fits_dir(run_dir, fit_model), eraser, settings)  # before reusing anything made with them
        stored = Result.load(cell.result)
        # a run without attacks keeps those the stored result was made with (their prompts on file, not searched)
        names = attacks or _current_attacks(app, stored, cell)
        attacked = attack_rows(cell) if attacks else stage.rows(app, cell.dir, cell.targets, list(names))
        counted = stored_attack_rows(app, cell)
        if reusable(app, stored, len(rows), attacks, features, counted) and _has_alteration_intervals(stored, cell):
            return with_real_fid(stored, cell)
        if cell.eraser != "none":  # compared with the original's images and scores: they must be complete
            with holding(cell.original.dir):
                compute(cell.original)
        kept = _kept_rows_part(app, stored, cell, rows, limit, features)  # then only the attack rows are new
        extra = _attack_batches(cell, len(rows), attacked, batch_size)
        if kept is None or any(batch.missing() for batch in extra):
            artifacts, fit_seconds, fit_mib = fit(cell)
        else:  # nothing to generate: no fit needed (a machine that lost runs/ would retrain it for nothing)
            artifacts, fit_seconds, fit_mib = [], kept.fit_seconds, kept.fit_peak_mib
        t0 = time.time()
        if kept is None:
            generate_cell(pipes(cell.model), eraser, artifacts, rows, cell, batch_size)
        generate_batches(pipes(cell.model), eraser, artifacts, extra)
        gen_seconds = time.time() - t0
        # scored in the generation's batches: a judge's peak memory then stays flat however many prompts a cell has
        rates = summarise(score_cell(judge, rows + attacked, cell, batch_size), cell.scores)
        ids = {r.prompt_id for r in rows + stage.rows(app, cell.original.dir, cell.targets, list(names))}
        original = cell.original.scores
        original_rates = summarise([s for s in _read_jsonl(original) if s["prompt_id"] in ids], original)
        if kept is not None:  # the same rows' images as when it was measured
            alteration, intervals, identity = kept.alteration, kept.alteration_intervals, kept.alteration_features
        elif cell.eraser == "none":
            alteration = intervals = identity = None
        else:  # against the original's images (remade if a machine lost them)
            _remake_original_images(pipes(cell.model), cell.original, rows_of(cell.original), batch_size)
            measured = measure_alteration(features, rows, cell, measures_kid(app.world), batch_size)
            alteration, intervals = measured or (None, None)
            identity = None if alteration is None else features().identity
        result = Result(
            app=app.name, app_version=app.version, model=cell.model.name, fitted_on=fit_model.name,
            eraser=cell.eraser, targets=cell.targets, rows=len(rows) + len(attacked), rates=rates,
            original_rates=original_rates,
            alteration=alteration, alteration_features=identity,
            alteration_intervals=intervals,
            real_fid=kept.real_fid if kept is not None else None,  # the same images: what was measured on them
            fit_seconds=None if fit_seconds is None else round(fit_seconds, 1), fit_peak_mib=None if fit_mib is None else round(fit_mib, 1),
            generate_seconds_this_run=round(gen_seconds, 1),
            generate_seconds=generation_seconds(cell, rows, batch_size),
            settings={"sampler": type(pipes(cell.model).scheduler).__name__,  # what sampled, not what is assumed
                      "steps": cell.model.num_inference_steps, "guidance": cell.model.guidance_scale,
                      "resolution": cell.model.resolution, "seeds": list(app.seeds), "limit": limit, "fit": settings,
                      **({"split": app.split} if app.split != "test" else {}),  # test results as before
                      **({"attacks": stage.settings_of(app, names)} if names else {})},
            meta=run_meta(),
        )  # fmt: skip
        result.save(cell.result)
        return with_real_fid(result, cell)

    if shard.world_size > 1:
        fits: dict[tuple, list[Cell]] = {}  # the cells of each distinct fit, in plan order
        for cell in cells:
            if cell.eraser != "none":
                fit_model = fit_model_for(cell.model, registry)
                fits.setdefault((fit_model.name, ERASERS.get(cell.eraser).fit_key, cell.targets), []).append(cell)
        units = [b for cell in cells for b in batches(cell, rows_of(cell), batch_size)]
        share_generation(list(fits.values()), units, shard, finished, fit, generate)
    ordered = shard.in_order(cells)
    results = dict(zip([c.key for c in ordered], in_turn(ordered, compute)))
    return [results[cell.key] for cell in cells]


def share_generation(
    fits: list[list[Cell]],
    units: list[Batch],
    shard: Shard,
    finished: Callable[[Cell], bool],
    fit: Callable[[Cell], object],
    generate: Callable[[list[Batch], bool], list[Batch]],
) -> None:
    """The first part of a run over several processes; returns once every image of every cell not
    `finished` is on disk, whoever made it.

    Work is shared by index over lists every process builds alike from the plan, never from what is
    on disk (which changes as they work): the distinct fits (`fits`: the cells using each), then the
    image batches of every cell (`units`). Each process makes its own fits, then generates every batch in `shard.in_order`: its own,
    then the others' from the last back, taking over those their owner has not started (a slow or dead
    process), putting off those another process holds, and waiting for those last. Waiting for every
    batch is what lets scoring start: a barrier on the files, which no dead process can hang and no
    relaunch with another process count can confuse."""
    for i, using in enumerate(fits):
        if shard.owns(i) and not all(finished(cell) for cell in using):
            fit(using[0])  # one that another process makes meanwhile is waited for (fit_timed's lock)
    put_off: list[Batch] = []
    for _, group in groupby(shard.in_order(units), key=lambda batch: batch.cell.key):
        todo = list(group)
        if any(batch.missing() for batch in todo) and not finished(todo[0].cell):
            put_off += generate(todo, False)
    for _, group in groupby(put_off, key=lambda batch: batch.cell.key):
        generate(list(group), True)


def in_turn(items: list[Cell], compute: Callable[[Cell], R]) -> list[R]:
    """`compute` each item holding its lock (a cell's: its folder), so that processes sharing a run folder
    never compute one twice: an item another process holds is put off until the others are done, then
    waited for (compute then finds its stored result and reads it back, not recomputing it)."""
    results, later = {}, []
    for i, item in enumerate(items):
        with holding(item.dir, wait=False) as held:
            if held:
                results[i] = compute(item)
            else:
                later.append(i)
    for i in later:
        with holding(items[i].dir):
            results[i] = compute(items[i])
    return [results[i] for i in range(len(items))]
