"""How the toy world's model cards measure a model: through the suite's stages.

A card's prompts are rows of the model's original `Cell` (`runner.generate_cell` writes the images,
`runner.score_cell` the judge's verdicts to scores.jsonl), and its grids are drawn by
`report.tile_grid`, so the card generates and scores as `spmbench run` does. The cards
(spmbench.toy.card, spmbench.toy.v3.card) say which prompts, which heads and which bars.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spm.files import save_image_atomic
from spm.models import native_resolution
from spmbench.apps import PromptRow
from spmbench.erasers import ERASERS
from spmbench.model_identity import weights_identity
from spmbench.models import ModelSpec
from spmbench.report import tile_grid
from spmbench.runner import Cell, generate_cell, score_cell
from spmbench.toy import data, models


if TYPE_CHECKING:
    from spmbench.toy.card import CardSettings


@contextlib.contextmanager
def stages_folder(workdir: Path | None) -> Iterator[Path]:
    """Where a card's generations and scores go: `workdir`, kept so that a rerun measures only what is
    missing (each model under measured_key), or a temporary folder deleted afterwards."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="toy-card-") as tmp:
        yield Path(tmp)


def measured_key(model_dir: Path, settings: CardSettings, judge_dir: Path) -> str:
    """A model's folder name in a kept workdir: its name and a digest of its folder's files (weights,
    scheduler, configs), the judge's files and the card's settings, so that retrained weights, another
    sampler, a retrained judge or other settings are measured afresh, never read stale."""
    identities = [weights_identity(str(folder)) for folder in (model_dir, judge_dir)]
    digest = hashlib.sha256(json.dumps([asdict(settings), *identities], sort_keys=True).encode())
    return f"{model_dir.name}-{digest.hexdigest()[:16]}"


def row_id(group: str, i: int, prompt: str, seed: int) -> str:
    """A card image's prompt id: its group, place and a short hash of its prompt and seed, so that a card
    whose prompts change generates them afresh instead of reading another prompt's image."""
    return f"{group}-{i}-{hashlib.sha256(f'{seed} {prompt}'.encode()).hexdigest()[:8]}"


@torch.no_grad()
def judge_predictions(judge: models.Judge, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Arg-max prediction per head for (N, 3, 32, 32) images in [0, 1]."""
    return {k: v.argmax(1) for k, v in judge(images).items()}


def render_accuracy(judge: models.Judge, batch: list, label_tensors, vae=None) -> dict[str, float]:
    """Judged correct per head on rendered (image, caption, scene) triples, over the scenes the head
    applies to; with `vae`, on the renders encoded and decoded by it."""
    images = data.to_tensor([b[0] for b in batch])
    if vae is not None:
        images = models.reconstruct(vae, images).cpu()
    preds = judge_predictions(judge, images)
    out = {}
    for head, target in label_tensors([b[2] for b in batch]).items():
        mask = target != data.IGNORE
        out[head] = float((preds[head][mask] == target[mask]).float().mean())
    return out


class JudgeHeads:
    """The toy judge's network as `score_cell` calls a judge, keeping its arg-max per head for every
    image: the card checks several heads per image, where `ToyJudge` says whether one named concept
    is present."""

    def __init__(self, net: models.Judge, device: str):
        self.net, self.device = net.to(device), device

    def assess(self, images: torch.Tensor, concepts: list[str]) -> list[dict]:
        heads = {k: v.tolist() for k, v in judge_predictions(self.net, images.to(self.device)).items()}
        return [{"heads": {k: v[i] for k, v in heads.items()}} for i in range(len(images))]


@dataclass(frozen=True)
class CardRun:
    """One toy model measured as `spmbench run` measures it: the card's prompts are rows of the
    model's original Cell under `run_dir` (images, then scores.jsonl), generated in batches of
    `batch_size` with the model spec's sampling and caption habits."""

    pipe: object
    model: ModelSpec
    judge: JudgeHeads
    run_dir: Path
    batch_size: int

    @property
    def cell(self) -> Cell:
        return Cell(self.model, (), "none", self.run_dir)

    def judged_heads(self, group: str, prompts: list[str], seed: int) -> tuple[list[dict[str, int]], list[Path]]:
        """Generate prompts[i] with seed `seed + i` (rows `row_id`), judge them; per image the judged class
        per head, and the image files."""
        rows = [PromptRow(row_id(group, i, p, seed + i), group, "", p, seed + i) for i, p in enumerate(prompts)]
        generate_cell(self.pipe, ERASERS.get("none"), [], rows, self.cell, self.batch_size)
        judged = {s["prompt_id"]: s["heads"] for s in score_cell(self.judge, rows, self.cell)}
        return [judged[r.prompt_id] for r in rows], [self.cell.image(r) for r in rows]

    def at_guidance(self, guidance: float, run_dir: Path) -> CardRun:
        return replace(self, model=replace(self.model, guidance_scale=guidance), run_dir=run_dir)


def card_run(
    weights: Path, name: str, habits: dict, settings: CardSettings, judge: JudgeHeads, run_dir: Path, device: str
) -> CardRun:
    """A shipped toy model as a suite model spec: its folder, its dialect's caption habits (prefix,
    suffix), the card's sampling at the model's native resolution."""
    model = ModelSpec(name, str(weights / name), "toy", "toy", num_inference_steps=settings.num_inference_steps,
                      guidance_scale=settings.guidance_scale, caption_prefix=habits["prefix"],
                      caption_suffix=habits["suffix"])  # fmt: skip
    pipe = model.load(device)
    return CardRun(pipe, replace(model, resolution=native_resolution(pipe)), judge, run_dir, settings.batch_size)


def card_runs(
    weights: Path, habits: dict[str, dict], settings: CardSettings, judge: JudgeHeads, stages: Path, device: str
) -> Iterator[tuple[CardRun, Path]]:
    """Each model of `habits` (name: its caption habits) that `weights` holds, loaded in turn as a CardRun
    generating into <stages>/<measured_key>/card; with that model's folder, for its other measurements."""
    for name, model_habits in habits.items():
        if (weights / name / "model_index.json").exists():
            model_stages = stages / measured_key(weights / name, settings, weights / "judge")
            yield card_run(weights, name, model_habits, settings, judge, model_stages / "card", device), model_stages


def sampler_text(samplers: dict[str, str], default: str) -> str:
    """The scheduler the measured models sampled with (`samplers`: model name: scheduler class); where they
    differ, each with its models; `default` where none was measured."""
    models_of: dict[str, list[str]] = {}
    for name, sampler in samplers.items():
        models_of.setdefault(sampler, []).append(name)
    if len(models_of) <= 1:
        return next(iter(models_of), default)
    return "; ".join(f"{sampler} ({', '.join(names)})" for sampler, names in models_of.items())


def head_accuracy(
    judged: list[dict[str, int]], labels: dict[str, torch.Tensor], named: dict[str, list[bool]]
) -> dict[str, float]:
    """Judged correct per head of `named`, over the images whose prompt names the head's attribute."""
    out = {}
    for head, names in named.items():
        mask = torch.tensor(names)
        if mask.any():
            predicted = torch.tensor([j[head] for j in judged])
            out[head] = float((predicted[mask] == labels[head][mask]).float().mean())
    return out


def save_grid(images: list[Path], path: Path, cols: int = 8) -> None:
    """The first 16 images, `cols` to a row; a short last row is left out unless it is the only one."""
    images = images[:16]
    rows = [images[r * cols : (r + 1) * cols] for r in range(len(images) // cols)] or [images]
    save_image_atomic(tile_grid(rows, scale=3), path)
