"""The ImageNet classifier judge on tiny random classifiers saved locally, against hand computations."""

import pytest
import torch
from typer.testing import CliRunner

from spmbench.judges.imagenet import ImageNetJudge, label_index
from tests.spmbench.judges.conftest import ID2LABEL, LABELS, save_tiny_classifier


@pytest.fixture(scope="module", params=["vit", "resnet"])
def classifier_dir(request, tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="module")
def judge(classifier_dir):
    return ImageNetJudge(str(classifier_dir))


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 40, 48, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "concept, index",
    [
        ("church", 4),
        ("Church Building", 4),  # a synonym, any case
        ("english springer", 1),  # the published Imagenette file writes its classes in lower case
        ("English springer spaniel", 1),
        ("chainsaw", 3),
        ("  garbage   truck ", 6),
        ("dustcart", 6),
        ("petrol pump", 7),
        ("horn", 5),
        ("maillot", 12),  # the whole label wins over another label's synonym
        ("tank suit", 13),
        ("11", 11),  # an index picks among same-named classes
    ],
)
def test_concepts_match_labels_and_their_synonyms(concept, index):
    assert label_index(concept, ID2LABEL) == index


def test_unknown_or_ambiguous_concepts_are_clear_errors():
    with pytest.raises(ValueError, match=r"no class named 'garbage truk'; did you mean 'garbage truck'"):
        label_index("garbage truk", ID2LABEL)
    with pytest.raises(ValueError, match=r"no class named 'zebra'$"):
        label_index("zebra", ID2LABEL)
    with pytest.raises(ValueError, match=r"'crane' names several classes \(10: 'crane'; 11: 'crane'\)"):
        label_index("crane", ID2LABEL)


def test_present_is_the_top1_of_the_models_own_forward(judge, images):
    # reference: the processor's pixel values through the model's own forward, argmax of the logits
    pixels = judge.processor(images=list(images), return_tensors="pt", do_rescale=False)["pixel_values"]
    assert pixels.shape[-2:] == (32, 32)
    with torch.no_grad():
        logits = judge.model(pixel_values=pixels).logits
    top1 = logits.argmax(-1).tolist()
    # even images: the concept is the predicted class (named by a synonym); odd ones: another class
    concepts = [_synonyms_of(top1[i])[-1] if i % 2 == 0 else LABELS[(top1[i] + 1) % 10] for i in range(len(images))]
    concepts = [c if c != "crane" else str(top1[i]) for i, c in enumerate(concepts)]
    verdicts = judge.assess(images, concepts)
    assert [v["present"] for v in verdicts] == [i % 2 == 0 for i in range(len(images))]
    probs = logits.softmax(-1)
    for i, v in enumerate(verdicts):
        index = label_index(concepts[i], ID2LABEL)
        assert v["label_index"] == index and v["label"] == LABELS[index]
        assert v["prob"] == pytest.approx(float(probs[i, index]), rel=1e-4, abs=1e-6)
        ref_p, ref_i = probs[i].topk(5)
        assert [t["index"] for t in v["top5"]] == ref_i.tolist()
        assert [t["label"] for t in v["top5"]] == [LABELS[j] for j in ref_i.tolist()]
        assert [t["prob"] for t in v["top5"]] == pytest.approx(ref_p.tolist(), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="did you mean 'church'"):
        judge.assess(images[:1], ["churhc"])


def _synonyms_of(index: int) -> list[str]:
    return [s.strip() for s in LABELS[index].split(",")]


def test_features_are_the_heads_input_and_deterministic(judge, images):
    feats = judge.features(images)
    assert feats.shape == (
        len(images),
        16,
    )  # ViT's hidden size, ResNet's last stage width and feats.dtype == torch.float32
    torch.testing.assert_close(judge.features(images), feats, rtol=0, atol=0)
    torch.testing.assert_close(judge.features(images[:2]), feats[:2], rtol=1e-5, atol=1e-6)  # batch-independent
    with torch.no_grad():  # the head applied to the features gives the model's logits back
        pixels = judge.pixels(images)
        torch.testing.assert_close(
            judge.model.classifier(feats), judge.model(pixel_values=pixels).logits, rtol=1e-4, atol=1e-5
        )


def test_the_object_application_erases_each_imagenette_class_keeping_the_others():
    from spmbench.apps import load_apps
    from tests.spmbench.test_prompts import BENCH

    app = load_apps().get("real-object")
    assert app.judge == "imagenet" and app.world == "real" and len(app.erase) == 10
    rows = app.rows(("church",), data_dir=BENCH)
    target = [r for r in rows if r.set == "target"]
    others = [r for r in rows if r.set == "others"]
    assert {r.set for r in rows} == {"target", "others"}
    assert len(target) == 10 and {r.concept for r in target} == {"church"}
    assert all(r.prompt == "Image of church" for r in target) and target[0].seed == 987  # the file's seeds
    assert len(others) == 90 and len({r.concept for r in others}) == 9 and "church" not in {r.concept for r in others}
    assert len({r.prompt_id for r in rows}) == len(rows)
    # rows for the erased class use the same ids whichever experiment they appear in
    springer = app.rows(("English springer",), data_dir=BENCH)
    assert {r.concept for r in springer if r.set == "target"} == {"english springer"}
    assert {r.prompt_id for r in springer if r.set == "others"} - {r.prompt_id for r in others} == {
        r.prompt_id.replace("target-", "others-") for r in target
    }
    # every class the application names is one of the classifier's labels
    for experiment in app.erase:
        for row in app.rows(experiment, data_dir=BENCH):
            assert LABELS[label_index(row.concept, ID2LABEL)].lower().startswith(row.concept.lower())


def test_the_registry_builds_the_judge_and_validate_checks_classes_against_its_labels(classifier_dir, tmp_path):
    from transformers import AutoConfig

    from spmbench import judges
    from spmbench.cli import app

    assert isinstance(judges.build("imagenet", {"model": str(classifier_dir)}), ImageNetJudge)
    for option in (["--classifier", str(classifier_dir)], ["-J", f"imagenet.model={classifier_dir}"]):
        result = CliRunner().invoke(app, ["validate", *option])
        assert result.exit_code == 0 and "ok:" in result.output and "not checked" not in result.output
    config = AutoConfig.from_pretrained(classifier_dir)
    config.id2label = {i: label for i, label in ID2LABEL.items() if not label.startswith("tench")}
    config.save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--classifier", str(tmp_path)])
    assert result.exit_code == 2 and "object.yaml: the classifier has no class named 'tench'" in result.output
    result = CliRunner().invoke(app, ["validate", "--classifier", str(tmp_path / "absent")])
    assert result.exit_code == 0 and "real-object: " in result.output and "classes were not checked" in result.output


def test_real_object_runs_end_to_end_through_the_cli(run_real_app, vit_classifier_dir):
    import json

    result, runs, reports = run_real_app("real-object", "--classifier", str(vit_classifier_dir), limit=1)
    assert result.exit_code == 0, result.output
    stored = json.loads((runs / "cells" / "tiny-real" / "negprompt" / "church" / "result.json").read_text())
    assert set(stored["rates"]) == {"target", "others"} and stored["rows"] == 2
    assert stored["alteration_features"] == f"imagenet classifier {vit_classifier_dir}"
    assert set(stored["alteration"]) == {"paired_feature_distance"}  # one non-target image: no FID
    scores = (runs / "cells" / "tiny-real" / "negprompt" / "church" / "scores.jsonl").read_text().splitlines()
    assert all({"label", "prob", "top5"} <= set(json.loads(line)) for line in scores)
    assert "judge: imagenet" in (reports / "real-object.md").read_text()
