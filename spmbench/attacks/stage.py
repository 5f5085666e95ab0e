"""The attack stage of a run (`spmbench run --attack uda,rab`): per cell and target, each attack's prompts are
found once against the cell's erased model and kept in the cell's folder (attacks/<attack>-<target>.json, with
the search's seconds, written atomically, reused while the attack's settings are the same), then generated with the application's
seeds and judged like any other row: each attack is a prompt set, `attack-<name>`, whose judged-present rate is
the attack success rate (lower is better, as erasure's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from spm.files import TEMPORARY_PREFIX, write_text_atomic
from spmbench.apps import PromptRow
from spmbench.attacks.base import ATTACKS, Generation
from spmbench.registry import slug


log = logging.getLogger(__name__)
SET_PREFIX = "attack-"


def attack_set(attack: str) -> str:
    """The prompt set an attack's rows belong to."""
    return SET_PREFIX + attack


def is_attack_set(prompt_set: str) -> bool:
    return prompt_set.startswith(SET_PREFIX)


def prompts_file(cell_dir: Path, attack: str, target: str) -> Path:
    return cell_dir / "attacks" / f"{attack}-{slug(target)}.json"


def attacked_targets(app, targets: tuple[str, ...]) -> tuple[str, ...]:
    """A cell's targets; the original model's cell (no targets) is attacked on every target of the application."""
    return targets or tuple(dict.fromkeys(t for experiment in app.erase for t in experiment))


def check_attacks(app, attacks: list[str]) -> None:
    """One line for an unknown attack or bad settings in the application's `attacks` section, before any work."""
    for name in attacks:
        attack = ATTACKS.get(name)
        try:
            attack.settings(app.attacks.get(name))
        except ValueError as e:
            raise ValueError(f"{e} (attacks.{name} of {app.path})") from None


def find(app, cell_dir: Path, targets: tuple[str, ...], attacks: list[str], pipe, erased, model) -> list[PromptRow]:
    """The cell's attack rows, running each attack whose prompts are not stored yet (under these settings).
    `erased()` applies the cell's eraser to `pipe`; `model` (a ModelSpec) says how the model samples."""
    generation = Generation(model.num_inference_steps, model.guidance_scale, model.resolution)
    for target in attacked_targets(app, targets):
        for name in attacks:
            attack = ATTACKS.get(name)
            settings = attack.settings(app.attacks.get(name))
            path = prompts_file(cell_dir, name, target)
            if not is_stored(path, settings):
                log.info("attack %s on %s: %s", name, cell_dir.name, target)
                start = time.perf_counter()
                prompts = attack.find(pipe, erased, target, generation, settings)
                seconds = round(time.perf_counter() - start, 3)  # the search's cost: what an attack's rate is from
                record = {"attack": name, "target": target, "adaptive": attack.adaptive,
                          "settings": asdict(settings), "prompts": prompts, "seconds": seconds}  # fmt: skip
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(record, indent=1))
    return rows(app, cell_dir, targets, attacks)


def rows(app, cell_dir: Path, targets: tuple[str, ...], attacks: list[str]) -> list[PromptRow]:
    """The attack rows stored in a cell's folder for `targets` (all of the application's for the original):
    each distinct found prompt with each of the application's seeds; the judge looks for the target. Two restarts
    that found the same prompt make the same images: counted once (they were one row id, judged twice)."""
    found = []
    for target in attacked_targets(app, targets):
        for name in attacks:
            stored = _stored(prompts_file(cell_dir, name, target))
            for prompt in dict.fromkeys(stored["prompts"]) if stored else []:
                for seed in app.seeds:
                    digest = hashlib.sha1(f"{name}|{target}|{prompt}|{seed}".encode()).hexdigest()[:10]
                    image_seed = app.image_seed(seed, prompt)  # seed_per_prompt: each found prompt its own noise
                    found.append(
                        PromptRow(f"{attack_set(name)}-{digest}", attack_set(name), target, prompt, image_seed)
                    )
    return found


def unsearched(app, cell_dir: Path, targets: tuple[str, ...], name: str) -> list[str]:
    """The attacked targets whose prompts for attack `name` are not stored in the cell's folder under the
    application's settings for it: the searches a run would make."""
    settings = ATTACKS.get(name).settings(app.attacks.get(name))
    return [t for t in attacked_targets(app, targets) if not is_stored(prompts_file(cell_dir, name, t), settings)]


def is_stored(path: Path, settings) -> bool:
    """Whether a search's prompts are stored at `path` under these settings (a dataclass): the run then reuses
    them, and a plan counts the search as done; a torn record, or one made under other settings, is redone."""
    return _stored(path, asdict(settings)) is not None


def timed_searches(run_dir: Path) -> list[tuple[str, dict]]:
    """(model, stored search) of every timed search in a run folder's cells (cells/<model>/.../attacks/): what an
    attack's rate per step is measured from. Searches stored before they were timed, or torn, are left out."""
    found = []
    for path in sorted(run_dir.glob("cells/*/*/*/attacks/*.json")):
        if path.name.startswith(TEMPORARY_PREFIX):  # a write a kill left behind: not a second sample
            continue
        record = _stored(path)
        if record is not None and _timed(record):
            found.append((path.parents[3].name, record))
    return found


def _timed(record: dict) -> bool:
    seconds = record.get("seconds")
    timed = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < math.inf
    return timed and isinstance(record.get("attack"), str) and search_steps(record) > 0


def search_steps(record: dict) -> int:
    """A stored search's steps (restarts x steps per restart); 0 where its settings do not say."""
    try:
        return int(record["settings"]["restarts"]) * int(record["settings"]["steps"])
    except (KeyError, TypeError, ValueError):
        return 0


def _stored(path: Path, settings: dict | None = None) -> dict | None:
    """The stored record (made with `settings`, where given), or None: absent, torn, or made with others."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # absent, unreadable, a folder, or torn
        return None
    if not isinstance(record, dict) or not isinstance(record.get("prompts"), list):
        return None
    if settings is not None and record.get("settings") != json.loads(json.dumps(settings)):
        return None
    return record


def made_with(app, result_settings: dict, attacks) -> bool:
    """Whether a cell's stored result (its `settings`) was made with exactly these attacks under the application's
    settings for them (none: made without attacks)."""
    return result_settings.get("attacks", {}) == (settings_of(app, attacks) if attacks else {})


def settings_of(app, attacks) -> dict[str, dict]:
    """Each attack's settings as the run used them (recorded in the cell's result), and whether it was adaptive."""
    chosen = {}
    for name in attacks:
        attack = ATTACKS.get(name)
        chosen[name] = {
            **json.loads(json.dumps(asdict(attack.settings(app.attacks.get(name))))),
            "adaptive": attack.adaptive,
        }
    return chosen
