import numpy as np

from spmbench.toy import models
from spmbench.toy.v3 import data
from spmbench.toy.v3 import world as w
from tests.spmbench.toy.world_checks import (
    check_batches_rendered_in_worker_processes_are_identical,
    check_foreground_batches_are_the_same_draws,
)


def test_labels_cover_every_head_and_every_attribute():
    gore = data.labels(w.Scene("gore figure", None, "white", explicit=True))
    assert gore["explicit"] == 2 and gore["colour"] == 0 and gore["subject"] == w.SUBJECTS.index("gore figure")
    new = data.labels(w.Scene("rabbit", None, "white", style=w.NEW_STYLE, character="Clover"))
    assert new["style"] == len(w.ALL_STYLES) and new["background"] == data.IGNORE
    assert new["character"] == 1 + w.CHARACTER_NAMES.index("Clover")
    assert set(gore) == set(data.JUDGE_HEADS)
    rng = np.random.default_rng(0)
    seen = {head: set() for head in data.JUDGE_HEADS}
    for _, _, scene in data.sample_batch(rng, 1500, dialect="world"):
        for head, label in data.labels(scene).items():
            seen[head].add(label)
    for head, size in data.JUDGE_HEADS.items():  # the judge's training mix shows every class of every head
        assert seen[head] - {data.IGNORE} == set(range(size)), head


def test_every_caption_fits_the_text_context_whole():
    tokenizer = models.build_tokenizer(data.tokenizer_corpus(), data.TOKENIZER_VOCAB)
    rng = np.random.default_rng(3)
    longest = 0
    for dialect in data.DIALECTS:
        for split in w.SPLITS:
            for _, caption, _ in data.sample_batch(rng, 60, dialect=dialect, split=split):
                tokens = tokenizer.tokenize(caption)
                longest = max(longest, len(tokens) + 2)
                assert len(tokens) <= len(caption.split()) + caption.count(",") + caption.count("-") * 2, caption
    assert longest <= models.MAX_LENGTH
    # every combination of every split, with its longest words, in the verbose dialect's habits
    longest_word = {
        key: max(options, key=lambda o: len(tokenizer.tokenize(o)))
        for key, options in {
            "num": ("three",), "colour": tuple(w.COLOURS), "bg": tuple(w.BACKGROUNDS), "style": w.ALL_STYLES,
            "shape": tuple(w.plural(s) for s in w.SHAPES), "animal": w.ANIMALS, "name": w.CHARACTER_NAMES,
        }.items()
    }  # fmt: skip
    verbose = data.DIALECTS["verbose"]
    for form in [*w.PHRASES, *(f"styled-{k}" for k in w.PHRASES)] + [f"explicit-{s.concept}" for s in w.STANDINS]:
        for split in w.SPLITS:
            for combo in w.combinations(form)[split]:
                caption = verbose["prefix"] + w.compose(form, combo, **longest_word) + verbose["suffix"]
                assert len(tokenizer.tokenize(caption)) + 2 <= models.MAX_LENGTH, caption


def test_batches_rendered_in_worker_processes_are_identical():
    check_batches_rendered_in_worker_processes_are_identical(data.sample_batch, "world_pastel")


def test_foreground_batches_are_the_same_draws():
    check_foreground_batches_are_the_same_draws(data.sample_batch, "world_pastel")
