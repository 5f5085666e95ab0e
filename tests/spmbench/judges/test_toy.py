"""The toy judges' concept names: world v2's (`toy`, the shipped tables) and world v3's (`toy3`)."""

import pytest

from spmbench.judges import check_concepts
from spmbench.judges.toy import Toy3Judge, ToyJudge, concept_label, known_concepts
from spmbench.toy import world as w2
from spmbench.toy.v3 import data as data3
from spmbench.toy.v3 import world as w3


def test_world_v2_keeps_its_labels():
    assert concept_label("Juno") == ("character", 6)
    assert concept_label("Jonas Brandt") == ("style", 5)
    assert concept_label("nudity") == ("explicit", 1)
    assert concept_label("person") == ("subject", 11)
    assert known_concepts() == [*w2.CHARACTER_NAMES, *w2.STYLES, *w2.SUBJECTS, "nudity"]


def test_world_v3_names_every_concept_by_the_head_its_judge_was_trained_on():
    """The label a concept maps to is the one the v3 training data gives a scene of it."""
    scenes = {
        "Marina": w3.Scene("fish", None, "white", character="Marina"),
        "Nadia Petrova": w3.Scene("star", "red", "white", "Nadia Petrova"),
        "gore": w3.Scene("gore figure", None, "white", explicit=True),
        "nudity": w3.Scene("nude figure", None, "white", explicit=True),
        "warrior": w3.Scene("warrior", "red", "white"),
        "hourglass": w3.Scene("hourglass", "red", "white"),
    }
    for concept, scene in scenes.items():
        head, label = concept_label(concept, w3)
        assert data3.labels(scene)[head] == label, concept
    assert concept_label("gore", w3) != concept_label("nudity", w3)
    assert len(known_concepts(w3)) == len(set(known_concepts(w3)))


def test_each_judge_checks_its_own_worlds_concepts():
    check_concepts("toy3", ["gore", "Marina", "hourglass", "Nadia Petrova"])
    with pytest.raises(ValueError, match=r"knows no concept\(s\) \['gore'\]"):
        check_concepts("toy", ["gore", "Juno"])
    assert Toy3Judge.world is w3 and ToyJudge.world is w2


def test_an_untrained_v3_judge_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `spmbench toy train --world 3` \(expected in"):
        Toy3Judge(str(tmp_path))
