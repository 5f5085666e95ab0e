"""Judges: say whether a concept is present in generated images. One registry, by name.

Adding a judge: a module with a `Judge` subclass (spmbench.judges.base) and one line in `JUDGES`.
Entries are "module:Class" strings, imported on first use: heavy judges load torch models or
NudeNet, and `spmbench --help` must stay fast. A judge's settings are its constructor's keyword
arguments (their defaults are the judge's own); `device` is passed where the constructor takes it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from spmbench.registry import Registry


if TYPE_CHECKING:
    from spmbench.apps import Application
    from spmbench.judges.base import Judge


JUDGES: Registry[str] = Registry("judge")
JUDGES.add("toy", "spmbench.judges.toy:ToyJudge")
JUDGES.add("toy3", "spmbench.judges.toy:Toy3Judge")  # toy world v3 (staged: its apps are toy3-*)
JUDGES.add("clip", "spmbench.judges.clip:ClipJudge")
JUDGES.add("nudenet", "spmbench.judges.nudenet:NudeNetJudge")
JUDGES.add("imagenet", "spmbench.judges.imagenet:ImageNetJudge")

# Per world, the judge whose image features measure alteration when the application's judge has
# none (NudeNet only detects): CLIP image features on real models, the toy judge's on the toy world.
ALTERATION_FEATURES = {"toy": "toy", "real": "clip", "toy3": "toy3"}
# On real models with the vision extra (metrics.use_vision), every application's alteration is
# measured on the FID-standard Inception-v3 and LPIPS instead, whatever its judge (a feature
# source, not a judge: spmbench.judges.inception).
VISION_FEATURES = "inception"

_NOT_SETTINGS = ("self", "device")


def judge_class(name: str) -> type[Judge]:
    """The registered class; an unknown name raises UnknownName (did you mean..., available: ...)."""
    module, _, attribute = JUDGES.get(name).partition(":")
    return getattr(importlib.import_module(module), attribute)


def defaults(name: str) -> dict[str, Any]:
    """The judge's settings with their defaults (None: chosen by the judge, e.g. the shipped weights)."""
    parameters = inspect.signature(judge_class(name).__init__).parameters.values()
    named = (p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return {p.name: None if p.default is p.empty else p.default for p in named if p.name not in _NOT_SETTINGS}


def check_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` checked against the judge's own, strings (from the command line) converted to their types.

    Raises:
        ValueError: an unknown setting (the known ones are named) or a value of the wrong type.
    """
    known = defaults(name)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        offered = ", ".join(known) or "none"
        raise ValueError(f"judge {name!r} has no setting(s) {unknown}; its settings: {offered}")
    return {key: _conform(name, key, value, known[key]) for key, value in settings.items()}


def _conform(judge: str, key: str, value: Any, default: Any) -> Any:
    """`value` as the type of the setting's default (a string where the default is None); the
    command line gives strings, which are parsed."""
    kind = str if default is None else type(default)
    if isinstance(value, str) and kind is bool:
        value = {"true": True, "false": False}.get(value.lower(), value)
    elif isinstance(value, str) and kind in (int, float):
        with contextlib.suppress(ValueError):
            value = kind(value)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:  # exact: True is no threshold, though Python counts it an int
        raise ValueError(f"judge {judge!r}: setting {key} must be a {kind.__name__}, not {value!r}")
    return value


def check_concepts(name: str, concepts: Iterable[str], settings: Mapping[str, Any] | None = None) -> None:
    """Raise ValueError in one line if the judge cannot judge some of `concepts` (loads no model)."""
    judge_class(name).check_concepts(sorted(set(concepts)), **check_settings(name, settings or {}))


def build(name: str, settings: Mapping[str, Any] | None = None, device: str = "cpu") -> Judge:
    """The judge `name` with `settings` (checked first), on `device` where it runs on one."""
    cls, chosen = judge_class(name), check_settings(name, settings or {})
    if "device" in inspect.signature(cls.__init__).parameters:
        chosen["device"] = device
    return cls(**chosen)


def build_for(app: Application, settings: Mapping[str, Mapping[str, Any]] | None = None, device: str = "cpu") -> Judge:
    """The application's judge, built with its settings from `settings` (by judge name); where some of its prompt
    sets name their own judge, a SetJudges with those too (each with the run's settings for it, under the set's
    own `judge_settings`; sets that ask for the same judge alike share one)."""
    from spmbench.judges.base import SetJudges

    settings = settings or {}
    judge = build(app.judge, settings.get(app.judge), device)
    built: dict[tuple, Judge] = {}
    by_set = {}
    for prompt_set, (name, own) in app.set_judges().items():
        chosen = {**(settings.get(name) or {}), **own}
        key = (name, tuple(sorted(chosen.items())))
        if key not in built:
            built[key] = build(name, chosen, device)
        by_set[prompt_set] = built[key]
    return SetJudges(judge, by_set) if by_set else judge


def alteration_features(
    judge: Judge, world: str, settings: Mapping[str, Mapping[str, Any]] | None = None, device: str = "cpu"
) -> Callable[[], Judge]:
    """The judge whose `features` measure alteration: `judge` itself if it has features, else the
    world's declared source (ALTERATION_FEATURES; on real models with the vision extra, Inception-v3
    whatever the judge), built with its settings from `settings` (by judge name) on first use only:
    an application without non-target prompts never loads it."""
    if world == "real" and _use_vision():
        from spmbench.judges.inception import InceptionFeatures

        return functools.cache(lambda: InceptionFeatures(device))
    if judge.has_features:
        return lambda: judge
    source = feature_source_name(judge, world)
    return functools.cache(lambda: build(source, (settings or {}).get(source), device))


def feature_source_name(judge: Judge, world: str) -> str:
    """The registry name of the judge giving alteration features when `judge` has none."""
    if world not in ALTERATION_FEATURES:
        raise ValueError(f"no alteration feature source is declared for world {world!r} (ALTERATION_FEATURES)")
    return VISION_FEATURES if world == "real" and _use_vision() else ALTERATION_FEATURES[world]


def _use_vision() -> bool:
    from spmbench.metrics import use_vision

    return use_vision()
