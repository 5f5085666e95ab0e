"""Tiny stand-ins for the judges' models, built and saved locally: CLIP, ImageNet classifiers, the toy CNN."""

import pytest
import torch

from tests.tiny import tiny_tokenizer


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


def save_tiny_clip(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


def save_tiny_classifier(path, kind: str = "vit"):
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
    if kind == "vit":
        config = ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, **labels)  # fmt: skip
        model, processor = ViTForImageClassification(config), ViTImageProcessor(size={"height": 32, "width": 32})
    else:
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **labels)
        model = ResNetForImageClassification(config)
        processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_toy_judge(path):
    """The toy world's judge CNN at random weights, in the shipped layout (judge.json + judge.safetensors)."""
    from spmbench.toy import data, models

    torch.manual_seed(0)
    models.save_judge(models.Judge(data.JUDGE_HEADS), path)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def vit_classifier_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-vit"), "vit")


@pytest.fixture(scope="session")
def toy_judge_dir(tmp_path_factory):
    return save_toy_judge(tmp_path_factory.mktemp("toy-judge"))
