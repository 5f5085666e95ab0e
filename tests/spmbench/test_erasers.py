"""Every registered eraser on the tiny pipeline: fit is idempotent, apply changes target prompts."""

import numpy as np
import pytest
import torch

from spmbench.erasers import ERASERS


KW = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np")


def gen(eraser, handle, prompt):
    return eraser.generate(handle, [prompt], generator=[torch.Generator().manual_seed(0)], **KW).images


@pytest.mark.parametrize("name", ERASERS.names())
def test_contract(name, pipe, tmp_path, monkeypatch):
    eraser = ERASERS.get(name)
    if hasattr(eraser, "settings"):
        monkeypatch.setattr(eraser, "settings", {"iterations": 3, "lr": 1e-2, "warmup_steps": 1, "rollout_steps": 4})
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16)
    assert eraser.fit(pipe, ("snoopy",), tmp_path, 16) == artifacts  # idempotent
    assert all(p.exists() for p in artifacts)
    original = pipe(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **KW).images
    with eraser.apply(pipe, artifacts) as handle:
        erased = gen(eraser, handle, "snoopy the dog")
    if name == "none":
        np.testing.assert_allclose(erased, original)
    else:
        assert np.abs(erased - original).max() > 1e-4
    after = pipe(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **KW).images
    np.testing.assert_allclose(after, original)  # apply leaves the pipeline as it found it


def test_negative_prompt_is_the_pipelines_negative_prompt(pipe, tmp_path):
    eraser = ERASERS.get("negprompt")
    with eraser.apply(pipe, eraser.fit(pipe, ("snoopy", "mickey"), tmp_path, 16)) as handle:
        ours = gen(eraser, handle, "a photo of a dog")
    direct = pipe(
        ["a photo of a dog"], negative_prompt=["snoopy, mickey"], generator=[torch.Generator().manual_seed(0)], **KW
    ).images
    np.testing.assert_allclose(ours, direct)
