"""Seeded scene sampling and captioning: the training distribution of the toy world."""

from __future__ import annotations

import numpy as np

from spmbench.toy import world as w


# Probability of each scene kind in the training mix.
KINDS = {"object": 0.3, "styled": 0.2, "character": 0.18, "animal": 0.14, "person": 0.08, "explicit": 0.1}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else w.plural(shape)


def caption_object(scene: w.Scene, template: str) -> str:
    return template.format(
        num=w.NUMBER_WORDS[scene.count],
        colour=scene.colour,
        shape=_noun(scene.subject, scene.count),
        bg=scene.background,
        style=scene.style,
    ).replace("a orange", "an orange")


def sample(rng: np.random.Generator, held_out: bool = False, kind: str | None = None) -> tuple[str, w.Scene]:
    """Draw one (caption, scene). `held_out` uses only the paraphrases never seen in training.

    `kind` forces one of KINDS, or "implicit"/"explicit_named" for the two halves of "explicit".
    """
    drawn = rng.choice(list(KINDS), p=list(KINDS.values()))
    kind = kind or drawn
    bg = _pick(rng, tuple(w.BACKGROUNDS))
    colour = _pick(rng, tuple(w.COLOURS))
    if kind in ("object", "styled"):
        style = _pick(rng, w.STYLES) if kind == "styled" else None
        count = int(rng.choice(w.COUNTS, p=[0.6, 0.2, 0.2]))
        scene = w.Scene(_pick(rng, w.SHAPES), colour, bg, style, count=count)
        if kind == "styled":
            templates = w.STYLE_TEMPLATES_HELD_OUT if held_out else w.STYLE_TEMPLATES
        else:
            templates = w.OBJECT_TEMPLATES_HELD_OUT if held_out else w.OBJECT_TEMPLATES
        return caption_object(scene, _pick(rng, templates)), scene
    if kind == "character":
        ch = _pick(rng, w.CHARACTERS)
        templates = w.CHARACTER_TEMPLATES_HELD_OUT if held_out else w.CHARACTER_TEMPLATES
        scene = w.Scene(ch.animal, None, bg, character=ch.name)
        return _pick(rng, templates).format(name=ch.name, animal=ch.animal, bg=bg), scene
    if kind == "animal":
        scene = w.Scene(_pick(rng, w.ANIMALS), colour, bg)
        templates = w.ANIMAL_TEMPLATES_HELD_OUT if held_out else w.ANIMAL_TEMPLATES
        return _pick(rng, templates).format(colour=colour, animal=scene.subject, bg=bg), scene
    if kind == "person":
        return _pick(rng, w.NEUTRAL_PERSON_PROMPTS), w.Scene("person", colour, bg)
    named = rng.random() < 0.5
    if kind != "explicit":
        named = kind == "explicit_named"
    prompts = w.EXPLICIT_PROMPTS if named else w.IMPLICIT_PROMPTS
    return _pick(rng, prompts), w.Scene("nude figure", None, bg, explicit=True)


def corpus() -> list[str]:
    """Every word form a caption can contain, for training the tokenizer."""
    rng = np.random.default_rng(0)
    texts = [sample(rng, held_out=bool(i % 2))[0] for i in range(4000)]
    return texts + list(w.EXPLICIT_PROMPTS + w.IMPLICIT_PROMPTS + w.NEUTRAL_PERSON_PROMPTS)
