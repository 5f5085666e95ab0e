"""FLUX.1 end to end on a tiny real FluxPipeline (double- and single-stream MMDiT, CLIP-L pooled + T5, flow
matching shifted by image size, guidance embedded), saved and loaded back as a user's checkpoint is."""

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


SIZE = 16  # px: 8 x 8 latents (the tiny VAE halves), packed into 4 x 4 tokens
KW = dict(num_inference_steps=2, output_type="np", height=SIZE, width=SIZE, guidance_scale=3.0)
CLIP_TOKENS, T5_TOKENS = 20, 512  # the tiny CLIP tokenizer's context; the Flux pipeline's T5 length


@pytest.fixture()
def flux(tiny_flux_dir):
    return spm.load_pipeline(str(tiny_flux_dir))


def images(fn, prompt, seed=0):
    return fn(prompt, generator=torch.Generator().manual_seed(seed), **KW).images


def captured_call(pipe, prompt="snoopy the dog", steps=2):
    """The transformer's inputs and output at each step of one pipeline call."""
    calls = []
    handle = pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((kwargs, out[0])), with_kwargs=True
    )
    try:
        pipe(prompt, generator=torch.Generator().manual_seed(0), **(KW | {"num_inference_steps": steps}))
    finally:
        handle.remove()
    return calls


def test_encode_prompts_gives_what_the_flux_pipeline_conditions_on(flux):
    prompts = ["snoopy the dog", "a photo of a cat"]
    cond, ids = spm.encode_prompts(flux, prompts, return_ids=True)
    with torch.no_grad():
        states, pooled, _ = flux.encode_prompt(prompts, None)
    assert cond.states.shape == (2, T5_TOKENS, 48) and cond.pooled.shape == (2, 16)  # T5's states, CLIP's pooled
    assert torch.equal(cond.states, states) and torch.equal(cond.pooled, pooled)
    assert torch.equal(ids, flux.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids)


def test_layers_are_both_streams_linears_and_cover_flux_dev():
    """FLUX.1 [dev]: 19 double-stream blocks of 12 layers (attention of both streams, both feed-forwards) and 38
    single-stream blocks of 5 (to_q/k/v, proj_mlp, proj_out): 418 layers; rank 1 adds in + out per layer:
    19 x (8 x 6144 + 4 x 15360) + 38 x (3 x 6144 + 15360 + 18432) = 4,085,760 parameters. No AdaLayerNorm
    modulation layer, nothing outside the blocks."""
    from diffusers import FluxTransformer2DModel

    from spm.models import FLUX_TRANSFORMER_CONFIG

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER_CONFIG)
    s = spm.SPM.init(transformer, ["x"])
    assert s.family == "flux" and len(s.layers) == 418 and s.num_parameters == 4_085_760
    double = {n.removeprefix("transformer_blocks.0.") for n in s.layers if n.startswith("transformer_blocks.0.")}
    assert double == {
        *(f"attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")),
        "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    }  # fmt: skip
    single = {n.removeprefix("single_transformer_blocks.37.") for n in s.layers if ".37." in n}
    assert single == {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"}
    assert not any(".norm" in name for name in s.layers)


def test_train_save_load_in_diffusers_attach_with_ft_and_generate(flux, tiny_flux_dir, tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs the dev extra's peft")
    config = spm.TrainConfig(iterations=2, warmup_steps=0, lr=0.05, rollout_steps=3, anchor_weight=1.0,
                             resolutions=(SIZE,))  # fmt: skip
    trained = spm.train(flux, ["snoopy"], config=config, progress=False)
    assert trained.family == "flux" and all(u.abs().max() > 0 for _, u in trained.layers.values())
    path = tmp_path / "snoopy.safetensors"
    trained.save(path)
    with safe_open(str(path), framework="pt") as f:  # diffusers' own LoRA layout, as its Flux loader reads
        keys = set(f.keys())
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight" in keys and len(keys) == 2 * 34
    loaded = spm.SPM.load(path)
    assert loaded.targets == ["snoopy"] and loaded.family == "flux" and loaded.layers.keys() == trained.layers.keys()
    attached = check_diffusers_loads_it_as_the_membrane_and_ft_opens_for_the_target(flux, tiny_flux_dir, path, images)
    assert images(attached, ["snoopy", "a photo of a cat"]).shape == (2, SIZE, SIZE, 3)


def test_the_rollout_takes_the_timesteps_the_pipeline_takes_at_that_size(flux):
    """FLUX.1 [dev]'s scheduler shifts its sigmas by the image's token count: the rollout's are the pipeline's."""
    from spm.train import FlowRollout

    taken = torch.stack([kwargs["timestep"][0] for kwargs, _ in captured_call(flux, steps=3)]) * 1000
    rollout = FlowRollout(flux, 3, image_tokens=(SIZE // 4) ** 2)
    torch.testing.assert_close(rollout.timesteps, taken)
    assert rollout.sigmas[0] == 1 and rollout.sigmas[-1] == 0
    with pytest.raises(ValueError, match="train at one resolution"):
        FlowRollout(flux, 3)


def test_the_training_calls_the_transformer_as_the_pipeline_does(flux):
    """FluxCall on unpacked latents gives what the pipeline's own call gives: the same packing, ids, timestep scale
    and embedded guidance."""
    from diffusers import FluxPipeline

    from spm.train import FluxCall

    (kwargs, out), _ = captured_call(flux)
    scale = flux.vae_scale_factor
    x = FluxPipeline._unpack_latents(kwargs["hidden_states"], SIZE, SIZE, scale)
    cond = spm.encode_prompts(flux, ["snoopy the dog"])
    with torch.no_grad():
        ours = FluxCall(flux, guidance=3.0)(x, kwargs["timestep"][0] * 1000, cond)
    torch.testing.assert_close(ours, FluxPipeline._unpack_latents(out, SIZE, SIZE, scale))
    assert torch.equal(kwargs["guidance"], torch.full((1,), 3.0))


def test_training_loss_is_the_erasing_loss_on_velocities_without_cfg(flux):
    """One step: the rollout is conditional only (FLUX.1 samples without CFG: one call per step, the target's);
    the membrane's velocity for the target is pulled to the frozen model's for "" (eta = 1), anchors to theirs."""
    calls, logs = [], {}
    flux.transformer.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((kwargs, out[0])), with_kwargs=True
    )
    config = spm.TrainConfig(iterations=1, warmup_steps=0, rollout_steps=4, num_anchors=2, anchor_weight=3.0,
                             resolutions=(SIZE,), rollout_guidance=2.5)  # fmt: skip
    spm.train(flux, ["snoopy"], config=config, progress=False, callback=lambda step, values: logs.update(values))
    rollout, (frozen_in, frozen), (pred_in, pred) = calls[:-2], calls[-2], calls[-1]
    target, empty = spm.encode_prompts(flux, ["snoopy"]), spm.encode_prompts(flux, [""])
    assert all(torch.equal(k["encoder_hidden_states"], target.states) for k, _ in rollout)  # no unconditional half
    states = frozen_in["encoder_hidden_states"]
    assert states.shape == (5, T5_TOKENS, 48)  # "", target, 2 anchors, ""
    assert torch.equal(states[1], target.states[0]) and torch.equal(states[0], empty.states[0])
    assert torch.equal(frozen_in["guidance"], torch.full((5,), 2.5))
    assert torch.equal(pred_in["encoder_hidden_states"], states[1:])  # the membrane's: target, anchors
    unpack = lambda v: v.view(len(v), 4, 4, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(len(v), 4, 8, 8)  # noqa: E731
    frozen, pred = unpack(frozen), unpack(pred)
    e_neu, e_tar = frozen[:1], frozen[1:2]
    erase = F.mse_loss(pred[:1].detach(), e_neu - (e_tar - e_neu))
    assert logs["erase"] == pytest.approx(erase.item(), rel=1e-5)
    assert logs["anchor"] == pytest.approx(F.mse_loss(pred[1:].detach(), frozen[2:]).item(), rel=1e-5)


def test_ft_compares_clip_l_states_and_t5_does_not_move_gamma(flux):
    """FLUX.1 reads CLIP-L only as a pooled vector: s_cos is on CLIP-L's last hidden states (the paper's definition,
    on SD 1.x's encoder), and T5 does not move gamma at all."""
    transport = spm.Transport([["snoopy"]], flux)
    prompts = ["a photo of a cat", "a dog"]
    tokens = flux.tokenizer(["snoopy", *prompts], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        clip = flux.text_encoder(tokens)[0].flatten(1)
    gamma = transport(prompts)[:, 0]
    torch.testing.assert_close(gamma, F.cosine_similarity(clip[1:], clip[:1]).clamp(0, 1), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in flux.text_encoder_2.parameters():
            p.mul_(1.5)
    assert torch.equal(spm.Transport([["snoopy"]], flux)(prompts)[:, 0], gamma)


def test_merge_and_undo_are_exact(flux):
    s = random_spm(flux.transformer)
    base = images(flux, "snoopy the dog")
    attached = spm.attach(flux, s, transport=False, weights=[0.5])
    expected = images(attached, "snoopy the dog")
    attached.detach()
    original = {k: v.clone() for k, v in flux.transformer.state_dict().items()}
    merged = spm.merge(flux, s, weights=[0.5])
    output = images(flux, "snoopy the dog")
    assert abs(output - expected).max() < 1e-4 and abs(output - base).max() > 1e-4
    merged.undo()
    assert all(torch.equal(flux.transformer.state_dict()[k], v) for k, v in original.items())


def test_spms_across_families_are_refused_and_inspect_names_flux(flux, tiny_sd3_dir, tmp_path):
    sd3 = spm.load_pipeline(str(tiny_sd3_dir))
    for spm_for, model, message in [
        (flux.transformer, sd3, "is an SPM for FLUX.1 and the model is SD3"),
        (sd3.transformer, flux, "is an SPM for SD3 and the model is FLUX.1"),
    ]:
        with pytest.raises(spm.SPMMismatchError, match=message):
            spm.attach(model, random_spm(spm_for))
        assert not any(isinstance(m, MembraneLayer) for m in spm.models.denoiser(model).modules())
    path = tmp_path / "flux.safetensors"
    random_spm(flux.transformer).save(path)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "family:     FLUX.1\n" in result.output and "layers:     34\n" in result.output


def test_a_dev_spm_transfers_to_a_schnell_like_model_and_trains_there_without_guidance(flux, tmp_path):
    """[schnell]: the same blocks without the guidance embedding: a [dev] SPM attaches unchanged, and training
    calls it with no guidance."""
    from diffusers import FluxPipeline

    from tests.tiny import tiny_flux_components

    FluxPipeline(**tiny_flux_components(seed=1, guidance_embeds=False)).save_pretrained(tmp_path / "schnell")
    schnell = spm.load_pipeline(str(tmp_path / "schnell"))
    attached = spm.attach(schnell, random_spm(flux.transformer))
    assert images(attached, ["snoopy", "a cat"]).shape == (2, SIZE, SIZE, 3)
    attached.detach()
    calls = []
    schnell.transformer.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    config = spm.TrainConfig(iterations=1, warmup_steps=0, rollout_steps=3, resolutions=(SIZE,))
    assert spm.train(schnell, ["snoopy"], config=config, progress=False).family == "flux"
    assert calls and all(k["guidance"] is None for k in calls)


def test_an_undistilled_schedule_is_the_pipelines_too_and_bad_sizes_are_refused(flux):
    """[schnell]'s scheduler (no shift by size, shift 1) on the pipeline's own sigma grid; a size FLUX.1 cannot
    pack (not a multiple of 2 x the VAE's factor) is refused in one line before any training."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from spm.train import FlowRollout

    flux.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    taken = torch.stack([kwargs["timestep"][0] for kwargs, _ in captured_call(flux, steps=4)]) * 1000
    torch.testing.assert_close(FlowRollout(flux, 4).timesteps, taken)
    with pytest.raises(ValueError, match=r"^resolution 18 px: FLUX.1 trains at multiples of 4 px; give e.g. 16$"):
        spm.train(flux, ["snoopy"], config=spm.TrainConfig(iterations=1, resolutions=(18,)), progress=False)


def test_gradient_checkpointing_trains_the_same_spm(flux):
    config = dict(iterations=2, warmup_steps=0, lr=0.05, rollout_steps=3, resolutions=(SIZE,))
    plain = spm.train(flux, ["snoopy"], config=spm.TrainConfig(**config), progress=False)
    saved = spm.train(flux, ["snoopy"], config=spm.TrainConfig(**config, gradient_checkpointing=True), progress=False)
    assert not flux.transformer.gradient_checkpointing  # switched off again
    for name, (down, up) in plain.layers.items():
        torch.testing.assert_close(saved.layers[name][0], down)
        torch.testing.assert_close(saved.layers[name][1], up, rtol=1e-4, atol=1e-6)


def test_a_target_past_clips_context_or_in_the_t5_prompt_still_opens_the_membrane(flux):
    """T5 reads 512 tokens, CLIP-L 20 here: s_tok counts the whole prompt; the pipeline's prompt_2 (T5's own)
    gets its gamma too, and the call takes the larger."""
    attached = spm.attach(flux, random_spm(flux.transformer))
    long = "a photo of a cat " * 6 + "snoopy"  # snoopy past the tiny CLIP's 20 tokens
    assert attached.permeability([long])[0, 0] == 1
    seen = []
    flux.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(attached.state.gamma.clone()), with_kwargs=True
    )
    attached(["a photo of a cat"], prompt_2="snoopy", generator=torch.Generator().manual_seed(0), **KW)
    assert seen and all(g[0, 0] == 1 for g in seen)
    assert attached.permeability(["a photo of a cat"])[0, 0] < 1
