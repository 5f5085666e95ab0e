"""Seeded scene sampling and captioning in world v3, per split ("train", "dev", "test") and mix.

A mix is the scene distribution one model trains on:
- "base": every concept but NEW_STYLE, the DreamBooth character at a quarter of a sibling's rate;
- "world": every concept evenly (the VAE and the judge, which must read every model's pictures);
- "newconcept": the base mix, with 40 % of scenes in NEW_STYLE;
- "dreambooth": DREAMBOOTH_SHARES of the DreamBooth character (a third of them styled) and of its generic
  class (prior preservation, on rendered class images); the rest the base mix.
"""

from __future__ import annotations

import numpy as np

from spmbench.toy.v3 import world as w


KINDS = {"object": 0.22, "styled": 0.2, "character": 0.2, "animal": 0.12, "neutral": 0.1, "explicit": 0.16}
STYLED_SUBJECTS = {"object": 0.6, "character": 0.25, "animal": 0.15}
MIXES = ("base", "world", "newconcept", "dreambooth")
NEW_STYLE_SHARE = 0.4
# With 25 % base mix (and 50 % the character), toy-dreambooth drew the clothed person for 6 of 200 held-out
# explicit phrasings that toy-base drew right every time (card, 2026-12-03): language drift, which a larger
# share of what the base trained on holds back, as DreamBooth's prior preservation does for the class.
DREAMBOOTH_SHARES = {"character": 0.4, "class": 0.2}  # the rest (40 %): the base mix


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _character(rng: np.random.Generator, mix: str) -> w.Character:
    weights = np.ones(len(w.CHARACTERS))
    if mix != "world":
        weights[w.CHARACTER_NAMES.index(w.DREAMBOOTH_CHARACTER)] = w.DREAMBOOTH_BASE_WEIGHT
    return w.CHARACTERS[int(rng.choice(len(weights), p=weights / weights.sum()))]


def form_of_kind(rng: np.random.Generator, kind: str) -> str:
    """A caption form for one of KINDS (a form name is returned as it is)."""
    if kind == "styled":
        return "styled-" + str(rng.choice(list(STYLED_SUBJECTS), p=list(STYLED_SUBJECTS.values())))
    if kind == "neutral":
        return "neutral-" + _pick(rng, w.STANDINS).concept
    if kind == "explicit":
        named = rng.random() < 0.5
        return ("explicit-" if named else "implicit-") + _pick(rng, w.STANDINS).concept
    return kind


def sample_form(
    rng: np.random.Generator, form: str, split: str = "train", mix: str = "base", character: str | None = None,
    style: str | None = None, animal: str | None = None,
) -> tuple[str, w.Scene]:  # fmt: skip
    """One (caption, scene) of caption form `form` (see world.slots) in `split`; `character`,
    `style` or `animal` force what would be drawn."""
    if split not in w.SPLITS:
        raise ValueError(f"split must be one of {', '.join(w.SPLITS)}, not {split!r}")
    combo = _pick(rng, w.combinations(form)[split])
    bg = _pick(rng, tuple(w.BACKGROUNDS))
    colour = _pick(rng, tuple(w.COLOURS))
    subject_kind = form.removeprefix("styled-")
    if form.startswith("styled-"):
        style = style or _pick(rng, w.ALL_STYLES if mix == "world" else w.STYLES)
    else:
        style = None
    words = {"bg": bg, "colour": colour, "style": style}
    if subject_kind == "object":
        count = int(rng.choice(w.COUNTS, p=[0.6, 0.2, 0.2]))
        shape = _pick(rng, w.SHAPES)
        scene = w.Scene(shape, colour, bg, style, count=count)
        words |= {"num": w.NUMBER_WORDS[count], "shape": shape if count == 1 else w.plural(shape)}
    elif subject_kind == "character":
        ch = _character(rng, mix) if character is None else w.CHARACTERS[w.CHARACTER_NAMES.index(character)]
        scene = w.Scene(ch.animal, None, bg, style, character=ch.name)
        words |= {"name": ch.name, "animal": ch.animal}
    elif subject_kind == "animal":
        animal = animal or _pick(rng, w.ANIMALS)
        scene = w.Scene(animal, colour, bg, style)
        words["animal"] = animal
    else:
        kind, _, concept = form.partition("-")
        standin = next(s for s in w.STANDINS if s.concept == concept)
        if kind == "neutral":
            scene = w.Scene(standin.neutral, colour, bg)
        else:
            scene = w.Scene(standin.subject, None, bg, explicit=True)
    return w.compose(form, combo, **words), scene


def sample(
    rng: np.random.Generator, split: str = "train", kind: str | None = None, mix: str = "base"
) -> tuple[str, w.Scene]:
    """Draw one (caption, scene) from `mix` in `split`; `kind` forces one of KINDS or a caption form."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)}, not {mix!r}")
    drawn = str(rng.choice(list(KINDS), p=list(KINDS.values())))
    if mix == "newconcept" and kind is None and rng.random() < NEW_STYLE_SHARE:
        return sample_form(rng, form_of_kind(rng, "styled"), split, mix, style=w.NEW_STYLE)
    if mix == "dreambooth" and kind is None:
        u = rng.random()
        if u < DREAMBOOTH_SHARES["character"]:
            form = "styled-character" if rng.random() < 1 / 3 else "character"
            return sample_form(rng, form, split, mix, character=w.DREAMBOOTH_CHARACTER)
        if u < DREAMBOOTH_SHARES["character"] + DREAMBOOTH_SHARES["class"]:
            animal = next(c.animal for c in w.CHARACTERS if c.name == w.DREAMBOOTH_CHARACTER)
            return sample_form(rng, "animal", split, mix, animal=animal)
    return sample_form(rng, form_of_kind(rng, kind or drawn), split, mix)


def corpus() -> list[str]:
    """Every word form a caption can contain, in every split, for training the tokenizer."""
    rng = np.random.default_rng(0)
    texts = [sample(rng, split=w.SPLITS[i % 3], mix="world")[0] for i in range(9000)]
    for standin in w.STANDINS:
        texts += [p for p, _ in standin.explicit + standin.implicit + standin.neutral_prompts]
    texts += [f"{c.name} the {c.animal}" for c in w.CHARACTERS] + [f"by {s}" for s in w.ALL_STYLES]
    return [_first_phrasing(t) for t in texts]


def _first_phrasing(text: str) -> str:
    """`text` as the tokenizer's corpus first had it (see world.FIRST_HELD_OUT_PHRASINGS)."""
    for now, first in w.FIRST_HELD_OUT_PHRASINGS.items():
        text = text.replace(now, first)
    return text
