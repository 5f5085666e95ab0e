"""Every registered eraser on the tiny pipeline: fit is idempotent, apply changes target prompts."""

import numpy as np
import pytest
import torch

from spmbench.erasers import ERASERS


KW = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np")
# Fitting settings small enough for the tiny pipeline, per fit (the rest use their defaults); keyed
# as the runner keys them, so the SPM variants sharing one fit share these.
FAST = {
    "spm": {"iterations": 3, "lr": 1e-2, "warmup_steps": 1, "rollout_steps": 4},
    "esd-x": {"iterations": 3, "lr": 1e-2, "rollout_steps": 4},
    "esd-u": {"iterations": 3, "lr": 1e-2, "rollout_steps": 4},
    "ca": {"iterations": 3, "lr": 1e-2, "batch_size": 2, "anchor_images": 2, "sample_steps": 4},
}


def gen(generate, prompt):
    return generate([prompt], generator=[torch.Generator().manual_seed(0)], **KW).images


@pytest.mark.parametrize("name", ERASERS.names())
def test_contract(name, pipe, tmp_path):
    eraser = ERASERS.get(name)
    fast = FAST.get(eraser.settings_key)
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16, fast)
    assert eraser.fit(pipe, ("snoopy",), tmp_path, 16, fast) == artifacts  # idempotent
    assert all(p.exists() for p in artifacts)
    kw = KW | {"num_inference_steps": 30} if name.startswith("sld") else KW  # well past every preset's warm-up
    original = pipe(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **kw).images
    with eraser.apply(pipe, artifacts) as generate:
        erased = generate(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **kw).images
    if name == "none":
        np.testing.assert_allclose(erased, original)
    else:
        assert np.abs(erased - original).max() > 1e-4
    after = pipe(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **kw).images
    np.testing.assert_allclose(after, original)  # apply leaves the pipeline as it found it


@pytest.mark.parametrize("name", ERASERS.names())
def test_every_setting_is_checked_and_none_is_ignored(name, tmp_path):
    eraser = ERASERS.get(name)
    eraser.settings(FAST.get(eraser.settings_key))  # its own valid settings pass
    with pytest.raises(ValueError, match=f"eraser '{name}'(: unknown field| takes no settings).*'iteratons'"):
        eraser.settings({"iteratons": 3})
    with pytest.raises(ValueError, match="unknown field|takes no settings"):
        eraser.fit(None, ("snoopy",), tmp_path, 16, {"iteratons": 3})  # refused before the pipeline is used
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "settings", "problem"),
    [
        ("spm", {"num_anchors": "four"}, "num_anchors must be a whole number, got 'four'"),
        ("spm", {"lr": float("nan")}, "lr must be a finite number"),
        ("esd-x", {"iterations": 0}, "iterations must be a whole number >= 1"),
        ("esd-u", {"lr": -1.0}, "lr must be a finite number greater than 0"),
        ("ca", {"batch_size": 2.5}, "batch_size must be a whole number, got 2.5"),
        ("uce", {"preserve": "a dog"}, "preserve must be a list of text, got .a dog."),
        ("rece", {"rounds": -1}, "rounds must be a whole number >= 0"),
    ],
)
def test_impossible_settings_are_one_line_errors(name, settings, problem):
    with pytest.raises(ValueError, match=problem) as e:
        ERASERS.get(name).settings(settings)
    assert "\n" not in str(e.value)


def test_yaml_lists_become_the_declared_tuples():
    settings = ERASERS.get("uce").settings({"preserve": ["a dog", "a cat"]})
    assert settings.preserve == ("a dog", "a cat")


def test_negative_prompt_is_the_pipelines_negative_prompt(pipe, tmp_path):
    eraser = ERASERS.get("negprompt")
    with eraser.apply(pipe, eraser.fit(pipe, ("snoopy", "mickey"), tmp_path, 16)) as generate:
        ours = gen(generate, "a photo of a dog")
    direct = pipe(
        ["a photo of a dog"], negative_prompt=["snoopy, mickey"], generator=[torch.Generator().manual_seed(0)], **KW
    ).images
    np.testing.assert_allclose(ours, direct)


def test_uce_closed_form_equals_a_direct_least_squares_solve():
    from spmbench.erasers.uce import closed_form

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    c, g, p = (torch.randn(n, 4, generator=gen, dtype=torch.float64) for n in (3, 3, 2))
    lam = 0.5
    # min |W'C - WG|^2 + |W'P - WP|^2 + lam |W' - W|^2 as one stacked least-squares problem
    a = torch.cat([c, p, lam**0.5 * torch.eye(4, dtype=torch.float64)])  # rows = inputs
    b = torch.cat([g @ w.T, p @ w.T, lam**0.5 * w.T])  # rows = wanted outputs
    direct = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(closed_form(w, c, g, p, lam), direct)


def test_uce_edits_only_cross_attention_key_value(pipe, tmp_path):
    from spmbench.erasers.uce import UCE, cross_attention_projections

    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    eraser = UCE()
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16)
    layers = cross_attention_projections(pipe.unet)
    assert len(layers) == 8 and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in layers)
    with eraser.apply(pipe, artifacts):
        changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{n}.weight" for n in layers}
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_sld_step_matches_a_hand_computed_guidance(pipe, tmp_path):
    from spmbench.erasers.sld import PRESETS, SLD

    preset = PRESETS["max"]  # no warm-up: the first step is already guided
    eraser = SLD("max")
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16)

    def embed(text):
        ids = pipe.tokenizer(
            [text], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        return pipe.text_encoder(ids)[0]

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # the same batching as the pipeline ([uncond; cond]) and as the hook (the safety prompt alone)
        both = torch.cat([embed(""), embed("a photo of a dog")])
        e_u, e_p = pipe.unet(torch.cat([x, x]), 500, encoder_hidden_states=both).sample.chunk(2)
        e_s = pipe.unet(x, 500, encoder_hidden_states=embed("snoopy")).sample
        scale = torch.clamp((e_p - e_s).abs() * preset.sld_scale, max=1.0)  # SLD's mu, eq. 5: |.|, at most 1
        scale = torch.where(e_p - e_s >= preset.threshold, torch.zeros_like(scale), scale)
        g_safe = (e_s - e_u) * scale  # momentum starts at zero
        with eraser.apply(pipe, artifacts) as generate:
            guidance = generate.guidance
            guidance.reset()
            guidance.sampling = True  # as generate sets it around the pipeline's call: the hook guides
            out = pipe.unet(
                torch.cat([x, x]), 500, encoder_hidden_states=torch.cat([embed(""), embed("a photo of a dog")])
            ).sample
            torch.testing.assert_close(out[:1], e_u, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[1:], e_p - g_safe, rtol=1e-5, atol=1e-6)
            # a scale in [0, 1]: the safety term never outgrows the concept's own guidance direction
            assert ((e_p - out[1:]).abs() <= (e_s - e_u).abs() + 1e-6).all()
            assert guidance.step == 1 and torch.allclose(guidance.momentum, (1 - preset.momentum_beta) * g_safe)
            tuple_out = pipe.unet(
                torch.cat([x, x]),
                500,
                encoder_hidden_states=torch.cat([embed(""), embed("a photo of a dog")]),
                return_dict=False,
            )
            assert isinstance(tuple_out, tuple) and tuple_out[0].shape == (2, 4, 8, 8)
    plain = pipe.unet(
        torch.cat([x, x]), 500, encoder_hidden_states=torch.cat([embed(""), embed("a photo of a dog")])
    ).sample
    torch.testing.assert_close(plain[1:], e_p)  # the hook is gone after apply


def test_uce_settings_change_the_edit(pipe, tmp_path):
    from safetensors.torch import load_file

    uce = ERASERS.get("uce")
    to_empty = load_file(str(uce.fit(pipe, ("snoopy",), tmp_path / "a", 16)[0]))
    to_art = load_file(str(uce.fit(pipe, ("snoopy",), tmp_path / "b", 16, {"guide": "art", "lam": 0.1})[0]))
    assert any(not torch.allclose(to_empty[k], to_art[k]) for k in to_empty)


def test_spm_surrogate_setting_reaches_training(pipe, tmp_path):
    import spm

    settings = FAST["spm"] | {"surrogate": "a dog"}
    (path,) = ERASERS.get("spm").fit(pipe, ("snoopy",), tmp_path, 16, settings)
    provenance = spm.SPM.load(path).provenance
    assert provenance["surrogate"] == "a dog" and provenance["train_config"]["iterations"] == 3


def test_uce_rows_are_the_last_word_and_every_token_after_it(pipe):
    from spmbench.erasers.uce import aligned_embeddings

    def hidden(text):
        ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids  # fmt: skip
        return pipe.text_encoder(ids)[0][0], int((ids[0] == pipe.tokenizer.eos_token_id).nonzero()[0])

    (h_t, end_t), (h_g, _) = hidden("a photo of snoopy"), hidden("")
    rows, guide = aligned_embeddings(pipe, "a photo of snoopy", "")
    length = h_t.shape[0]
    torch.testing.assert_close(rows, h_t[end_t - 1 :].float())  # last word, end token, padding
    torch.testing.assert_close(guide, h_g[: length - (end_t - 1)].float())  # the empty prompt from its start token
    same, itself = aligned_embeddings(pipe, "a photo of a dog")
    torch.testing.assert_close(same, itself)  # a preserved concept maps to itself


@pytest.mark.parametrize("name", ["spm", "esd-x"])
def test_a_fit_that_cannot_be_saved_is_kept_and_not_trained_again(name, pipe, tmp_path, disk_full_for, monkeypatch):
    """A full disk at the artifact's save: one line saying where the fit is kept; once space is free,
    the rerun writes the same artifact without a training step."""
    from spm.files import DiskFullError

    eraser = ERASERS.get(name)
    free_again = disk_full_for(".safetensors")
    with pytest.raises(DiskFullError, match=r"no space left .* kept in .*\.ckpt\.pt: the rerun writes it"):
        eraser.fit(pipe, ("snoopy",), tmp_path / "full", 16, FAST[name])
    free_again()
    for optimiser in (torch.optim.Adam, torch.optim.AdamW):
        monkeypatch.setattr(optimiser, "step", lambda *a, **k: pytest.fail("the rerun trained again"))
    (kept,) = eraser.fit(pipe, ("snoopy",), tmp_path / "full", 16, FAST[name])
    monkeypatch.undo()
    (uninterrupted,) = eraser.fit(pipe, ("snoopy",), tmp_path / "free", 16, FAST[name])
    assert kept.read_bytes() == uninterrupted.read_bytes()
    assert not list((tmp_path / "full").rglob("*.ckpt.pt"))
