"""`spm train | generate | inspect`: the library from the command line."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import re
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml

from spm.files import DiskFullError, save_image_atomic, training_kept_in
from spm.train import TrainConfig


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


def _check_train_inputs(target: list[str], out: Path) -> None:
    if out.suffix != ".safetensors":
        _fail(f"--out must end in .safetensors, got {out}")
    if out.is_dir():
        _fail(f"--out {out} is a directory: give a .safetensors file path")
    if any(not t.strip() for t in target):
        _fail("--target is empty: give the concept to erase, e.g. -t 'Snoopy'")


def _check_checkpoint(checkpoint: Path) -> None:
    """A checkpoint left by a killed run must be one, or training would fail after loading the model."""
    from spm.checkpoint import read_checkpoint

    if checkpoint.exists():
        try:
            read_checkpoint(checkpoint)
        except ValueError as e:
            _fail(str(e))


# --- Every TrainConfig field is an option of `spm train`, made from the dataclass (names, types, help) so
# that the command line can never fall behind the library. Options default to None ("not given"), so a
# --config file's value stands unless the option is given.

_FLAG_NAMES = {"resolutions": ("--resolution", "--resolutions")}  # the name it had before it was generated


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, (f"--{name.replace('_', '-')}",))[0]


def _field_help() -> dict[str, str]:
    """Each field's text in TrainConfig's 'Attributes:' docstring section ('a, b: text' serves both)."""
    section = inspect.cleandoc(TrainConfig.__doc__).split("Attributes:", 1)[1]
    helps = {}
    for names, text in re.findall(r"^    (\w+(?:, \w+)*): (.*?)(?=^    \w|\Z)", section, flags=re.M | re.S):
        for name in names.split(", "):
            helps[name] = " ".join(text.split())
    return helps


def _option_type(hint) -> type:
    """The option's type for a field's type: `tuple[int, ...]` is a repeatable option, always optional."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        hint = list[typing.get_args(hint)[0]]
    return hint | None


def _train_options() -> list[inspect.Parameter]:
    helps, hints = _field_help(), typing.get_type_hints(TrainConfig)
    options = []
    for field in dataclasses.fields(TrainConfig):
        default = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else str(field.default)
        default = default if field.default is not None else False  # the help says what None means
        option = typer.Option(
            *_FLAG_NAMES.get(field.name, ()), help=helps.get(field.name, ""), show_default=default,
            rich_help_panel="Training settings (spm.TrainConfig; also from --config)",
        )  # fmt: skip
        kind = _option_type(hints[field.name])
        if typing.get_origin(typing.get_args(kind)[0]) is list:
            option.help += " Repeat the option for several."
        annotation = Annotated[kind, option]
        options.append(
            inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        )
    return options


class _YAMLLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-4 (no dot) as a string; training settings are written that way."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _read_config_file(path: Path) -> dict:
    try:
        values = yaml.load(path.read_text(), Loader=_YAMLLoader)
    except (OSError, UnicodeDecodeError) as e:
        _fail(
            f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or e}); give a YAML file of training settings"
        )
    except yaml.YAMLError as e:
        _fail(f"--config {path} is not valid YAML ({' '.join(str(e).split())}): fix it")
    if values is None:  # an empty file: no settings
        return {}
    if not isinstance(values, dict):
        _fail(f"--config {path} must be a mapping of training settings (name: value), not a {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in names:
            _fail(f"--config {path}: unknown setting {key!r}; the settings are {', '.join(names)}")
    return values


def _train_config(config: Path | None, flags: dict) -> TrainConfig:
    """The --config file's settings, overridden by the options given; a bad one is named with its source."""
    values = _read_config_file(config) if config else {}
    given = {name: tuple(v) if isinstance(v, list) else v for name, v in flags.items() if v is not None}
    source = {name: f"in --config {config}" for name in values} | {name: f"option {_flag(name)}" for name in given}
    values |= given
    sizes = values.get("resolutions")
    for r in sizes if isinstance(sizes, (list, tuple)) else ():  # anything else: TrainConfig says what is wrong
        if isinstance(r, int) and (r <= 0 or r % 8):
            where = "--resolution" if "resolutions" in given else f"resolutions in --config {config}:"
            _fail(f"{where} {r}: give a positive multiple of 8 (the VAE's downsampling factor), e.g. 512")
    try:
        return TrainConfig(**values)
    except ValueError as e:
        _fail(f"{e} ({source.get(str(e).split()[0], 'a default')})")


@contextmanager
def _output_dir(path: Path, option: str) -> Iterator[None]:
    """Make an output folder before any work; when the command then fails, remove the folders it made if
    they are still empty (rmdir never removes a file, nor a folder that was there before)."""
    from spm.files import output_dir_problem

    made = []
    missing = path.absolute()
    while not missing.exists():
        made.append(missing)
        missing = missing.parent
    try:
        _fail_on(output_dir_problem(path, option))
        yield
    except BaseException:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (an image or a checkpoint was written): kept, and its parents too
                break
        raise


def train(
    model: ModelOpt,
    target: Annotated[list[str], typer.Option("--target", "-t", help="concept to erase; repeat for several")],
    out: Annotated[Path, typer.Option(help="output .safetensors file")],
    surrogate: Annotated[str, typer.Option(help="replace the targets with this concept instead of erasing")] = "",
    config: Annotated[
        Path | None, typer.Option(help="YAML file of training settings (name: value); the options override it")
    ] = None,
    device: DeviceOpt = "cpu",
    **settings,
) -> None:
    """Train one SPM erasing the target concept(s); resumes from OUT.ckpt.pt if a run was killed.

    Every spm.TrainConfig setting is an option; --config FILE.yaml gives them as a mapping of the same names
    (lr: 1e-2, resolutions: [32]), and the options given override it.
    """
    import spm
    from spm.models import device_problem

    _check_train_inputs(target, out)
    cfg = _train_config(config, settings)
    _fail_on(device_problem(device))
    with _output_dir(out.parent, "--out folder"):
        checkpoint = out.with_name(out.name + ".ckpt.pt")
        _check_checkpoint(checkpoint)
        pipe = _pipeline(model, device)
        try:
            result = spm.train(pipe, target, surrogate=surrogate, config=cfg, checkpoint=checkpoint)
            result.provenance["base_model"] = model
            with training_kept_in(checkpoint):
                result.save(out)
        except ValueError as e:  # a checkpoint from other settings, or a diverged run (NonFiniteLoss): nothing written
            _fail(str(e))
        except DiskFullError as e:  # a checkpoint that did not fit (the last one is kept), or the SPM
            _fail(str(e))
    checkpoint.unlink(missing_ok=True)
    typer.echo(f"wrote {out} ({len(result.layers)} layers, {result.num_parameters:,} parameters)")


_fixed = [p for p in inspect.signature(train, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
train.__signature__ = inspect.Signature([*_fixed, *_train_options()])
app.command()(train)


# A pipeline folder may declare how it samples (the toy models run at guidance 3, not SD's 7.5): spm reads
# this file, so a benchmark's model registry need not be named here.
GENERATION_DEFAULTS = "generation_config.json"


SD_SAMPLING = {"guidance_scale": 7.5, "num_inference_steps": 30}  # the CLI's default for UNet pipelines


def _generation_defaults(model: str) -> dict:
    """The sampling settings the model's local folder declares in GENERATION_DEFAULTS ({}: none)."""
    path = Path(model).expanduser() / GENERATION_DEFAULTS
    defaults = dict(SD_SAMPLING)
    if not path.is_file():
        return {}
    try:
        declared = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _fail(f"{path} is not valid JSON ({e}): fix or remove it")
    if not isinstance(declared, dict):
        _fail(f"{path} must be a JSON object, e.g. {json.dumps(defaults)}: fix or remove it")
    for key, option, integer in (("guidance_scale", "--guidance", False), ("num_inference_steps", "--steps", True)):
        value = declared.get(key, defaults[key])
        if not _is_setting(value, integer):
            kind = "a positive whole number" if integer else "a finite number"
            _fail(f"{path}: {key} must be {kind}, not {value!r}: fix the file, or give {option}")
        defaults[key] = value
    return defaults


def _pipeline_defaults(pipe) -> dict:
    """Sampling settings for a model that declares none: SD's for UNet pipelines; a transformer pipeline's own
    `__call__` defaults (SD3: guidance 7.0, 28 steps; FLUX.1: its embedded guidance 3.5, 28 steps)."""
    if getattr(pipe, "unet", None) is not None:
        return dict(SD_SAMPLING)
    import inspect as python_inspect  # this module's `inspect` is the command below

    parameters = python_inspect.signature(type(pipe).__call__).parameters
    return {key: parameters[key].default if key in parameters else SD_SAMPLING[key] for key in SD_SAMPLING}


def _is_setting(value, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return value >= 1 if integer else math.isfinite(value)


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
    steps: Annotated[
        int | None,
        typer.Option(min=1, help=f"sampling steps; default: the model's {GENERATION_DEFAULTS}, else its pipeline's"),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            help=f"CFG scale (FLUX.1: its embedded guidance); default: the model's {GENERATION_DEFAULTS}, else its "
            "pipeline's (SD 1.x/2.x/XL: 7.5 and 30 steps; SD3, FLUX.1: their pipelines' own)"
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Generate images, with any number of SPMs attached.

    A local model folder may declare its sampling defaults in generation_config.json next to model_index.json,
    e.g. {"guidance_scale": 3.0, "num_inference_steps": 30}; --guidance and --steps override them.
    """
    import spm
    from spm.models import device_problem
    from spm.transport import SIMILARITIES

    if similarity not in SIMILARITIES:
        _fail(f"unknown similarity {similarity!r}: choose one of {', '.join(SIMILARITIES)}")
    if guidance is not None and not math.isfinite(guidance):
        _fail(f"--guidance {guidance}: give a finite number, e.g. 7.5")
    _fail_on(device_problem(device))
    spms = []
    for path in spm_file or []:
        try:
            spms.append(spm.SPM.load(path))
        except (ValueError, OSError) as e:
            _fail(str(e))
    declared = _generation_defaults(model)  # checked before the model is loaded
    with _output_dir(out, "--out"):
        pipe = _pipeline(model, device)
        defaults = declared or _pipeline_defaults(pipe)
        sampling = {
            "guidance_scale": defaults["guidance_scale"] if guidance is None else guidance,
            "num_inference_steps": defaults["num_inference_steps"] if steps is None else steps,
        }
        try:
            if spms:
                pipe = spm.attach(pipe, spms, transport=not no_transport, legacy=legacy, similarity=similarity)
        except ValueError as e:
            _fail(str(e))
        _generate_images(pipe, prompt, out, seed, num_images, sampling, device)


def _generate_images(generate, prompts: list[str], out: Path, seed: int, num_images: int, sampling: dict, device):
    import torch

    for i, text in enumerate(prompts):
        gen = torch.Generator(device).manual_seed(seed + i)
        for j, image in enumerate(generate(text, num_images_per_prompt=num_images, generator=gen, **sampling).images):
            path = out / f"{i:03d}_{j:02d}_seed{seed + i}.png"
            try:
                save_image_atomic(image, path)
            except DiskFullError as e:
                _fail(str(e))
            typer.echo(str(path))


@app.command()
def inspect(path: Path) -> None:
    """Print an SPM file's model family, layers, parameters, targets and provenance."""
    import spm
    from spm.adapter import FAMILIES

    try:
        s = spm.SPM.load(path)
    except (ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(f"file:       {path}")
    typer.echo(f"family:     {FAMILIES[s.family]}")
    typer.echo(f"targets:    {', '.join(s.targets) or '(none stored)'}")
    typer.echo(f"layers:     {len(s.layers)}")
    typer.echo(f"parameters: {s.num_parameters:,}")
    typer.echo(f"rank/alpha: {s.rank} / {s.alpha}")
    typer.echo("provenance: " + json.dumps(s.provenance, indent=2))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app()
