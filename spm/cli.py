"""`spm train | generate | inspect`: the library from the command line."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated

import typer


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Erase concepts from Stable Diffusion with SPMs.")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="local diffusers directory or hub id (org/name)")]
DeviceOpt = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")]


def _fail_on(problem: str | None) -> None:
    if problem:
        _fail(problem)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _pipeline(model: str, device: str):
    import spm

    try:
        return spm.load_pipeline(model, device=device)
    except (ValueError, OSError) as e:
        _fail(" ".join(str(e).split()))  # hub errors span several lines


def _check_train_inputs(target: list[str], resolution: list[int] | None, out: Path) -> None:
    if out.suffix != ".safetensors":
        _fail(f"--out must end in .safetensors, got {out}")
    if out.is_dir():
        _fail(f"--out {out} is a directory: give a .safetensors file path")
    if any(not t.strip() for t in target):
        _fail("--target is empty: give the concept to erase, e.g. -t 'Snoopy'")
    for r in resolution or []:
        if r <= 0 or r % 8:
            _fail(f"--resolution {r}: give a positive multiple of 8 (the VAE's downsampling factor), e.g. 512")


def _check_checkpoint(checkpoint: Path) -> None:
    """A checkpoint left by a killed run must be one, or training would fail after loading the model."""
    from spm.checkpoint import read_checkpoint

    if checkpoint.exists():
        try:
            read_checkpoint(checkpoint)
        except ValueError as e:
            _fail(str(e))


@app.command()
def train(
    model: ModelOpt,
    target: Annotated[list[str], typer.Option("--target", "-t", help="concept to erase; repeat for several")],
    out: Annotated[Path, typer.Option(help="output .safetensors file")],
    surrogate: Annotated[str, typer.Option(help="replace the targets with this concept instead of erasing")] = "",
    iterations: int = 3000,
    lr: float = 1e-4,
    anchor_weight: Annotated[float, typer.Option(help="lambda of Latent Anchoring")] = 1000.0,
    num_anchors: int = 4,
    legacy_anchors: Annotated[
        bool, typer.Option(help="the released code's anchors: 2 random ones and the empty prompt twice")
    ] = False,
    vocabulary_anchors: Annotated[
        int, typer.Option(help="extra anchors per step from 1-3 vocabulary words (ours; the paper: 0)")
    ] = 0,
    resolution: Annotated[list[int] | None, typer.Option(help="training size in px; repeat for a list")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16")] = "float32",
    seed: int = 0,
    checkpoint_every: int = 500,
    device: DeviceOpt = "cpu",
) -> None:
    """Train one SPM erasing the target concept(s); resumes from OUT.ckpt.pt if a run was killed."""
    import spm

    _check_train_inputs(target, resolution, out)
    try:
        cfg = spm.TrainConfig(
            iterations=iterations, lr=lr, anchor_weight=anchor_weight, num_anchors=num_anchors,
            legacy_anchors=legacy_anchors, vocabulary_anchors=vocabulary_anchors,
            resolutions=tuple(resolution) if resolution else None, dtype=dtype, seed=seed, checkpoint_every=checkpoint_every,
        )  # fmt: skip
    except ValueError as e:
        _fail(f"{e} (option --{str(e).split()[0].replace('_', '-')})")
    from spm.files import output_dir_problem
    from spm.models import device_problem

    _fail_on(device_problem(device))
    _fail_on(output_dir_problem(out.parent, "--out folder"))
    checkpoint = out.with_name(out.name + ".ckpt.pt")
    _check_checkpoint(checkpoint)
    pipe = _pipeline(model, device)
    try:
        result = spm.train(pipe, target, surrogate=surrogate, config=cfg, checkpoint=checkpoint)
    except ValueError as e:  # a checkpoint from other settings, or a diverged run (NonFiniteLoss): nothing written
        _fail(str(e))
    result.provenance["base_model"] = model
    result.save(out)
    checkpoint.unlink(missing_ok=True)
    typer.echo(f"wrote {out} ({len(result.layers)} layers, {result.num_parameters:,} parameters)")


@app.command()
def generate(
    model: ModelOpt,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="repeat for several prompts")],
    out: Annotated[Path, typer.Option(help="output directory for PNGs")],
    spm_file: Annotated[list[Path] | None, typer.Option("--spm", help="SPM file; repeat to combine several")] = None,
    no_transport: Annotated[
        bool, typer.Option("--no-transport", help="fixed gamma = 1 instead of Facilitated Transport")
    ] = False,
    legacy: Annotated[bool, typer.Option(help="the released code's gamma^2 / factor-sum combination")] = False,
    similarity: Annotated[
        str, typer.Option(help="FT's prompt similarity: paper, or relative (the empty prompt scores 0)")
    ] = "paper",
    seed: int = 0,
    num_images: Annotated[int, typer.Option(min=1)] = 1,
    steps: Annotated[int, typer.Option(min=1)] = 30,
    guidance: float = 7.5,
    device: DeviceOpt = "cpu",
) -> None:
    """Generate images, with any number of SPMs attached."""
    import torch

    import spm
    from spm.files import output_dir_problem
    from spm.models import device_problem
    from spm.transport import SIMILARITIES

    if similarity not in SIMILARITIES:
        _fail(f"unknown similarity {similarity!r}: choose one of {', '.join(SIMILARITIES)}")
    if not math.isfinite(guidance):
        _fail(f"--guidance {guidance}: give a finite number, e.g. 7.5")
    _fail_on(device_problem(device))
    spms = []
    for path in spm_file or []:
        try:
            spms.append(spm.SPM.load(path))
        except (ValueError, OSError) as e:
            _fail(str(e))
    _fail_on(output_dir_problem(out, "--out"))
    pipe = _pipeline(model, device)
    try:
        runner = (
            spm.attach(pipe, spms, transport=not no_transport, legacy=legacy, similarity=similarity) if spms else None
        )
    except ValueError as e:
        _fail(str(e))
    for i, text in enumerate(prompt):
        gen = torch.Generator(device).manual_seed(seed + i)
        kwargs = dict(
            num_images_per_prompt=num_images, num_inference_steps=steps, guidance_scale=guidance, generator=gen
        )
        images = (runner(text, **kwargs) if runner else pipe(prompt=text, **kwargs)).images
        for j, image in enumerate(images):
            path = out / f"{i:03d}_{j:02d}_seed{seed + i}.png"
            image.save(path)
            typer.echo(str(path))


@app.command()
def inspect(path: Path) -> None:
    """Print an SPM file's layers, parameters, targets and provenance."""
    import spm

    try:
        s = spm.SPM.load(path)
    except (ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(f"file:       {path}")
    typer.echo(f"targets:    {', '.join(s.targets) or '(none stored)'}")
    typer.echo(f"layers:     {len(s.layers)}")
    typer.echo(f"parameters: {s.num_parameters:,}")
    typer.echo(f"rank/alpha: {s.rank} / {s.alpha}")
    typer.echo("provenance: " + json.dumps(s.provenance, indent=2))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app()
