"""The Attack base class: every red-teaming attack is one subclass in one file.

An attack looks for prompts that bring an erased concept back. It declares its budget as a frozen
dataclass (`Settings`: steps, tokens, restarts, seed, plus its own knobs), and `find` returns discrete
prompt strings, so that what it found is generated and judged like any other prompt. The budget is
part of the protocol: the same for every eraser (protocols.md, "Robustness").
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from spmbench.erasers.base import Generate, require_counts
from spmbench.registry import Registry
from spmbench.specs import SpecError, check_fields


# What an attack is given for the erased model: a context that applies the eraser to the pipeline and
# yields its `generate` (Eraser.apply with its artifacts bound), entered only after the attack has used
# the original model.
Erased = Callable[[], AbstractContextManager[Generate]]


@dataclass(frozen=True)
class Generation:
    """How the attacked model samples (the model spec's): the attack's reference images are made this way."""

    steps: int = 30
    guidance: float = 7.5
    resolution: int = 512


@dataclass(frozen=True)
class AttackSettings:
    """The budget every attack has: optimisation steps (or search generations), adversarial tokens per
    prompt, restarts (independent searches, one prompt found by each) and the seed of everything random."""

    steps: int = 50
    tokens: int = 5
    restarts: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        require_counts(self, "steps", "tokens", "restarts")
        require_counts(self, "seed", least=0)


def build_attack_settings(cls: type, given: dict | None, attack: str) -> Any:
    """`cls(**given)` with one-line errors naming the attack: unknown names, wrong types, bad values."""
    hints = typing.get_type_hints(cls)
    schema = {f.name: hints[f.name] for f in fields(cls)}
    try:
        return cls(**check_fields(given or {}, schema, set(), f"attack {attack!r}"))
    except SpecError as e:
        raise ValueError(str(e)) from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"attack {attack!r}: {e}") from None


class Attack(ABC):
    """One attack. Subclasses set `name`, `Settings` and `adaptive` (whether it optimises against an
    inference-time defence as well: a table says which attacks were), and implement `find`."""

    name: str
    Settings: ClassVar[type] = AttackSettings
    adaptive: ClassVar[bool] = False

    def settings(self, given: dict | None = None) -> Any:
        """The defaults overridden by `given` (an application's `attacks.<name>`), checked."""
        return build_attack_settings(self.Settings, given, self.name)

    @abstractmethod
    def find(self, pipe, erased: Erased, target: str, generation: Generation, settings: Any) -> list[str]:
        """Adversarial prompts for `target` against the erased model (one per restart), as strings.

        `pipe` is the original pipeline; `erased()` applies the eraser to it (restoring it on exit).
        Deterministic on the CPU given `settings.seed`.
        """


def require_fraction(settings, *names: str) -> None:
    """Settings that are finite numbers in [0, 1]."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def require_nonnegative(settings, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ATTACKS: Registry[Attack] = Registry("attack")
