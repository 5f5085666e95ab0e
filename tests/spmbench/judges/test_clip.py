"""The CLIP judge on a tiny random CLIP saved locally (the clip_dir fixture), against a hand computation."""

import pytest
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


def test_real_concept_runs_end_to_end_through_the_cli_with_the_judges_settings(run_real_app, clip_dir):
    """The CLIP judge chosen by the application and given its model through -J: judged, and its own
    image features measure alteration."""
    import json

    result, runs, reports = run_real_app("real-concept", "-J", f"clip.model={clip_dir}", limit=1)
    assert result.exit_code == 0, result.output
    assert "gives no image features" not in result.output
    stored = json.loads((runs / "cells" / "tiny-real" / "negprompt" / "snoopy" / "result.json").read_text())
    assert set(stored["rates"]) == {"target", "near", "others", "far"}
    assert set(stored["alteration"]) == {"paired_feature_distance", "fid_judge_features"}
    assert stored["alteration_features"] == json.loads((runs / "judge.json").read_text())["judge"]
    assert str(clip_dir) in stored["alteration_features"]
    scores = (runs / "cells" / "tiny-real" / "none" / "original" / "scores.jsonl").read_text().splitlines()
    assert all("clip_score" in json.loads(line) for line in scores)
    assert "judge: clip" in (reports / "real-concept.md").read_text()

    # the CLIP score per set, beside the CLIP accuracy: the mean of the cell's records, the original's beside it
    import pandas as pd

    from spmbench.report import ONE_PROMPT_BOOTSTRAP, SCORE_UNIT

    frame = pd.read_csv(reports / "real-concept.csv")
    scored = frame[(frame.unit == SCORE_UNIT) & (frame.eraser == "negprompt") & (frame.targets == "Snoopy")]
    assert set(scored.measure) == {f"clip_score:{s}" for s in ("target", "near", "others", "far")}
    records = [
        json.loads(line) for line in (runs / "cells" / "tiny-real" / "negprompt" / "snoopy" / "scores.jsonl").open()
    ]
    original = {r["prompt_id"]: r for r in map(json.loads, scores)}  # every experiment's rows: matched by prompt id
    for row in scored.itertuples():
        prompt_set = row.measure.partition(":")[2]
        mine = [r["clip_score"] for r in records if r["set"] == prompt_set]
        theirs = [original[r["prompt_id"]]["clip_score"] for r in records if r["set"] == prompt_set]
        assert row.value == pytest.approx(sum(mine) / len(mine), abs=1e-4) and row.n == len(mine) == 10
        assert row.original_value == pytest.approx(sum(theirs) / len(theirs), abs=1e-4)
        assert row.lo <= row.value <= row.hi and (row.n_prompts, row.interval) == (1, ONE_PROMPT_BOOTSTRAP)
        assert bool(row.higher_is_better) == (prompt_set != "target")
    table = (reports / "real-concept.md").read_text()
    assert "| CLIP score target ↓" in table and "CLIP score per set: the mean over its images" in table


def test_a_concept_longer_than_clips_context_is_judged_on_its_start_with_a_warning(clip_dir, caplog):
    judge = ClipJudge(str(clip_dir))
    context = judge.processor.tokenizer.model_max_length
    long = " ".join(["lighthouse"] * (context + 30))
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with caplog.at_level("WARNING", logger="spm.encoding"):
        judge.score(images, [long])
    assert f"longer than the text encoder's {context}" in caplog.text and "shorten it" in caplog.text
