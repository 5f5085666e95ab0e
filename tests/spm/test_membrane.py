import pytest
import torch

import spm
from spm.layers import MembraneLayer
from tests.tiny import random_spm, save_tiny_pipeline


KW = dict(num_inference_steps=3, output_type="np", guidance_scale=5.0)


def images(fn, prompt, seed=0, **kw):
    return fn(prompt, generator=torch.Generator().manual_seed(seed), **KW, **kw).images


def unet_out(pipe, prompts, seed=0):
    cond = spm.encode_prompts(pipe, prompts)
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return pipe.unet(x, 500, encoder_hidden_states=cond).sample


def test_fresh_spm_changes_nothing_and_detach_restores(pipe):
    before = unet_out(pipe, ["snoopy the dog"])
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    attached = spm.attach(pipe, spm.SPM.init(pipe.unet, ["snoopy"]))
    # 4 transformer blocks (down 1, mid 1, up 2) x 12 layers each
    assert sum(isinstance(m, MembraneLayer) for m in pipe.unet.modules()) == 48
    torch.testing.assert_close(unet_out(pipe, ["snoopy the dog"]), before, rtol=0, atol=0)
    attached.detach()
    assert not any(isinstance(m, MembraneLayer) for m in pipe.unet.modules())
    after = pipe.unet.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_per_sample_gamma_in_a_batch_equals_one_prompt_at_a_time(pipe):
    attached = spm.attach(pipe, [random_spm(pipe.unet, ["snoopy"]), random_spm(pipe.unet, ["mickey"], seed=1)])
    prompts = ["snoopy the dog", "a photo of a cat", "mickey the mouse"]
    gamma = attached.permeability(prompts)
    assert gamma.shape == (3, 2) and gamma[0, 0] == 1 and gamma[2, 1] == 1 and gamma[1].max() < 1
    with attached.permeable(gamma):
        batch = unet_out(pipe, prompts)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for i, p in enumerate(prompts):
        with attached.permeable(gamma[i : i + 1]):
            single = pipe.unet(x[i : i + 1], 500, encoder_hidden_states=spm.encode_prompts(pipe, [p])).sample
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-4, atol=1e-5)
    with attached.permeable(torch.ones(1, 2)):
        assert not torch.allclose(unet_out(pipe, prompts), batch)


def test_gamma_reaches_each_row_and_its_negative_branch(pipe):
    """A UNet batch [uncond; cond] of 2 prompts: each row must see its own prompt's gamma."""
    s = random_spm(pipe.unet)
    attached = spm.attach(pipe, s, transport=False)
    seen = []
    layer = next(iter(attached.layers.values()))
    layer.register_forward_pre_hook(
        lambda m, args: seen.append(m.state.for_batch(args[0].shape[0], 1, "cpu", torch.float32))
    )
    gamma = torch.tensor([[0.25], [0.75]])
    with attached.permeable(gamma):
        pipe(["a", "b"], generator=torch.Generator().manual_seed(0), **KW)
    assert seen and all(torch.equal(g[:, 0], torch.tensor([0.25, 0.75, 0.25, 0.75])) for g in seen)


def test_transport_off_is_fixed_gamma_and_weights_scale_it(pipe):
    attached = spm.attach(pipe, random_spm(pipe.unet), transport=False, weights=[0.5])
    assert torch.equal(attached.permeability(["anything", "snoopy"]), torch.tensor([[0.5], [0.5]]))


def test_merge_matches_attach_without_transport_and_undo_is_exact(pipe):
    spms = [random_spm(pipe.unet, ["snoopy"]), random_spm(pipe.unet, ["mickey"], seed=1)]
    attached = spm.attach(pipe, spms, transport=False, weights=[1.0, 0.5])
    expected = unet_out(pipe, ["snoopy the dog", "a cat"])
    attached.detach()
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    merged = spm.merge(pipe, spms, weights=[1.0, 0.5])
    torch.testing.assert_close(unet_out(pipe, ["snoopy the dog", "a cat"]), expected, rtol=1e-4, atol=1e-5)
    merged.undo()
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in original.items())


def test_diffusers_lora_loader_gives_the_same_images_as_gamma_one(pipe, tiny_dir, tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs the dev extra's peft")
    path = tmp_path / "s.safetensors"
    random_spm(pipe.unet).save(path)
    attached = spm.attach(pipe, spm.SPM.load(path), transport=False)
    ours = images(attached, "snoopy the dog")
    attached.detach()
    plain = spm.load_pipeline(str(tiny_dir))
    untouched = images(plain, "snoopy the dog")
    plain.load_lora_weights(str(path))
    theirs = images(plain, "snoopy the dog")
    assert abs(ours - untouched).max() > 1e-3  # the SPM does something
    assert abs(ours - theirs).max() < 1e-5


def test_transfer_to_a_sibling_model(pipe, tiny_sibling_dir):
    s = random_spm(pipe.unet)
    sibling = spm.load_pipeline(str(tiny_sibling_dir))
    plain = images(sibling, "snoopy the dog")
    attached = spm.attach(sibling, s)  # FT with the sibling's own text encoder
    assert abs(images(attached, "snoopy the dog") - plain).max() > 1e-3


def test_mismatched_model_fails_naming_the_layer_and_attaches_nothing(pipe, tmp_path):
    other = spm.load_pipeline(str(save_tiny_pipeline(tmp_path / "wide", cross_dim=24)))
    s = random_spm(pipe.unet)
    with pytest.raises(
        spm.SPMMismatchError, match=r"layer 'down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k'"
    ):
        spm.attach(other, s)
    assert not any(isinstance(m, MembraneLayer) for m in other.unet.modules())
    s.layers.pop("mid_block_attentions_0_proj_out")
    with pytest.raises(spm.SPMMismatchError, match="no weights for model layer 'mid_block_attentions_0_proj_out'"):
        spm.merge(pipe, s)


def test_attaching_twice_asks_to_detach_first(pipe):
    spm.attach(pipe, random_spm(pipe.unet))
    with pytest.raises(ValueError, match="detach"):
        spm.attach(pipe, random_spm(pipe.unet))


def test_no_spms_or_a_weight_count_that_does_not_match_is_an_error(pipe):
    one, two = random_spm(pipe.unet), random_spm(pipe.unet, ("mickey",), seed=1)
    for combine in (spm.attach, spm.merge):
        with pytest.raises(ValueError, match="no SPMs given"):
            combine(pipe, [])
        with pytest.raises(ValueError, match="1 weights given for 2 SPMs"):  # merge used to drop the second
            combine(pipe, [one, two], weights=[1.0])
    assert not any(isinstance(m, MembraneLayer) for m in pipe.unet.modules())


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_spms_with_non_finite_weights_are_refused_and_nothing_changes(pipe, bad):
    good, broken = random_spm(pipe.unet), random_spm(pipe.unet, ("mickey",), seed=1)
    name = sorted(broken.layers)[5]
    broken.layers[name][0][0, 0] = bad
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for combine in (spm.attach, spm.merge):
        with pytest.raises(ValueError, match=f"SPM #1 .*layer '{name}.down' holds NaN or infinite weights"):
            combine(pipe, [good, broken])
        with pytest.raises(ValueError, match="give a finite weight per SPM"):
            combine(pipe, [good], weights=[bad])
    assert not any(isinstance(m, MembraneLayer) for m in pipe.unet.modules())
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())


def test_detached_spms_refuse_to_run_and_detach_twice_is_harmless(pipe):
    attached = spm.attach(pipe, random_spm(pipe.unet))
    attached.detach()
    attached.detach()
    with pytest.raises(RuntimeError, match="attach\\(\\) them again"):
        attached("snoopy", **KW)
    assert not any(isinstance(m, MembraneLayer) for m in pipe.unet.modules())


def test_a_bare_unet_takes_spms_at_given_gammas(pipe):
    """What a benchmark of the UNet forward needs: no text side, gammas set with permeable()."""
    s, prompts, gamma = random_spm(pipe.unet), ["snoopy the dog", "a photo of a cat"], torch.tensor([[1.0], [0.25]])
    bare_output = unet_out(pipe, prompts)
    through_pipeline = spm.attach(pipe, s, transport=False)
    with through_pipeline.permeable(gamma):
        expected = unet_out(pipe, prompts)
    through_pipeline.detach()
    attached = spm.attach(pipe.unet, s, transport=False)
    with attached.permeable(gamma):
        output = unet_out(pipe, prompts)
    assert torch.equal(output, expected) and not torch.equal(output, bare_output)
    with pytest.raises(TypeError, match="bare UNet: call the UNet itself"):
        attached(prompts)
    attached.detach()
    assert torch.equal(unet_out(pipe, prompts), bare_output)
    with pytest.raises(ValueError, match="Facilitated Transport needs the pipeline's text encoder"):
        spm.attach(pipe.unet, s)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("path", ["rule", "per-row fold", "branch"])
def test_a_cfg_batch_with_mixed_gammas_equals_each_prompt_merged_at_its_gamma(pipe, k, path, monkeypatch):
    """Whatever path each layer takes (folded per row, the branch, or the cost model's mix), a UNet batch of CFG's
    two copies of 3 prompts, each its own gammas (one zero: that prompt's SPMs are off), equals the UNet with the
    SPMs statically merged at that prompt's gammas: W + sum_k gamma_k s_k U_k D_k."""
    if path == "per-row fold":
        monkeypatch.setattr("spm.layers.FOLD_RATIO", 1e9)
    elif path == "branch":
        monkeypatch.setattr("spm.layers.FOLD_BYTES", 0)
    spms = [random_spm(pipe.unet, [f"concept {i}"], seed=i) for i in range(k)]
    gamma = torch.tensor([[0.9, 0.2, 0.5][:k], [0.0] * k, [0.4, 1.0, 0.0][:k]])
    prompts = ["snoopy the dog", "a photo of a cat", "mickey the mouse"] * 2  # rows [uncond; cond] alike
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = spm.encode_prompts(pipe, prompts)
    bare = pipe.unet(x, 500, encoder_hidden_states=cond).sample
    attached = spm.attach(pipe.unet, spms, transport=False)
    with attached.permeable(gamma), torch.no_grad():
        batch = [pipe.unet(x, 500, encoder_hidden_states=cond).sample for _ in range(2)]  # planned, then run
    attached.detach()
    assert torch.equal(batch[0], batch[1])
    torch.testing.assert_close(pipe.unet(x, 500, encoder_hidden_states=cond).sample, bare, rtol=0, atol=0)
    for i in range(3):
        merged = spm.merge(pipe, spms, weights=gamma[i].tolist())
        rows = [i, i + 3]
        expected = pipe.unet(x[rows], 500, encoder_hidden_states=cond[rows]).sample
        merged.undo()
        torch.testing.assert_close(batch[0][rows], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch[0][[1, 4]], bare[[1, 4]], rtol=1e-5, atol=1e-6)  # gamma 0: as if no SPM
    assert not torch.allclose(batch[0][[0, 3]], bare[[0, 3]], atol=1e-4)


def test_attach_with_a_least_permeability_floors_ft_as_transport_does(pipe):
    spms = [random_spm(pipe.unet, ["snoopy"])]
    prompts = ["snoopy the dog", "a photo of a cat"]
    plain = spm.attach(pipe, spms)
    gamma = plain.permeability(prompts)
    plain.detach()
    floored = spm.attach(pipe, spms, least=0.5)
    try:
        torch.testing.assert_close(floored.permeability(prompts), 0.5 + 0.5 * gamma)
        assert floored.permeability(prompts)[0, 0] == 1 and gamma[1, 0] < 1
    finally:
        floored.detach()
