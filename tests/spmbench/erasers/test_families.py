"""The built-in erasers on the families past SD 1.x, on tiny real pipelines: every one fits and generates on
SDXL; on SD3 and FLUX.1 those that apply do, and the others refuse in one line, before any work, at fit and at
plan."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import spm
from spmbench.erasers import BUILTIN, ERASERS
from spmbench.erasers.base import pipeline_family


KW = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np", height=16, width=16)
FAST = {
    "spm": {"iterations": 2, "lr": 1e-2, "warmup_steps": 1, "rollout_steps": 4},
    "esd-x": {"iterations": 2, "lr": 1e-2, "rollout_steps": 4},
    "esd-u": {"iterations": 2, "lr": 1e-2, "rollout_steps": 4},
    "ca": {"iterations": 2, "lr": 1e-2, "batch_size": 2, "anchor_images": 2, "sample_steps": 4},
}
REFUSED_ON_SD3 = {"esd-x", "esd-u", "ca", "uce", "rece", *(e for e in BUILTIN if e.startswith("sld-"))}


@pytest.fixture()
def xl(tiny_sdxl_dir):
    return spm.load_pipeline(str(tiny_sdxl_dir))


@pytest.fixture()
def sd3(tiny_sd3_dir):
    return spm.load_pipeline(str(tiny_sd3_dir))


@pytest.fixture()
def flux(tiny_flux_dir):
    return spm.load_pipeline(str(tiny_flux_dir))


def images(generate, seed=0, **kw):
    prompts = ["snoopy the dog", "a cat"]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return generate(prompts, generator=generators, **(KW | kw)).images


def check_fits_and_generates(name, pipe, tmp_path, component, **kw):
    """Fit (idempotent), generate a batch with the eraser applied (a change, but for 'none'), and leave the
    pipeline's weights and outputs as they were."""
    eraser = ERASERS.get(name)
    weights = {k: v.clone() for k, v in component.state_dict().items()}
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16, FAST.get(eraser.fit_key))
    assert eraser.fit(pipe, ("snoopy",), tmp_path, 16, FAST.get(eraser.fit_key)) == artifacts
    original = images(pipe, **kw)
    with eraser.apply(pipe, artifacts) as generate:
        erased = images(generate, **kw)
    assert erased.shape == original.shape == (2, 16, 16, 3) and np.isfinite(erased).all()
    if name == "none":
        np.testing.assert_array_equal(erased, original)
    else:
        assert np.abs(erased - original).max() > 1e-5  # sld-weak, on a random tiny UNet: 3e-5
    assert all(torch.equal(v, weights[k]) for k, v in component.state_dict().items())
    np.testing.assert_array_equal(images(pipe, **kw), original)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_eraser_fits_and_generates_on_sdxl(name, xl, tmp_path):
    assert pipeline_family(xl) == "sdxl" and ERASERS.get(name).family_problem("sdxl") is None
    # SLD's presets guide from a warm-up step on: well past every preset's (weak: 15)
    check_fits_and_generates(name, xl, tmp_path, xl.unet, **({"num_inference_steps": 30} if "sld" in name else {}))


REFUSED = {"sd3": REFUSED_ON_SD3, "flux": REFUSED_ON_SD3 | {"negprompt"}}  # negprompt, SLD: CFG, which FLUX.1 lacks


@pytest.mark.parametrize(
    ("family", "name"), [(f, n) for f, refused in REFUSED.items() for n in sorted(set(BUILTIN) - refused)]
)
def test_the_erasers_that_apply_to_a_transformer_family_fit_and_generate_on_it(family, name, request, tmp_path):
    pipe = request.getfixturevalue(family)
    assert pipeline_family(pipe) == family
    check_fits_and_generates(name, pipe, tmp_path, pipe.transformer)


@pytest.mark.parametrize(("family", "name"), [(f, n) for f, refused in REFUSED.items() for n in sorted(refused)])
def test_the_others_refuse_a_transformer_family_in_one_line_before_any_work(family, name, request, tmp_path):
    eraser = ERASERS.get(name)
    with pytest.raises(ValueError, match=rf"^{name} does not support {family}: \S") as caught:
        eraser.fit(request.getfixturevalue(family), ("snoopy",), tmp_path, 16, FAST.get(eraser.fit_key))
    assert "\n" not in str(caught.value) and str(caught.value) == eraser.family_problem(family)
    assert not list(tmp_path.iterdir())
    assert all(eraser.family_problem(f) is None for f in ("toy", "sd1", "sd2", "sdxl"))


def test_a_run_refuses_an_eraser_on_a_family_it_does_not_support_at_plan_time(tmp_path):
    from spmbench.cli import app

    args = ["run", "--app", "real-concept", "--models", "sdxl-base,sd3-medium", "--erasers", "none,spm,uce,esd-x",
            "--out", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: uce does not support sd3: its closed-form edit targets a UNet's")
    assert line.endswith("(sd3-medium); leave uce out of --erasers or sd3-medium out of --models")
    assert not list((tmp_path / "runs").rglob("*"))  # refused before any work


def test_the_finetuned_erasers_condition_every_unet_call_as_the_sdxl_pipeline(xl):
    """Both encoders' states, the pooled embedding and the added time ids of the fitted size; "" is the
    pipeline's unconditional branch (zeros for SDXL base); the DDIM rollout never clips latents."""
    from spmbench.erasers.finetune import conditioning, ddim_for, predict, unconditional

    cond = conditioning(xl, ["snoopy"])
    states, _, pooled, _ = xl.encode_prompt(["snoopy"], device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(cond.states, states) and torch.equal(cond.pooled, pooled)
    empty = unconditional(xl)
    assert xl.config.force_zeros_for_empty_prompt and not empty.states.any() and not empty.pooled.any()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]])
    direct = xl.unet(
        x, 500, encoder_hidden_states=states, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
    )
    torch.testing.assert_close(predict(xl.unet, x, torch.tensor(500), cond, 16), direct.sample)
    assert "clip_sample" not in xl.scheduler.config and ddim_for(xl).config.clip_sample is False


def test_esd_u_leaves_sdxls_added_embedding_alone(xl, tmp_path):
    eraser = ERASERS.get("esd-u")
    (path,) = eraser.fit(xl, ("snoopy",), tmp_path, 16, FAST["esd-u"])
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        trained = set(f.keys())
    assert trained and not any(k.startswith(("add_embedding.", "time_embedding.")) or ".attn2." in k for k in trained)
    assert any(k.startswith("down_blocks.") for k in trained)


def test_uce_edits_sdxls_cross_attention_on_the_concatenated_states(xl, tmp_path):
    from spmbench.erasers.uce import aligned_embeddings, cross_attention_projections

    layers = cross_attention_projections(xl.unet)
    # 17 transformer blocks: down 2 x 1 + 2 x 2, mid 2, up 3 x 2 + 3 x 1
    assert len(layers) == 2 * 17 and all(layer.in_features == 16 + 24 for layer in layers.values())
    rows, guide = aligned_embeddings(xl, "a photo of snoopy", "")
    states, ids = spm.encode_prompts(xl, "a photo of snoopy", return_ids=True)
    end = int((ids[0] == xl.tokenizer.eos_token_id).nonzero()[0])
    torch.testing.assert_close(rows, states.states[0, end - 1 :].float())  # last word, end token, padding
    assert guide.shape == rows.shape == (20 - end + 1, 40)
    before = {k: v.clone() for k, v in xl.unet.state_dict().items()}
    for name in ("uce", "rece"):
        with ERASERS.get(name).apply(xl, ERASERS.get(name).fit(xl, ("snoopy",), tmp_path, 16)):
            changed = {k for k, v in xl.unet.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {f"{n}.weight" for n in layers}


def test_sld_on_sdxl_guides_with_the_safety_prompts_pooled_embedding_and_the_pipelines_time_ids(xl, tmp_path):
    from spmbench.erasers.sld import PRESETS

    preset, eraser = PRESETS["max"], ERASERS.get("sld-max")  # no warm-up: the first step is guided
    artifacts = eraser.fit(xl, ("snoopy",), tmp_path, 16)
    safety, prompt = spm.encode_prompts(xl, ["snoopy"]), spm.encode_prompts(xl, ["a photo of a dog"])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16], [32.0, 32, 0, 0, 16, 16]])  # the halves' own ids differ
    both = spm.Conditioning.cat([spm.Conditioning(torch.zeros_like(prompt.states), torch.zeros_like(prompt.pooled)),
                                 prompt])  # fmt: skip

    def unet(states, pooled, ids, latents):
        added = {"text_embeds": pooled, "time_ids": ids}
        return xl.unet(latents, 500, encoder_hidden_states=states, added_cond_kwargs=added).sample

    with torch.no_grad():
        e_u, e_p = unet(both.states, both.pooled, time_ids, x).chunk(2)
        e_s = unet(safety.states, safety.pooled, time_ids[1:], x[1:])
        scale = torch.clamp((e_p - e_s).abs() * preset.sld_scale, max=1.0)
        scale = torch.where(e_p - e_s >= preset.threshold, torch.zeros_like(scale), scale)
        with eraser.apply(xl, artifacts) as generate:
            generate.guidance.reset()
            generate.guidance.sampling = True  # as generate sets it around the pipeline's call: the hook guides
            out = unet(both.states, both.pooled, time_ids, x)
    torch.testing.assert_close(out[:1], e_u)
    torch.testing.assert_close(out[1:], e_p - (e_s - e_u) * scale, rtol=1e-5, atol=1e-6)


def test_spmbench_runs_a_real_application_on_an_sdxl_model(run_real_app, tmp_path):
    """One eraser of each kind (every one fits and generates on SDXL above): a tiny SDXL registered as a real
    model, a tiny CLIP judge, the published prompts."""
    from tests.spmbench.judges.conftest import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    erasers = ["none", "spm-rel", "esd-x", "ca", "rece", "sld-medium", "negprompt"]
    result, runs, reports = run_real_app("real-concept", "--clip-model", str(clip), "--fit-seeds", "1", limit=1,
                                         erasers=",".join(erasers), model="tiny-xl")  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = [json.loads(p.read_text()) for p in runs.glob("cells/tiny-xl/*/*/result.json")]
    assert {r["eraser"] for r in stored} == set(erasers) and all(r["rates"] for r in stored)
    assert all(f"| {e} |" in (reports / "real-concept.md").read_text() for e in erasers if e != "none")


@pytest.mark.parametrize("name", ["negprompt", "sld-medium"])
def test_one_prompt_erasers_refuse_targets_their_text_encoder_would_cut(name, tiny_dir, xl, tmp_path):
    """negprompt and SLD put every target into one prompt: past the text encoder's context the last targets
    would be dropped unsaid, so the fit refuses in one line; a list that fits is fitted whole."""
    eraser = ERASERS.get(name)
    for pipe in (spm.load_pipeline(str(tiny_dir)), xl):
        many = tuple(f"concept number {i}" for i in range(pipe.tokenizer.model_max_length))
        with pytest.raises(ValueError, match=rf"^{name} puts the {len(many)} targets into one prompt of \d+ tokens, "
                           rf"over the {pipe.tokenizer.model_max_length} its text encoder reads") as err:  # fmt: skip
            eraser.fit(pipe, many, tmp_path / "many", 16, None)
        assert "\n" not in str(err.value) and not list((tmp_path / "many").rglob("*.json"))  # no artifact left
        artifacts = eraser.fit(pipe, ("snoopy", "a cat"), tmp_path / pipeline_family(pipe), 16, None)
        saved = json.loads(artifacts[0].read_text())
        assert (saved.get("negative_prompt") or saved["safety_concept"]) == "snoopy, a cat"
