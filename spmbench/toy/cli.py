"""Command line for retraining the toy world: `spmbench toy train`."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import fields
from pathlib import Path

import torch

from spmbench.toy import data, worlds
from spmbench.toy.train import (
    WORLD_DEFAULTS,
    SettingsChanged,
    TimeBudgetReached,
    ToyTrainConfig,
    check_stages,
    config_for_world,
    stages_of_world,
    train_world,
)


WEIGHTS = worlds.get(worlds.DEFAULT_WORLD).weights
UNFINISHED = 75  # exit status when --max-minutes stopped the run: rerun the same command to resume
DEFAULT_WORKDIR = worlds.get(worlds.DEFAULT_WORLD).checkpoints


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spmbench toy train", description="Retrain the toy world from nothing (resumable)."
    )
    p.add_argument(
        "--world", type=int, choices=sorted(worlds.WORLDS), default=worlds.DEFAULT_WORLD,
        help="which toy world: 2 (shipped) or 3 (issue 19); it sets the default folders and settings",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=None, help="where the shipped weights are written (default: the world's)"
    )
    p.add_argument("--workdir", type=Path, default=None, help="checkpoints; rerun to resume (default: the world's)")
    p.add_argument(
        "--stages", default=None,
        help="comma-separated (default: all of the world's); judge and the derivatives may be left out "
        "(tokenizer, vae, decoder and base always run or resume: the others are built on them)",
    )  # fmt: skip
    p.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-minutes", type=_at_least(0, float), default=None,
        help=f"stop at a checkpoint after this long (exit status {UNFINISHED}); the same command resumes",
    )  # fmt: skip
    p.add_argument(
        "--render-workers", type=_at_least(0), default=None,
        help="processes that render training images (default: 0 on a CPU, up to 8 spare cores on a GPU)",
    )  # fmt: skip
    for f in fields(ToyTrainConfig):
        if f.name != "world":  # None: the world's default (WORLD_DEFAULTS, else the field's)
            other = [f"world {v}: {d[f.name]}" for v, d in WORLD_DEFAULTS.items() if f.name in d]
            help_text = f"default {f.default}" + (f" ({', '.join(other)})" if other else "")
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, help=help_text)
    return p


def _at_least(minimum: float, kind: type = int):
    """An argparse type: a number of `kind`, at least `minimum`."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value" errors
    return parse


REPORTS = {2: Path("reports/toyworld.md"), 3: Path("reports/toyworld-v3.md")}


def card_main(argv: list[str] | None = None) -> None:
    from spmbench.toy.card import CardSettings

    p = argparse.ArgumentParser(prog="spmbench toy card", description="Measure the toy world; write its model card.")
    p.add_argument("--world", type=int, choices=sorted(worlds.WORLDS), default=worlds.DEFAULT_WORLD)
    p.add_argument("--weights", type=Path, default=None, help="default: the world's shipped weights")
    p.add_argument("--report", type=Path, default=None, help=f"default: {REPORTS[2]} (world 3: {REPORTS[3]})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the generations and scores here: a rerun measures only what is missing (a model whose "
                        "weights or card settings changed is measured afresh); default: a temporary folder")  # fmt: skip
    for f in fields(CardSettings):
        world_default = f.name == "num_inference_steps"  # each world's sampler has its own steps
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None if world_default else f.default,
                       help="default: the world's sampling steps (2: 30, 3: 15)" if world_default else None)  # fmt: skip
    args = p.parse_args(argv)
    world = worlds.get(args.world)
    weights, report = args.weights or world.weights, args.report or REPORTS[args.world]
    args.num_inference_steps = args.num_inference_steps or world.sampling_steps
    try:
        settings = CardSettings(**{f.name: getattr(args, f.name) for f in fields(CardSettings)})
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if report.suffix != ".md" or report.is_dir() or report.parent.is_file():
        raise SystemExit(f"error: --report must be a .md file path (its folder is created), not {report}")
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        raise SystemExit(f"error: --workdir must be a folder (created if missing), not the file {args.workdir}")
    if not (weights / "judge" / "judge.json").exists():
        raise SystemExit(f"error: no toy world in {weights}: run `spmbench toy train --world {args.world}` first")
    trained_for = json.loads((weights / "judge" / "judge.json").read_text()).get("world", 2)
    if trained_for != args.world:
        raise SystemExit(
            f"error: {weights} holds a world {trained_for} toy world, not world {args.world}: pass --world {trained_for}"
        )
    if args.world == 2:
        from spmbench.toy.card import build_card
    else:  # world 3's card measures its seven models on its own splits (no guidance sweep)
        from spmbench.toy.v3.card import build_card
    build_card(weights, report, settings, args.device, args.workdir)
    print(f"wrote {report}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    world = worlds.get(args.world)
    given = {f.name: getattr(args, f.name) for f in fields(ToyTrainConfig) if getattr(args, f.name, None) is not None}
    try:
        cfg = config_for_world(world.version, **given)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    stages = stages_of_world(world) if args.stages is None else tuple(s.strip() for s in args.stages.split(","))
    try:
        check_stages(stages, cfg)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    out = args.out or world.weights
    workdir = args.workdir or world.checkpoints
    workers = args.render_workers
    if workers is None:
        workers = 0 if args.device == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 2))
    data.use_render_workers(workers)
    try:
        train_world(out, workdir, cfg, stages=stages, device=args.device, max_minutes=args.max_minutes)
    except SettingsChanged as err:
        raise SystemExit(f"error: {err}") from None
    except TimeBudgetReached as stop:
        print(f"{stop} (--max-minutes {args.max_minutes:g}); checkpoint saved: rerun the same command to resume")
        raise SystemExit(UNFINISHED) from None
