"""SD3 end to end on a tiny real StableDiffusion3Pipeline (MMDiT, CLIP-L/G + T5, flow matching), saved and
loaded back as a user's checkpoint is."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from typer.testing import CliRunner

import spm
from spm.cli import app
from spm.layers import MembraneLayer
from tests.spm.lora_parity import check_diffusers_loads_it_as_the_membrane_and_ft_opens_for_the_target
from tests.tiny import random_spm


KW = dict(num_inference_steps=2, output_type="np", guidance_scale=5.0)
CLIP_TOKENS, CLIP_WIDTH = 20, 16 + 24  # the tiny CLIP tokenizers' context, and both CLIP encoders' widths


@pytest.fixture()
def sd3(tiny_sd3_dir):
    return spm.load_pipeline(str(tiny_sd3_dir))


def images(fn, prompt, seed=0):
    return fn(prompt, generator=torch.Generator().manual_seed(seed), **KW).images


def velocity(pipe, prompts):
    """The transformer's prediction for `prompts`, conditioned as the SD3 pipeline conditions it."""
    cond = spm.encode_prompts(pipe, prompts)
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((len(prompts),), 500.0)
    return pipe.transformer(
        x, encoder_hidden_states=cond.states, pooled_projections=cond.pooled, timestep=t, return_dict=False
    )[0]


def test_encode_prompts_gives_what_the_sd3_pipeline_conditions_on(sd3):
    prompts = ["snoopy the dog", "a photo of a cat"]
    cond, ids = spm.encode_prompts(sd3, prompts, return_ids=True)
    with torch.no_grad():  # as the pipeline's __call__ runs it (T5 takes other kernels under autograd)
        states, _, pooled, _ = sd3.encode_prompt(prompts, None, None, do_classifier_free_guidance=False)
    # 20 CLIP positions (both encoders side by side, zero-padded to T5's 48 channels), then T5's 256
    assert cond.states.shape == (2, CLIP_TOKENS + 256, 48) and cond.pooled.shape == (2, 32)
    assert torch.equal(cond.states, states) and torch.equal(cond.pooled, pooled)
    assert not cond.states[:, :CLIP_TOKENS, CLIP_WIDTH:].any()
    assert torch.equal(ids, sd3.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids)


def test_layers_are_the_joint_blocks_attention_and_feed_forward_linears_and_cover_sd3_medium():
    """SD3 medium: 23 joint blocks of 12 layers, the last (context_pre_only) of 8 (no to_add_out, ff_context, nor
    add_q_proj, whose output nothing reads): 284 layers, 1,305,600 parameters; no AdaLayerNorm modulation layer,
    nothing outside the blocks."""
    from diffusers import SD3Transformer2DModel

    from spm.models import SD3_TRANSFORMER_CONFIG

    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**SD3_TRANSFORMER_CONFIG)
    s = spm.SPM.init(transformer, ["x"])
    assert s.family == "sd3" and len(s.layers) == 284 and s.num_parameters == 1_305_600
    first = {
        name.removeprefix("transformer_blocks.0.") for name in s.layers if name.startswith("transformer_blocks.0.")
    }
    assert first == {
        *(f"attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")),
        "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    }  # fmt: skip
    last = {name for name in s.layers if name.startswith("transformer_blocks.23.")}
    assert len(last) == 8 and not any("to_add_out" in n or "ff_context" in n or "add_q_proj" in n for n in last)
    assert not any(".norm" in name for name in s.layers)


def test_train_save_load_in_diffusers_attach_with_ft_and_generate(sd3, tiny_sd3_dir, tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs the dev extra's peft")
    config = spm.TrainConfig(iterations=2, warmup_steps=0, lr=0.05, rollout_steps=3, anchor_weight=1.0)
    trained = spm.train(sd3, ["snoopy"], config=config, progress=False)
    assert trained.family == "sd3" and all(u.abs().max() > 0 for _, u in trained.layers.values())
    path = tmp_path / "snoopy.safetensors"
    trained.save(path)
    with safe_open(str(path), framework="pt") as f:  # diffusers' own LoRA layout, as its SD3 loader reads
        keys = set(f.keys())
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys and len(keys) == 2 * 20
    assert all(k.startswith("transformer.") and "lora" in k for k in keys)
    loaded = spm.SPM.load(path)
    assert loaded.targets == ["snoopy"] and loaded.layers.keys() == trained.layers.keys() and loaded.alpha == 1.0
    attached = check_diffusers_loads_it_as_the_membrane_and_ft_opens_for_the_target(sd3, tiny_sd3_dir, path, images)
    assert images(attached, ["snoopy", "a photo of a cat"]).shape == (2, 16, 16, 3)


def test_the_rollout_steps_as_the_flow_matching_scheduler(sd3):
    """The rollout's Euler step and timesteps are the pipeline's FlowMatchEulerDiscreteScheduler's (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from spm.train import FlowRollout

    rollout = FlowRollout(sd3, 5)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler.config)
    scheduler.set_timesteps(5)
    assert torch.equal(rollout.timesteps, scheduler.timesteps) and rollout.sigmas[0] == 1 and rollout.sigmas[-1] == 0
    torch.testing.assert_close(rollout.timesteps, rollout.sigmas[:-1] * 1000)
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    ours = theirs = x
    for i, t in enumerate(scheduler.timesteps[:3]):
        ours, theirs = rollout.step(v, i, ours), scheduler.step(v, t, theirs).prev_sample
    torch.testing.assert_close(ours, theirs)


def test_training_loss_is_the_erasing_loss_on_velocities(sd3):
    """One step: the membrane's velocity for the target is pulled to the frozen model's for "" (eta = 1:
    v("") - (v(target) - v(""))), anchors to the frozen ones; the model is queried at a rollout timestep
    with the text tokens and pooled embeddings the pipeline gives it."""
    from spm.train import FlowRollout

    calls, logs = [], {}
    sd3.transformer.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((kwargs, out[0])), with_kwargs=True
    )
    config = spm.TrainConfig(iterations=1, warmup_steps=0, rollout_steps=4, num_anchors=2, anchor_weight=3.0)
    spm.train(sd3, ["snoopy"], config=config, progress=False, callback=lambda step, values: logs.update(values))
    (frozen_in, frozen), (pred_in, pred) = calls[-2], calls[-1]
    target, empty = spm.encode_prompts(sd3, ["snoopy"]), spm.encode_prompts(sd3, [""])
    states, pooled = frozen_in["encoder_hidden_states"], frozen_in["pooled_projections"]
    assert states.shape == (5, CLIP_TOKENS + 256, 48) and pooled.shape == (5, 32)  # "", target, 2 anchors, ""
    assert torch.equal(states[1], target.states[0]) and torch.equal(pooled[1], target.pooled[0])
    assert torch.equal(states[0], empty.states[0]) and torch.equal(states[4], empty.states[0])
    assert torch.equal(pred_in["encoder_hidden_states"], states[1:])
    t = frozen_in["timestep"]
    assert t.shape == (5,) and t[0] in FlowRollout(sd3, 4).timesteps[1:] and torch.equal(pred_in["timestep"], t[:4])
    e_neu, e_tar = frozen[:1], frozen[1:2]
    erase = F.mse_loss(pred[:1].detach(), e_neu - (e_tar - e_neu))
    assert logs["erase"] == pytest.approx(erase.item(), rel=1e-5)
    assert logs["anchor"] == pytest.approx(F.mse_loss(pred[1:].detach(), frozen[2:]).item(), rel=1e-5)


def test_ft_compares_the_clip_part_of_the_text_tokens_only(sd3):
    """s_cos on the CLIP positions and channels: T5's padded 256 positions (and the zero columns) are left out,
    so T5 does not move gamma at all."""
    transport = spm.Transport([["snoopy"]], sd3)
    prompts = ["a photo of a cat", "a dog"]
    clip = spm.encode_prompts(sd3, ["snoopy", *prompts]).states[:, :CLIP_TOKENS, :CLIP_WIDTH].flatten(1)
    cosines = F.cosine_similarity(clip[1:], clip[:1])
    gamma = transport(prompts)[:, 0]
    torch.testing.assert_close(gamma, cosines.clamp(0, 1), rtol=1e-5, atol=1e-6)
    full = spm.encode_prompts(sd3, ["snoopy", *prompts]).states.flatten(1)
    assert not torch.allclose(F.cosine_similarity(full[1:], full[:1]), cosines)  # T5 would have changed it
    with torch.no_grad():
        for p in sd3.text_encoder_3.parameters():
            p.mul_(1.5)
    assert torch.equal(spm.Transport([["snoopy"]], sd3)(prompts)[:, 0], gamma)
    # T5 reads 256 tokens, the tiny CLIP 20: a target word past CLIP's context still opens the membrane (s_tok)
    assert transport(["a photo of a cat " * 6 + "snoopy"])[0, 0] == 1


def test_merge_and_undo_are_exact(sd3):
    s = random_spm(sd3.transformer)
    prompts = ["snoopy the dog", "a cat"]
    base = velocity(sd3, prompts)
    attached = spm.attach(sd3, s, transport=False, weights=[0.5])
    expected = velocity(sd3, prompts)
    attached.detach()
    original = {k: v.clone() for k, v in sd3.transformer.state_dict().items()}
    merged = spm.merge(sd3, s, weights=[0.5])
    output = velocity(sd3, prompts)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(output, base)
    merged.undo()
    restored = sd3.transformer.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in original.items())
    assert torch.equal(velocity(sd3, prompts), base)


def test_spms_across_families_are_refused_in_one_line(sd3, pipe, tiny_sdxl_dir, tmp_path):
    xl = spm.load_pipeline(str(tiny_sdxl_dir))
    for spm_for, model, message in [
        (pipe.unet, sd3, "is an SPM for SD 1.x/2.x and the model is SD3"),
        (xl.unet, sd3, "is an SPM for SDXL and the model is SD3"),
        (sd3.transformer, pipe, "is an SPM for SD3 and the model is SD 1.x/2.x"),
        (sd3.transformer, xl, "is an SPM for SD3 and the model is SDXL"),
    ]:
        s = random_spm(spm_for)
        target = spm.models.denoiser(model)
        weights = {k: v.clone() for k, v in target.state_dict().items()}
        for combine in (spm.attach, spm.merge):
            with pytest.raises(spm.SPMMismatchError, match=message) as caught:
                combine(model, s)
            assert "\n" not in str(caught.value)
        assert not any(isinstance(m, MembraneLayer) for m in target.modules())
        assert all(torch.equal(v, weights[k]) for k, v in target.state_dict().items())


def test_inspect_reports_family_layers_and_parameters(sd3, tmp_path):
    path = tmp_path / "sd3.safetensors"
    random_spm(sd3.transformer).save(path)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "family:     SD3\n" in result.output and "layers:     20\n" in result.output
    assert "parameters: 464\n" in result.output


def test_an_sd3_spm_with_alpha_not_rank_has_the_same_weights_in_spm_and_diffusers(sd3, tiny_sd3_dir, tmp_path):
    """diffusers' SD3 loader reads no alpha (alpha = rank): the file folds alpha / rank into lora_B."""
    assert not spm.encoding.is_sdxl(sd3)  # it has two CLIP encoders too
    s = spm.SPM.init(sd3.transformer, ["snoopy"], rank=2, alpha=0.25, seed=0)
    gen = torch.Generator().manual_seed(1)
    s.layers = {n: (d, 0.5 * torch.randn(u.shape, generator=gen)) for n, (d, u) in s.layers.items()}
    path = tmp_path / "alpha.safetensors"
    s.save(path)
    loaded = spm.SPM.load(path)
    prompts = ["snoopy the dog"]
    merged = spm.merge(sd3, s)
    expected = velocity(sd3, prompts)
    merged.undo()
    merged = spm.merge(sd3, loaded)
    torch.testing.assert_close(velocity(sd3, prompts), expected, rtol=1e-5, atol=1e-6)
    merged.undo()
    assert not torch.allclose(velocity(sd3, prompts), expected)  # the SPM changes the output
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs the dev extra's peft")
    plain = spm.load_pipeline(str(tiny_sd3_dir))
    plain.load_lora_weights(str(path))
    torch.testing.assert_close(velocity(plain, prompts), expected, rtol=1e-4, atol=1e-5)
