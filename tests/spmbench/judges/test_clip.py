"""The CLIP judge on a tiny random CLIP saved locally (the clip_dir fixture), against a hand computation."""

import torch
import torch.nn.functional as F

from spmbench.judges.clip import ClipJudge


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
