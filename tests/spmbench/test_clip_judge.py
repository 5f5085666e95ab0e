"""The CLIP judge on a tiny random CLIP saved locally, against a hand computation."""

import pytest
import torch
import torch.nn.functional as F

from spmbench.judges.clip import ClipJudge
from tests.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
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
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


def test_score_and_accuracy_match_a_hand_computation(clip_dir):
    judge = ClipJudge(str(clip_dir))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a dog", "snoopy the dog", "a red car"]
    # reference: the model's own forward, which computes both embeddings and their logits
    inputs = judge.processor(
        text=texts + [""], images=list(images), return_tensors="pt", padding=True, do_rescale=False
    )
    with torch.no_grad():
        out = judge.model(**inputs)
    img, txt = F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1)
    cos = (img * txt[:3]).sum(-1)
    torch.testing.assert_close(judge.score(images, texts), 2.5 * cos.clamp(min=0), rtol=1e-4, atol=1e-5)
    concepts = ["dog", "snoopy", "car"]
    inputs = judge.processor(
        text=[f"a photo of {c}" for c in concepts] + [""],
        images=list(images),
        return_tensors="pt",
        padding=True,
        do_rescale=False,
    )
    with torch.no_grad():
        out = judge.model(**inputs)
    logits = out.logits_per_image  # (3 images, 4 texts): image i vs its concept i and the anchor (last)
    expected = [bool(logits[i, i] > logits[i, 3]) for i in range(3)]
    assert judge.present(images, concepts) == expected
    assert judge.features(images).shape == (3, 8)
