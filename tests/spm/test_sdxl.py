"""SDXL end to end on a tiny real StableDiffusionXLPipeline, saved and loaded back as a user's checkpoint is."""

import re

import pytest
import torch
from typer.testing import CliRunner

import spm
from spm.adapter import layer_names
from spm.cli import app
from spm.layers import MembraneLayer
from tests.spm.lora_parity import check_diffusers_loads_it_as_the_membrane_and_ft_opens_for_the_target
from tests.tiny import random_spm


KW = dict(num_inference_steps=2, output_type="np", guidance_scale=5.0)


@pytest.fixture()
def xl(tiny_sdxl_dir):
    return spm.load_pipeline(str(tiny_sdxl_dir))


def images(fn, prompt, seed=0):
    return fn(prompt, generator=torch.Generator().manual_seed(seed), **KW).images


def unet_out(pipe, prompts):
    """The UNet's prediction for `prompts`, conditioned as the SDXL pipeline conditions it at 16 px."""
    cond = spm.encode_prompts(pipe, prompts)
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    time_ids = torch.tensor([[16, 16, 0, 0, 16, 16]] * len(prompts), dtype=torch.float32)
    added = {"text_embeds": cond.pooled, "time_ids": time_ids}
    return pipe.unet(x, 500, encoder_hidden_states=cond.states, added_cond_kwargs=added).sample


def test_encode_prompts_gives_what_the_sdxl_pipeline_conditions_its_unet_on(xl, pipe):
    prompts = ["snoopy the dog", "a photo of a cat"]
    cond, ids = spm.encode_prompts(xl, prompts, return_ids=True)
    states, _, pooled, _ = xl.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert cond.states.shape == (2, 20, 16 + 24) and cond.pooled.shape == (2, 16)
    assert torch.equal(cond.states, states) and torch.equal(cond.pooled, pooled)
    assert torch.equal(ids, xl.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids)
    assert isinstance(spm.encode_prompts(pipe, prompts), torch.Tensor)  # SD 1.x callers get the states, as before


def test_the_unconditional_branch_is_the_pipelines(xl):
    """Zeros under force_zeros_for_empty_prompt (SDXL base's setting), else the empty prompt's states."""
    from spm.encoding import unconditional

    assert xl.config.force_zeros_for_empty_prompt
    zeros = unconditional(xl)
    assert not zeros.states.any() and not zeros.pooled.any() and zeros.states.shape == (1, 20, 40)
    xl.register_to_config(force_zeros_for_empty_prompt=False)
    empty = spm.encode_prompts(xl, [""])
    assert torch.equal(unconditional(xl).states, empty.states) and torch.equal(unconditional(xl).pooled, empty.pooled)


def test_the_rollout_never_clips_latents_under_an_euler_config(xl):
    """DDIM, built from a scheduler config without clip_sample (SDXL's Euler), would clip x0 to [-1, 1]."""
    from spm.train import _rollout_schedule

    assert "clip_sample" not in xl.scheduler.config
    for legacy in (False, True):
        ddim, _ = _rollout_schedule(xl, spm.TrainConfig(legacy_schedule=legacy))
        assert ddim.config.clip_sample is False


def test_layers_are_named_as_kohya_sdxl_loras_and_cover_sdxl_base():
    """SDXL base: 722 layers in its 70 transformer layers (10 each) and 11 proj_in/proj_out pairs."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    from spm.models import SDXL_UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    s = spm.SPM.init(unet, ["x"])
    assert s.family == "sdxl" and len(s.layers) == 722 and s.num_parameters == 2_659_840
    blocks = {re.match(r"(input_blocks_\d+|middle_block|output_blocks_\d+)_1_", name)[1] for name in s.layers}
    assert blocks == {f"input_blocks_{i}" for i in (4, 5, 7, 8)} | {"middle_block"} | {
        f"output_blocks_{i}" for i in range(6)
    }
    # diffusers' own SDXL loader maps each name back to the module it belongs to (block indices, then the
    # block names, as its _convert_unet_lora_key renames them)
    names = {f"lora_unet_{name}.lora_down.weight": path for name, path in layer_names(unet).items()}
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict.fromkeys(names, 0), unet.config)
    renames = {"input_blocks_": "down_blocks_", "middle_block_": "mid_block_", "output_blocks_": "up_blocks_"}
    assert {
        re.sub("|".join(renames), lambda m: renames[m[0]], key[len("lora_unet_") : -len(".lora_down.weight")])
        for key in mapped
    } == {path.replace(".", "_") for path in names.values()}
    assert names["lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_k.lora_down.weight"] == (
        "up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_k"
    )


def test_train_save_load_in_diffusers_attach_with_ft_and_generate(xl, tiny_sdxl_dir, tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs the dev extra's peft")
    config = spm.TrainConfig(iterations=2, warmup_steps=0, lr=0.05, rollout_steps=3, anchor_weight=1.0)
    trained = spm.train(xl, ["snoopy"], config=config, progress=False)
    assert trained.family == "sdxl" and all(u.abs().max() > 0 for _, u in trained.layers.values())
    path = tmp_path / "snoopy.safetensors"
    trained.save(path)
    loaded = spm.SPM.load(path)
    assert loaded.targets == ["snoopy"] and loaded.layers.keys() == trained.layers.keys()
    # plain diffusers reads the file as a kohya SDXL LoRA; Facilitated Transport on SDXL's conditioning
    attached = check_diffusers_loads_it_as_the_membrane_and_ft_opens_for_the_target(xl, tiny_sdxl_dir, path, images)
    assert images(attached, ["snoopy", "a photo of a cat"]).shape == (2, 16, 16, 3)


def test_training_conditions_the_unet_as_the_pipeline_does(xl):
    """Every UNet call of the loss gets the pooled embeddings and the time ids of the drawn size; the
    unconditional branch is the pipeline's (zeros for SDXL's force_zeros_for_empty_prompt)."""
    calls = []
    xl.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs), with_kwargs=True)
    images(xl, "snoopy")
    expected_ids = calls[0]["added_cond_kwargs"]["time_ids"][0]
    assert torch.equal(expected_ids, torch.tensor([16.0, 16, 0, 0, 16, 16]))
    calls.clear()
    config = spm.TrainConfig(iterations=1, warmup_steps=0, rollout_steps=2, num_anchors=2)
    spm.train(xl, ["snoopy"], config=config, progress=False)
    assert calls and all(torch.equal(c["added_cond_kwargs"]["time_ids"][0], expected_ids) for c in calls)
    target = spm.encode_prompts(xl, ["snoopy"])
    frozen = calls[-2]  # [c_neu, c_tar, 2 random anchors, the unconditional anchor]
    pooled, states = frozen["added_cond_kwargs"]["text_embeds"], frozen["encoder_hidden_states"]
    assert pooled.shape == (5, 16) and states.shape == (5, 20, 40)
    assert torch.equal(states[1], target.states[0]) and torch.equal(pooled[1], target.pooled[0])
    assert not states[0].any() and not pooled[0].any() and not states[4].any() and not pooled[4].any()
    assert pooled[2:4].abs().min() > 0  # random anchors span the pooled embedding too


def test_ft_compares_the_concatenated_per_token_states(xl):
    transport = spm.Transport([["snoopy"]], xl)
    prompts = ["a photo of a cat", "a dog"]
    cond = spm.encode_prompts(xl, ["snoopy", *prompts])
    flat = cond.states.flatten(1)
    cosines = torch.nn.functional.cosine_similarity(flat[1:], flat[:1])
    torch.testing.assert_close(transport(prompts)[:, 0], cosines.clamp(0, 1), rtol=1e-5, atol=1e-6)


def test_merge_and_undo_are_exact(xl):
    s = random_spm(xl.unet)
    prompts = ["snoopy the dog", "a cat"]
    base = unet_out(xl, prompts)
    attached = spm.attach(xl, s, transport=False, weights=[0.5])
    expected = unet_out(xl, prompts)
    attached.detach()
    original = {k: v.clone() for k, v in xl.unet.state_dict().items()}
    merged = spm.merge(xl, s, weights=[0.5])
    output = unet_out(xl, prompts)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(output, base)
    merged.undo()
    restored = xl.unet.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in original.items())
    assert torch.equal(unet_out(xl, prompts), base)


def test_an_sdxl_spm_under_diffusers_names_applies_as_the_kohya_named_one(xl):
    """The released SPM code's SDXL script names layers by diffusers' module paths (down_blocks_1_...)."""
    s = random_spm(xl.unet)
    paths = layer_names(xl.unet)
    released = spm.SPM(s.targets, {paths[name].replace(".", "_"): f for name, f in s.layers.items()})
    assert released.family == "sdxl" and "down_blocks_1_attentions_0_proj_in" in released.layers
    assert spm.encoding.is_sdxl(xl)
    outputs = []
    for one in (s, released):
        attached = spm.attach(xl, one, transport=False)
        outputs.append(unet_out(xl, ["snoopy the dog"]))
        attached.detach()
    assert torch.equal(outputs[0], outputs[1])
    merged = spm.merge(xl, released)
    torch.testing.assert_close(unet_out(xl, ["snoopy the dog"]), outputs[0], rtol=1e-4, atol=1e-5)
    merged.undo()


def test_spms_across_sd1_and_sdxl_are_refused_in_one_line(xl, pipe):
    for spm_for, model, message in [
        (pipe, xl, "is an SPM for SD 1.x/2.x and the model is SDXL"),
        (xl, pipe, "is an SPM for SDXL and the model is SD 1.x/2.x"),
    ]:
        s = random_spm(spm_for.unet)
        weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
        for combine in (spm.attach, spm.merge):
            with pytest.raises(spm.SPMMismatchError, match=message) as caught:
                combine(model, s)
            assert "\n" not in str(caught.value)
        assert not any(isinstance(m, MembraneLayer) for m in model.unet.modules())
        assert all(torch.equal(v, weights[k]) for k, v in model.unet.state_dict().items())


def test_inspect_reports_family_layers_and_parameters(xl, pipe, tmp_path):
    for model, family, layers, parameters in [(xl, "SDXL", 192, "9,680"), (pipe, "SD 1.x/2.x", 48, "1,408")]:
        path = tmp_path / f"{family[:2]}.safetensors"
        random_spm(model.unet).save(path)
        result = CliRunner().invoke(app, ["inspect", str(path)])
        assert result.exit_code == 0, result.output
        assert f"family:     {family}\n" in result.output and f"layers:     {layers}\n" in result.output
        assert f"parameters: {parameters}\n" in result.output
