"""Resumable training: a loop's state in one file, tied to the settings that made it.

    checkpoint = spm.Checkpoint(path, settings={"targets": targets, "lr": lr}, every=100)
    state = {"params": params, "opt": optimizer, "gen": generator}
    start, extra = checkpoint.resume(state)  # (0, {}) when there is no file yet
    for step in range(start, steps):
        ...  # one training step
        if checkpoint.due(step + 1):
            checkpoint.save(step + 1, state, losses=losses)  # extra values come back from resume

A state maps names to what is saved: a list of tensors (trainable parameters, restored in place), a
`torch.Generator`, or anything with `state_dict()`/`load_state_dict()` (an optimiser, a scheduler,
a module). A file from other settings, or one that is not a checkpoint, is refused in one line
rather than silently mixed into this run. Saves are atomic; loads are `weights_only`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from spm.files import DiskFullError, save_torch_atomic


log = logging.getLogger(__name__)

RESERVED = ("step", "fingerprint")
FINISHED = "finished"  # marks the file of a loop with no steps left (save_finished)


class CheckpointError(ValueError):
    """A checkpoint file that this run must not resume: not a checkpoint, or made with other settings."""


def fingerprint(settings: Any) -> str:
    """The settings a checkpoint is tied to, as a string (JSON; values it cannot encode as their str)."""
    return json.dumps(settings, default=str)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint file's contents, or a CheckpointError saying the file is not one."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # pickle, zip and EOF errors: torch raises many kinds
        state = None
    if not (isinstance(state, dict) and all(key in state for key in RESERVED)):
        raise CheckpointError(f"{path} is not a training checkpoint: delete it to start over")
    return state


class Checkpoint:
    """A training loop's state at `path`, saved every `every` steps and resumed only under the same settings.

    Args:
        path: the checkpoint file; None turns checkpointing off (resume starts at 0, nothing is due).
        settings: everything the run's result depends on (JSON-able: a dict, a list); a file saved
            under other settings is refused.
        every: steps between saves (0: never due).
    """

    def __init__(self, path: str | Path | None, settings: Any, every: int = 0):
        if every < 0:
            raise ValueError(f"checkpoint interval must be at least 0 steps, not {every}")
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint(settings)
        self.every = every

    def read(self) -> dict | None:
        """The saved state, or None without a file; CheckpointError for another run's file or garbage."""
        if self.path is None or not self.path.exists():
            return None
        saved = read_checkpoint(self.path)
        if saved["fingerprint"] != self.fingerprint:
            raise CheckpointError(f"checkpoint {self.path} is from other settings or targets: delete it to start over")
        return saved

    def saved_step(self) -> int:
        """How many steps the checkpoint holds (0 without one)."""
        saved = self.read()
        return 0 if saved is None else int(saved["step"])

    def resume(self, state: Mapping[str, Any], optional: Iterable[str] = ()) -> tuple[int, dict]:
        """Load the saved state into `state`'s objects; (steps done, the extra values saved beside them).

        A name in `optional` may be missing from the file (say, an optimiser dropped after training):
        its object then starts fresh; so may any name of a finished loop's file (`save_finished`).
        Without a file, nothing changes and the result is (0, {})."""
        saved = self.read()
        if saved is None:
            return 0, {}
        finished = bool(saved.get(FINISHED))
        optional = set(state) if finished else set(optional)
        missing = [name for name in state if name not in saved and name not in optional]
        if missing:  # checked before anything is loaded: a refused file leaves the state as it was
            raise CheckpointError(f"checkpoint {self.path} has no {missing[0]!r}: delete it to start over")
        for name, target in state.items():
            if name in saved:
                _load(target, saved[name], f"{self.path} {name!r}")
            elif not finished:  # a finished loop takes no more steps: nothing starts fresh
                log.warning("checkpoint %s has no %r: starting it fresh", self.path, name)
        log.info("resumed %s at step %d", self.path, saved["step"])
        extra = {k: v for k, v in saved.items() if k not in state and k not in (*RESERVED, FINISHED)}
        return int(saved["step"]), extra

    def due(self, step: int) -> bool:
        """Whether a loop that has done `step` steps saves now."""
        return self.path is not None and self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Mapping[str, Any], **extra: Any) -> None:
        """Write `state` (and `extra` values: numbers, strings, lists, tensors) after `step` steps, atomically."""
        if self.path is None:
            return
        clash = set(extra) & (set(state) | set(RESERVED))
        if clash:
            raise ValueError(f"extra checkpoint values {sorted(clash)} clash with the state's names")
        content = {name: _snapshot(target) for name, target in state.items()}
        save_torch_atomic(content | extra | {"step": step, "fingerprint": self.fingerprint}, self.path)

    def save_finished(self, step: int, state: Mapping[str, Any], **extra: Any) -> bool:
        """Keep a finished loop's result (`state`: say, the trained parameters, without the optimiser)
        until the caller has saved it elsewhere, so that a failed save (a full disk) loses no training:
        the rerun resumes at `step` and trains nothing. A full disk here is only a warning (the caller's
        own, smaller save may still fit): returns whether it was written."""
        try:
            self.save(step, state, **extra, **{FINISHED: True})
        except DiskFullError as e:
            log.warning("%s: the finished training is not kept", e)
            return False
        return self.path is not None

    def drop(self, *names: str) -> None:
        """Rewrite the file without `names` (say, a finished run's optimiser state: half the size)."""
        saved = self.read()
        if saved is not None and any(name in saved for name in names):
            save_torch_atomic({k: v for k, v in saved.items() if k not in names}, self.path)


def _snapshot(target: Any) -> Any:
    if isinstance(target, torch.Generator):
        return target.get_state()
    if isinstance(target, (list, tuple)):
        return [t.detach().cpu() for t in target]
    return target.state_dict()


def _load(target: Any, saved: Any, where: str) -> None:
    if isinstance(target, torch.Generator):
        target.set_state(saved)
    elif isinstance(target, (list, tuple)):
        if len(saved) != len(target):
            raise CheckpointError(f"checkpoint {where} holds {len(saved)} tensors, not {len(target)}: delete it")
        with torch.no_grad():
            for tensor, value in zip(target, saved):
                tensor.copy_(value)
    else:
        target.load_state_dict(saved)
