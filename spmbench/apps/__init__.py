"""Applications: versioned YAML files in `spmbench/apps/<world>/` (or a folder named by SPMBENCH_APPS),
expanded into seeded prompt rows.

An application names what to erase (`erase`: one list of targets per experiment, erased together)
and prompt sets. A set's `concepts` (or "{targets}"; or "{others}": every target named in `erase`
but this experiment's) times its `templates` gives its prompts, each generated once per seed (or, with
`seed_per_prompt: true`, once per seed from its own noise: a seed drawn from that seed and the prompt). Sets
named `target` or `implicit` measure erasure (how often the judge still sees the concept); every
other set measures erosion (how often the judge sees its concept).

Concepts of different kinds need different phrasings ("the dog called {}" fits no shape). An application may
name its `kinds` (a kind: concepts phrased alike, e.g. `character: [Barkley, Luna]`; a concept has at most one)
and a set may then give its `templates` per kind, a mapping from kind to templates: each concept of the set is
phrased with its own kind's templates only. E.g. a target set over characters and styles:

    kinds: {character: [Barkley, Luna], style: [Ada Okafor]}
    prompts:
      target:
        concepts: "{targets}"
        templates:
          character: ["a snapshot of {}", "{} on a white background"]
          style: ["a star by {}"]

A kind of one concept may phrase it without a `{}` (as a set of one concept may). A set with one list of
templates phrases every concept with all of them.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spmbench.models import WORLDS
from spmbench.registry import Registry, UnknownName
from spmbench.specs import SpecError, SpecKind, check_fields, load


APPS_DIR = Path(__file__).resolve().parent  # one folder of YAML files per world
ERASURE_SETS = ("target", "implicit")
SPLITS = ("test", "dev")
MAX_GRID = 6  # settings tried per eraser when tuning: the same small budget for every eraser
TARGETS = "{targets}"
OTHERS = "{others}"
PROMPT = "{prompt}"  # a file set's concept is each row's own prompt (a caption: CLIP score against it)


@dataclass(frozen=True)
class PromptSet:
    """Templates x concepts, or the rows of a published prompt file (with their own seeds).

    For a file, `concepts` filters rows by their label (artist, class; "{targets}" allowed) and the
    judge looks for each row's label; an unlabelled file (I2P) needs a single `concepts` entry, or
    "{prompt}": each row is judged against its own prompt (COCO captions).

    A set may name its own `judge` (with `judge_settings` over the run's settings for that judge): e.g.
    the explicit application's COCO captions, judged by CLIP against their captions, not by NudeNet.
    """

    name: str
    concepts: tuple[str, ...] | str  # a list, "{targets}" or "{others}"
    templates: tuple[str, ...] = ()  # every template of the set (with `by_kind`: all kinds' together)
    file: str | None = None
    by_kind: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> its templates; {}: one list
    judge: str | None = None  # None: the application's judge
    judge_settings: dict[str, Any] = field(default_factory=dict)

    def templates_for(self, kind: str | None) -> tuple[str, ...]:
        """The templates a concept of `kind` is phrased with (its kind's, or the set's one list)."""
        return self.by_kind[kind] if self.by_kind else self.templates


@dataclass(frozen=True)
class PromptRow:
    """One image to generate: stable id, the concept the judge looks for, prompt and seed."""

    prompt_id: str
    set: str
    concept: str
    prompt: str
    seed: int


@dataclass(frozen=True)
class Application:
    name: str
    version: int
    world: str
    judge: str
    erase: tuple[tuple[str, ...], ...]
    prompt_sets: tuple[PromptSet, ...]
    seeds: tuple[int, ...]
    path: str = ""
    # Per-eraser settings that depend on the application (e.g. UCE's guide concept, an anchor).
    eraser_settings: dict[str, dict] = field(default_factory=dict)
    # How an eraser is applied to this application's prompts (Eraser.apply_options), by eraser name: e.g. the
    # hardened SPM's FT floor, chosen on the dev split. Its fits are the same whatever is set here.
    apply: dict[str, dict] = field(default_factory=dict)
    split: str = "test"
    dev: Application | None = None  # the dev split (test's own prompts held apart), if the file gives one
    # Each eraser's tuning grid (by fit key): setting overrides tried on dev, at most MAX_GRID each.
    grids: dict[str, tuple[dict, ...]] = field(default_factory=dict)
    # Settings chosen on dev by `spmbench tune`, by fitted model then eraser settings key (spmbench.tuning).
    tuned: dict[str, dict] = field(default_factory=dict)
    # `tuning: {from: <app>}`: not tuned itself; `spmbench run` applies that application's tuning record (its
    # grids, its dev split, its choice), linked by load_apps as `tuning_source` (of this world, with grids).
    tuning_from: str = ""
    tuning_source: Application | None = None
    # Every trained eraser is fitted once per seed (the first: the settings' own seed): tables give the
    # spread over fits beside the sampling interval.
    fit_seeds: tuple[int, ...] = (0,)
    # Each attack's budget (spmbench.attacks: steps, tokens, restarts, seed, its own knobs), the same for every
    # eraser; read by `spmbench run --attack`.
    attacks: dict[str, dict] = field(default_factory=dict)
    # Each prompt's image starts from its own noise (a seed drawn from the listed seed and the prompt), so that
    # one image per prompt gives independent samples: with a shared seed every image starts from the same noise.
    seed_per_prompt: bool = False
    # Concept kinds (kind -> its concepts), for sets whose templates are given per kind.
    kinds: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def set_judges(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Prompt set -> (judge name, its settings) for the sets judged by another judge than the application's."""
        return {ps.name: (ps.judge, ps.judge_settings) for ps in self.prompt_sets if ps.judge}

    def judge_names(self) -> list[str]:
        """Every judge the application's prompts are judged by: its own first, then its sets' own."""
        return list(dict.fromkeys([self.judge, *(name for name, _ in self.set_judges().values())]))

    def inherited_kinds(self) -> list[str]:
        """With `tuning_from`: the kinds of this application's targets among which its tuning source erases
        none (their settings were tuned on other kinds); [] without kinds."""
        if self.tuning_source is None:
            return []
        tuned_on = {self.kind_of(t) for experiment in self.tuning_source.erase for t in experiment}
        ours = dict.fromkeys(self.kind_of(t) for experiment in self.erase for t in experiment)
        return [k for k in ours if k is not None and k not in tuned_on]

    def kind_of(self, concept: str) -> str | None:
        """The kind `concept` is listed under (case-insensitive), or None."""
        return next((k for k, cs in self.kinds.items() if concept.lower() in {c.lower() for c in cs}), None)

    def image_seed(self, seed: int, prompt: str) -> int:
        """The seed `prompt`'s image is generated with, for one of the application's `seeds`."""
        if not self.seed_per_prompt:
            return seed
        return int(hashlib.sha1(f"{seed}|{prompt}".encode()).hexdigest()[:8], 16)

    def for_split(self, split: str) -> Application:
        """This application's `split` ('test': itself; 'dev': the prompts settings are chosen on)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        if split == self.split:
            return self
        if self.dev is None:
            raise ValueError(f"application {self.name} has no dev split: add a 'dev' block to {self.path}")
        return self.dev

    def rows(
        self, targets: tuple[str, ...], limit: int | None = None, data_dir: Path | None = None
    ) -> list[PromptRow]:
        """Every (prompt, seed) of every set for one erase experiment; `limit` caps prompts per set."""
        rows = []
        for ps in self.prompt_sets:
            concepts = self._concepts(ps, targets)
            if ps.file:
                rows += _file_rows(ps, concepts, limit, data_dir)
                continue
            prompts = [(c, t.format(c)) for c in concepts for t in self._templates(ps, c)][:limit]
            for concept, prompt in prompts:
                for seed in self.seeds:
                    digest = hashlib.sha1(f"{ps.name}|{prompt}|{seed}".encode()).hexdigest()[:10]
                    rows.append(
                        PromptRow(f"{ps.name}-{digest}", ps.name, concept, prompt, self.image_seed(seed, prompt))
                    )
        return rows

    def _templates(self, ps: PromptSet, concept: str) -> tuple[str, ...]:
        if not ps.by_kind:
            return ps.templates
        kind = self.kind_of(concept)
        if kind not in ps.by_kind:
            raise ValueError(
                f"{self.path}: prompts.{ps.name} has no templates for {concept!r} (kind {kind}): "
                f"phrase its kind there, or list it in 'kinds' under one of {', '.join(ps.by_kind)}"
            )
        return ps.by_kind[kind]

    def _concepts(self, ps: PromptSet, targets: tuple[str, ...]) -> tuple[str, ...]:
        if ps.concepts == TARGETS:
            return targets
        if ps.concepts == OTHERS:
            erased = {t.lower() for t in targets}
            named = dict.fromkeys(t for experiment in self.erase for t in experiment)
            return tuple(t for t in named if t.lower() not in erased)
        return ps.concepts


def _file_rows(ps: PromptSet, concepts, limit: int | None, data_dir: Path | None) -> list[PromptRow]:
    from spmbench.prompts import read_prompts, resolve

    records = read_prompts(resolve(ps.file, data_dir))
    if concepts == PROMPT:
        return [_file_row(ps, r, r.prompt) for r in records[:limit]]
    labelled = any(r.label for r in records)
    if not labelled and len(concepts) != 1:
        raise ValueError(f"prompts.{ps.name}: {ps.file} has no labels, so name exactly one concept for the judge")
    if labelled:
        wanted = {c.lower() for c in concepts}
        records = [r for r in records if r.label and r.label.lower() in wanted]
    return [_file_row(ps, r, r.label if labelled else concepts[0]) for r in records[:limit]]


def _file_row(ps: PromptSet, record, concept: str) -> PromptRow:
    return PromptRow(
        f"{ps.name}-{Path(ps.file).stem}-{record.prompt_id}", ps.name, concept, record.prompt, record.seed
    )


TEMPLATES = tuple[str, ...] | dict[str, tuple[str, ...]]  # one list, or one per concept kind
PROMPT_SET_FIELDS = {
    "concepts": tuple[str, ...] | str,
    "templates": TEMPLATES,
    "file": str,
    "judge": str,
    "judge_settings": dict[str, Any],
}
APP_FIELDS = {
    "name": str,
    "version": int,
    "world": str,
    "judge": str,
    "erase": tuple[tuple[str, ...], ...],
    "prompts": dict[str, Any],
    "seeds": tuple[int, ...],
    "eraser_settings": dict[str, dict],
    "apply": dict[str, dict],
    "dev": dict[str, Any],
    "tuning": dict[str, Any],
    "fit_seeds": tuple[int, ...],
    "attacks": dict[str, dict],
    "seed_per_prompt": bool,
    "kinds": dict[str, tuple[str, ...]],
}
DEV_FIELDS = {"seeds": tuple[int, ...], "prompts": dict[str, Any]}
DEV_SET_FIELDS = {"concepts": tuple[str, ...], "templates": TEMPLATES}
TUNING_FIELDS = {"grids": dict[str, tuple[dict, ...]], "from": str}


def _prompt_set(name: str, data, origin: str, kinds: dict, named: tuple[str, ...]) -> PromptSet:
    """One test set; `kinds` (the application's) and `named` (every target in 'erase') check per-kind templates."""
    where = f"prompts.{name}."
    given = check_fields(data, PROMPT_SET_FIELDS, {"concepts"}, origin, where)
    concepts, judged = given["concepts"], _set_judge(name, given, origin)
    if isinstance(concepts, str) and concepts not in (TARGETS, OTHERS, PROMPT):
        raise SpecError(
            f"{origin}: {where}concepts must be a list or the string {TARGETS!r}, {OTHERS!r} or {PROMPT!r}"
        )
    if "file" in given:
        if "templates" in given:
            raise SpecError(f"{origin}: prompts.{name}: give 'file' or 'templates', not both")
        return PromptSet(name, concepts, file=given["file"], **judged)
    if concepts == PROMPT:
        raise SpecError(
            f"{origin}: {where}concepts {PROMPT!r} judges a file's rows against their prompts: give a 'file'"
        )
    templates = given.get("templates", ())
    if not templates:
        raise SpecError(f"{origin}: {where}templates must be a non-empty list of strings (or give a 'file')")
    if isinstance(templates, dict):
        return replace(_kind_set(name, concepts, templates, kinds, named, origin, "prompts."), **judged)
    for template in templates:
        _check_template(template, concepts, f"{origin}: prompts.{name}")
    return PromptSet(name, concepts, templates, **judged)


def _set_judge(name: str, given: dict, origin: str) -> dict[str, Any]:
    """A set's own judge (PromptSet's fields); settings only with a judge, and never on an erasure set, whose
    verdicts the erasure rate and the paired comparisons read alike for every set of the application."""
    if "judge_settings" in given and "judge" not in given:
        raise SpecError(f"{origin}: prompts.{name}.judge_settings needs prompts.{name}.judge (the judge they set)")
    if "judge" in given and name in ERASURE_SETS:
        raise SpecError(f"{origin}: prompts.{name}: an erasure set is judged by the application's judge; drop 'judge'")
    return {"judge": given.get("judge"), "judge_settings": given.get("judge_settings", {})}


def _kind_set(name: str, concepts, by_kind: dict, kinds: dict, named: tuple[str, ...], origin: str, block: str):
    """A set whose templates are given per kind: every kind known, each kind's templates fit its concepts,
    and every concept the set can hold (listed, or any target in 'erase' for "{targets}"/"{others}") phrased."""
    where = f"{block}{name}.templates"
    if not kinds:
        raise SpecError(f"{origin}: {where} gives templates per kind, but the application has no 'kinds' "
                        f"(add kinds: {{<kind>: [<concepts>]}})")  # fmt: skip
    unknown = sorted(set(by_kind) - set(kinds))
    if unknown:
        raise SpecError(f"{origin}: {where} names kind(s) {unknown} that 'kinds' does not define: {', '.join(kinds)}")
    for kind, templates in by_kind.items():
        if not templates:
            raise SpecError(f"{origin}: {where}.{kind} must be a non-empty list of strings")
        for template in templates:
            _check_template(template, kinds[kind], f"{origin}: {where}.{kind}")
    kind_of = {c.lower(): k for k, cs in kinds.items() for c in cs}
    for concept in named if isinstance(concepts, str) else concepts:
        kind = kind_of.get(concept.lower())
        if kind is None:
            raise SpecError(f"{origin}: {block}{name}: concept {concept!r} is in no kind: list it in 'kinds'")
        if kind not in by_kind:
            raise SpecError(f"{origin}: {block}{name}: concept {concept!r} is of kind {kind!r}, which {where} "
                            f"does not phrase: add {where}.{kind}")  # fmt: skip
    flat = tuple(dict.fromkeys(t for templates in by_kind.values() for t in templates))
    return PromptSet(name, concepts, flat, by_kind=by_kind)


def _kinds(data: dict, origin: str) -> dict[str, tuple[str, ...]]:
    """The application's concept kinds: each non-empty, no concept in two (a concept has one phrasing)."""
    seen: dict[str, str] = {}
    for kind, concepts in data.items():
        if not concepts:
            raise SpecError(f"{origin}: kinds.{kind} must be a non-empty list of concept names")
        for concept in concepts:
            if concept.lower() in seen:
                where = f"{seen[concept.lower()]} and {kind}" if seen[concept.lower()] != kind else kind
                raise SpecError(f"{origin}: kinds: {concept!r} is listed twice ({where}): give it one kind, once")
            seen[concept.lower()] = kind
    return data


def _check_template(template: str, concepts, where: str) -> None:
    """One `{}` where the concept goes; none only for a single concept (else its prompts, and ids, repeat)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SpecError(f"{where}: template {template!r}: {e} (write a literal brace as {{{{ or }}}})") from None
    single = isinstance(concepts, tuple) and len(concepts) == 1
    if names != [""] and not (names == [] and single):
        raise SpecError(
            f"{where}: template {template!r} must hold exactly one {{}} where the concept goes"
            + ("" if single else " (a set of several concepts needs it: else their prompts are the same)")
        )


def parse_app(data, origin: str) -> Application:
    optional = {"eraser_settings", "apply", "dev", "tuning", "fit_seeds", "attacks", "seed_per_prompt", "kinds"}
    given = check_fields(data, APP_FIELDS, set(APP_FIELDS) - optional, origin)
    if given["world"] not in WORLDS:
        raise SpecError(f"{origin}: world {given['world']!r} is not one of {', '.join(WORLDS)}")
    if not given["erase"] or not all(given["erase"]):
        raise SpecError(f"{origin}: 'erase' must be a list of non-empty lists of target names")
    if "target" not in given["prompts"]:
        raise SpecError(f"{origin}: prompts need a 'target' set (what erasure is measured on)")
    if not given["seeds"]:
        raise SpecError(f"{origin}: 'seeds' must be a non-empty list of integers")
    fit_seeds = given.get("fit_seeds", (0,))
    if not fit_seeds or len(set(fit_seeds)) != len(fit_seeds):
        raise SpecError(f"{origin}: fit_seeds must be a non-empty list of distinct integers, got {list(fit_seeds)}")
    kinds = _kinds(given.get("kinds", {}), origin)
    named = tuple(dict.fromkeys(t for experiment in given["erase"] for t in experiment))
    test = Application(
        name=given["name"],
        version=given["version"],
        world=given["world"],
        judge=given["judge"],
        erase=given["erase"],
        prompt_sets=tuple(_prompt_set(n, d, origin, kinds, named) for n, d in given["prompts"].items()),
        seeds=given["seeds"],
        path=origin,
        eraser_settings=given.get("eraser_settings", {}),
        apply=given.get("apply", {}),
        grids=_grids(given.get("tuning", {}), origin),
        tuning_from=given.get("tuning", {}).get("from", ""),
        fit_seeds=fit_seeds,
        attacks=given.get("attacks", {}),
        seed_per_prompt=given.get("seed_per_prompt", False),
        kinds=kinds,
    )
    return replace(test, dev=_dev_split(test, given["dev"], origin)) if "dev" in given else test


def _dev_split(test: Application, data, origin: str) -> Application:
    """The dev split: `test` with the dev block's seeds and, for each set it names, its templates (and
    an erosion set's concepts); sets it does not name are left out of dev. Shares nothing with test."""
    given = check_fields(data, DEV_FIELDS, set(DEV_FIELDS), origin, "dev.")
    if not given["seeds"]:
        raise SpecError(f"{origin}: dev.seeds must be a non-empty list of integers")
    shared_seeds = sorted(set(given["seeds"]) & set(test.seeds))
    if shared_seeds:
        raise SpecError(f"{origin}: dev.seeds {shared_seeds} are also test seeds: give dev its own seeds")
    by_name = {ps.name: ps for ps in test.prompt_sets}
    unknown = sorted(set(given["prompts"]) - set(by_name))
    if unknown:
        raise SpecError(f"{origin}: dev.prompts names set(s) {unknown} that 'prompts' does not have")
    if "target" not in given["prompts"]:
        raise SpecError(f"{origin}: dev.prompts needs a 'target' set (what tuning measures erasure on)")
    sets = tuple(_dev_set(test, by_name[n], d, origin) for n, d in given["prompts"].items())
    _check_disjoint(test.prompt_sets, sets, origin)
    return replace(test, split="dev", seeds=given["seeds"], prompt_sets=sets, dev=None)


def _dev_set(test: Application, test_set: PromptSet, data, origin: str) -> PromptSet:
    where = f"dev.prompts.{test_set.name}."
    given = check_fields(data, DEV_SET_FIELDS, {"templates"}, origin, where)
    # a published file's rows are all test (the set stays the one papers report): its dev set is phrased by
    # templates of the file's concepts, which no row of the file is
    concepts = given.get("concepts", test_set.concepts)
    if "concepts" in given and test_set.name in ERASURE_SETS:
        raise SpecError(f"{origin}: {where}concepts: an erasure set measures the erased targets; give only templates")
    if not given["templates"]:
        raise SpecError(f"{origin}: {where}templates must be a non-empty list of strings")
    if concepts == PROMPT:
        raise SpecError(f"{origin}: {where}concepts: templates need concepts to phrase; test's are each row's prompt")
    judged = {"judge": test_set.judge, "judge_settings": test_set.judge_settings}  # judged as test's set is
    if isinstance(given["templates"], dict):
        named = tuple(dict.fromkeys(t for experiment in test.erase for t in experiment))
        by_kind = _kind_set(test_set.name, concepts, given["templates"], test.kinds, named, origin, "dev.prompts.")
        return replace(by_kind, **judged)
    for template in given["templates"]:
        _check_template(template, concepts, f"{origin}: dev.prompts.{test_set.name}")
    return PromptSet(test_set.name, concepts, given["templates"], **judged)


def _check_disjoint(test_sets, dev_sets, origin: str) -> None:
    """No template (in any set) and no listed erosion concept (in the same set) is both dev and test."""
    test_templates = {t for ps in test_sets for t in ps.templates}
    shared = sorted({t for ps in dev_sets for t in ps.templates} & test_templates)
    if shared:
        raise SpecError(f"{origin}: dev template(s) {shared} are also test templates: dev and test must not share any")
    test_concepts = {ps.name: ps.concepts for ps in test_sets}
    for ps in dev_sets:
        theirs = test_concepts[ps.name]
        if ps.name in ERASURE_SETS or isinstance(theirs, str) or set(ps.concepts) == set(theirs):
            continue  # the same concepts phrased apart (a world too small to split its concepts)
        both = sorted(set(ps.concepts) & set(theirs))
        if both:
            raise SpecError(
                f"{origin}: dev.prompts.{ps.name}.concepts share {both} with test: give test's concepts or disjoint ones"
            )


def _grids(data, origin: str) -> dict[str, tuple[dict, ...]]:
    """Each eraser's tuning grid; every grid has the same number of points, 1..MAX_GRID (equal budgets).
    None with `from` (another application's tuning, linked by load_apps)."""
    given = check_fields(data, TUNING_FIELDS, set(), origin, "tuning.")
    if "from" in given and "grids" in given:
        raise SpecError(
            f"{origin}: tuning: give 'grids' (tune this application) or 'from' (apply another's), not both"
        )
    grids = given.get("grids", {})
    sizes = {key: len(points) for key, points in grids.items()}
    if any(not 1 <= n <= MAX_GRID for n in sizes.values()):
        raise SpecError(f"{origin}: tuning.grids: each grid needs 1 to {MAX_GRID} settings, got {sizes}")
    if len(set(sizes.values())) > 1:
        raise SpecError(f"{origin}: tuning.grids: every eraser gets the same budget, but the sizes differ: {sizes}")
    for key, points in grids.items():
        if len({tuple(sorted(p.items())) for p in points}) != len(points):
            raise SpecError(f"{origin}: tuning.grids.{key} lists a setting twice")
    return grids


APPS = SpecKind("application", APPS_DIR, "SPMBENCH_APPS", parse_app)


def load_apps(folders: list[Path] | None = None) -> Registry[Application]:
    """Every application: the shipped ones (one folder per world) and those in SPMBENCH_APPS (or `folders`),
    each `tuning: {from: ...}` linked to the application it names."""
    apps = load(APPS, folders)
    linked: Registry[Application] = Registry(apps.kind)
    for a in apps:
        linked.add(a.name, replace(a, tuning_source=_tuning_source(a, apps)) if a.tuning_from else a)
    return linked


def _tuning_source(app: Application, apps: Registry[Application]) -> Application:
    """The application `app` takes its tuning from: one of the same world that is tuned itself (has grids)."""
    where = f"{app.path}: tuning.from"
    try:
        source = apps.get(app.tuning_from)
    except UnknownName as e:
        raise SpecError(f"{where}: {e}") from None
    if source.world != app.world:
        raise SpecError(f"{where}: {source.name} is of world {source.world}, not {app.world}: name one of {app.world}")
    if not source.grids:
        raise SpecError(
            f"{where}: {source.name} has no tuning.grids, so no tuning to take: name an application with grids"
        )
    return source
