"""The ImageNet classifier judge on tiny random classifiers saved locally, against hand computations."""

import pytest
import torch
from typer.testing import CliRunner

from spmbench.judges.imagenet import ImageNetJudge, label_index


# ImageNet-style labels (comma-separated synonyms), with ImageNet's own traps: two classes named
# just "crane", and "maillot" both a whole label and a synonym of another.
LABELS = [
    "tench, Tinca tinca",
    "English springer, English springer spaniel",
    "cassette player",
    "chain saw, chainsaw",
    "church, church building",
    "French horn, horn",
    "garbage truck, dustcart",
    "gas pump, gasoline pump, petrol pump, island dispenser",
    "golf ball",
    "parachute, chute",
    "crane",
    "crane",
    "maillot",
    "maillot, tank suit",
]
ID2LABEL = dict(enumerate(LABELS))


def _save(model, processor, path):
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["vit", "resnet"])
def classifier_dir(request, tmp_path_factory):
    """A tiny ViT (the ViT processor) or ResNet (the ResNet-50 checkpoints' ConvNext processor)."""
    from transformers import (
        ConvNextImageProcessor,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    labels = dict(id2label=ID2LABEL, label2id={label: i for i, label in ID2LABEL.items()})
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    if request.param == "vit":
        config = ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, **labels)  # fmt: skip
        return _save(ViTForImageClassification(config), ViTImageProcessor(size={"height": 32, "width": 32}), path)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **labels)
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    return _save(ResNetForImageClassification(config), processor, path)


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


def test_the_cli_builds_the_judge_and_validates_classes_against_its_labels(classifier_dir, tmp_path):
    from transformers import AutoConfig

    from spmbench import cli
    from spmbench.cli import _judge, app
    from spmbench.judges import imagenet

    assert cli.DEFAULT_CLASSIFIER == imagenet.DEFAULT_CLASSIFIER  # spelt twice so the CLI starts without torch
    assert isinstance(_judge("imagenet", "cpu", "unused", str(classifier_dir)), ImageNetJudge)
    result = CliRunner().invoke(app, ["validate", "--classifier", str(classifier_dir)])
    assert result.exit_code == 0 and "ok:" in result.output and "not checked" not in result.output
    config = AutoConfig.from_pretrained(classifier_dir)
    config.id2label = {i: label for i, label in ID2LABEL.items() if not label.startswith("tench")}
    config.save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--classifier", str(tmp_path)])
    assert result.exit_code == 2 and "object.yaml: the classifier has no class named 'tench'" in result.output
    result = CliRunner().invoke(app, ["validate", "--classifier", str(tmp_path / "absent")])
    assert result.exit_code == 0 and "real-object's classes were not checked" in result.output
