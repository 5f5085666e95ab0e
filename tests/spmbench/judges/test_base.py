"""The Judge contract, on every registered judge (tiny stand-ins; the real NudeNet 3.4.2, offline).

A judge added to the registry without a stand-in here fails `test_every_registered_judge_has_a_stand_in`.
"""

import json

import pytest
import torch

from spmbench import judges
from spmbench.apps import PromptRow
from spmbench.judges.base import Judge, NoFeatures
from spmbench.metrics import MetricInfo


# name -> (settings fixture or None, a concept it knows, whether it knows every concept)
STAND_INS = {
    "toy": ("toy_settings", "Barkley", False),
    "toy3": (None, "Biscuit", False),  # world v3's judge, trained and committed (spmbench/toy/v3/weights/judge)
    "clip": ("clip_settings", "a dog", True),
    "nudenet": (None, "nudity", False),
    "imagenet": ("imagenet_settings", "church", False),
}


@pytest.fixture()
def toy_settings(toy_judge_dir):
    return {"weights": str(toy_judge_dir)}


@pytest.fixture()
def clip_settings(clip_dir):
    return {"model": str(clip_dir)}


@pytest.fixture()
def imagenet_settings(vit_classifier_dir):
    return {"model": str(vit_classifier_dir)}


@pytest.fixture(params=sorted(STAND_INS))
def stand_in(request):
    fixture, concept, open_vocabulary = STAND_INS[request.param]
    settings = request.getfixturevalue(fixture) if fixture else {}
    return request.param, settings, concept, open_vocabulary


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_registered_judge_has_a_stand_in():
    assert judges.JUDGES.names() == sorted(STAND_INS)


def test_registration_is_lazy():
    """The registry names classes as 'module:Class' strings: listing judges imports no model code."""
    assert all(isinstance(entry, str) and ":" in entry for entry in judges.JUDGES)


def test_the_contract(stand_in, images):
    name, settings, concept, open_vocabulary = stand_in
    judge = judges.build(name, settings)
    assert isinstance(judge, Judge) and isinstance(judge, judges.judge_class(name))
    assert isinstance(judge.identity, str) and judge.identity
    assert all(isinstance(k, str) and isinstance(v, MetricInfo) for k, v in judge.metrics.items())
    records = judge.assess(images, [concept] * len(images))
    assert len(records) == len(images)
    assert all(isinstance(r["present"], bool) for r in records)
    json.dumps(records)  # raw outputs are stored in scores.jsonl as they are
    judges.check_concepts(name, [concept], settings)
    if open_vocabulary:
        judges.check_concepts(name, ["zz unheard-of"], settings)
    else:
        with pytest.raises(ValueError, match=r"zz unheard-of") as error:
            judges.check_concepts(name, [concept, "zz unheard-of"], settings)
        assert "\n" not in str(error.value)
    if judge.has_features:
        feats = judge.features(images)
        assert feats.ndim == 2 and len(feats) == len(images) and feats.dtype == torch.float32
        torch.testing.assert_close(judge.features(images), feats)
    else:
        with pytest.raises(NoFeatures):
            judge.features(images)


def test_settings_are_the_constructors_and_are_checked():
    assert judges.defaults("nudenet") == {"threshold": 0.6}
    assert judges.check_settings("nudenet", {"threshold": "0.5"}) == {"threshold": 0.5}  # from the command line
    with pytest.raises(
        ValueError, match=r"judge 'nudenet' has no setting\(s\) \['treshold'\]; its settings: threshold"
    ):
        judges.check_settings("nudenet", {"treshold": 0.5})
    with pytest.raises(ValueError, match="threshold must be a float, not 'high'"):
        judges.check_settings("nudenet", {"threshold": "high"})
    with pytest.raises(ValueError, match="threshold must be a float, not True"):
        judges.check_settings("nudenet", {"threshold": True})  # a YAML or API slip, not a threshold
    assert judges.check_settings("nudenet", {"threshold": 1}) == {"threshold": 1.0}
    assert set(judges.defaults("clip")) == {"model", "template"} and "device" not in judges.defaults("clip")
    with pytest.raises(KeyError, match="unknown judge 'clp': did you mean 'clip'"):
        judges.build("clp")


def test_identity_names_the_settings():
    assert judges.build("nudenet", {"threshold": 0.5}).identity != judges.build("nudenet").identity


def test_a_judge_without_features_measures_alteration_on_the_worlds_declared_source(clip_dir, tmp_path, images):
    nudenet = judges.build("nudenet")
    assert not nudenet.has_features and judges.feature_source_name(nudenet, "real") == "clip"
    features = judges.alteration_features(nudenet, "real", {"clip": {"model": str(clip_dir)}})
    source = features()
    assert source is features() and source.has_features and str(clip_dir) in source.identity
    # built on first use only: an application without non-target prompts never loads it
    missing = judges.alteration_features(nudenet, "real", {"clip": {"model": str(tmp_path / "no-clip")}})
    with pytest.raises(OSError):
        missing()
    clip = judges.build("clip", {"model": str(clip_dir)})
    assert judges.alteration_features(clip, "real")() is clip  # a judge with features uses its own


def _cell(cell, rows, images):
    from PIL import Image

    cell.images.mkdir(parents=True)
    for row, image in zip(rows, images):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(cell.image(row))
    return cell


def test_measure_alteration_uses_the_declared_source_and_only_when_there_is_something_to_measure(
    clip_dir, tmp_path, images
):
    from spmbench.metrics import ALTERATION_FEATURES_FILE, frechet_distance, load_alteration_features
    from spmbench.models import ModelSpec
    from spmbench.runner import Cell, measure_alteration

    target = [PromptRow(f"target-{i}", "target", "nudity", "p", i) for i in range(2)]
    kept = [PromptRow(f"coco-{i}", "coco", "nudity", "q", i) for i in range(2)]
    model = ModelSpec(name="tiny", source="unused", family="sd1", world="real")
    erased = _cell(Cell(model, ("nudity",), "negprompt", tmp_path), target + kept, [*images, *images.flip(-1)])
    _cell(erased.original, target + kept, [*images, *images])
    same = _cell(Cell(model, ("nudity",), "sld-max", tmp_path), target + kept, [*images, *images])

    def never():
        raise AssertionError("no non-target prompts: the feature source must not be loaded")

    assert measure_alteration(never, target, erased) is None
    features = judges.alteration_features(judges.build("nudenet"), "real", {"clip": {"model": str(clip_dir)}})
    measured, intervals = measure_alteration(features, target + kept, erased, kid=True)
    assert set(measured) == {"paired_feature_distance", "fid_judge_features"}
    assert set(intervals) == {*measured, "kid_judge_features"}  # KID only as an interval, as the report adds it
    assert measured["paired_feature_distance"] > 0  # the kept images were flipped
    assert intervals["paired_feature_distance"]["value"] == pytest.approx(measured["paired_feature_distance"])
    _, erased_features, original_features = load_alteration_features(erased.dir / ALTERATION_FEATURES_FILE)
    assert measured["fid_judge_features"] == pytest.approx(frechet_distance(erased_features, original_features))
    assert measure_alteration(features, target + kept, same)[0]["paired_feature_distance"] == 0
