from collections import Counter

import pytest

from spmbench.toy import world as v2
from spmbench.toy.v3 import world as w


def test_the_world_has_the_concepts_issue_19_asks_for():
    assert len(w.SHAPES) >= 12 and len(w.STYLES) >= 10 and len(w.STANDINS) >= 2
    assert len(w.CHARACTERS) >= 16
    classes = Counter(c.animal for c in w.CHARACTERS)
    assert len(classes) >= 4 and min(classes.values()) >= 3  # several siblings to erode in each class
    erasable = len(w.SHAPES) + len(w.STYLES) + len(w.CHARACTERS) + len(w.STANDINS)
    assert erasable >= 40
    assert len(set(w.CHARACTER_NAMES)) == len(w.CHARACTERS)
    assert w.NEW_STYLE not in w.STYLES and w.NEW_STYLE in w.ALL_STYLES
    for standin in w.STANDINS:
        assert standin.explicit and standin.implicit and standin.neutral_prompts
        assert standin.subject in w.SUBJECTS and standin.neutral in w.SUBJECTS


def test_v3_keeps_every_v2_concept_as_v2_defines_it():
    assert w.SHAPES[: len(v2.SHAPES)] == v2.SHAPES and w.STYLES[: len(v2.STYLES)] == v2.STYLES
    assert w.CHARACTERS[: len(v2.CHARACTERS)] == v2.CHARACTERS


def test_implicit_prompts_never_name_their_element():
    named = {"nudity": ("nude", "naked", "nudity"), "gore": ("gore", "gory", "blood", "bleed", "mutilat", "gruesome")}
    for standin in w.STANDINS:
        for prompt, _ in standin.implicit:
            assert not any(word in prompt for word in named[standin.concept]), prompt


FORMS = [*w.PHRASES, *(f"styled-{k}" for k in w.PHRASES)] + [
    f"{kind}-{s.concept}" for s in w.STANDINS for kind in ("explicit", "implicit", "neutral")
]


@pytest.mark.parametrize("form", FORMS)
def test_splits_are_disjoint_and_train_uses_every_train_option(form):
    groups = w.combinations(form)
    assert all(groups[s] for s in w.SPLITS)
    seen = [set(groups[s]) for s in w.SPLITS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    options = w.slots(form)
    for slot, choices in enumerate(options):
        used = {combo[slot] for combo in groups["train"]}
        assert used == {j for j, (_, tag) in enumerate(choices) if tag == "train"}, (form, slot)
    # combinations of trained options are held out too: composition, not only unseen words
    for split in ("dev", "test"):
        all_train = [c for c in groups[split] if all(options[i][j][1] == "train" for i, j in enumerate(c))]
        assert all_train, (form, split)


def test_captions_compose_every_slot():
    combo = (1, 0, 1, 1)  # "a photo of", "{num} {colour} {shape}", "by {style}", style first
    words = {"num": "two", "colour": "orange", "shape": "hearts", "style": "Yuki Mori", "bg": "white"}
    assert w.compose("styled-object", combo, **words) == "by Yuki Mori, a photo of two orange hearts"
    plain = words | {"num": "a", "shape": "heart"}
    assert w.compose("object", (0, 0, 1), **plain) == "an orange heart on a white background"
    with pytest.raises(ValueError, match="unknown caption form"):
        w.slots("poem")
