"""SLD's hook (sld.py): the presets' warm-ups scaled to a generation's sampling steps; only sampling is guided."""

import json

import numpy as np
import torch

from spmbench.erasers.sld import PRESETS, SLD, warmup_for


KW = dict(guidance_scale=5.0, output_type="np")


def test_sld_warmups_keep_the_papers_fraction_of_the_sampling():
    assert [warmup_for(p.warmup_steps, 50) for p in PRESETS.values()] == [15, 10, 7, 0]  # the paper's
    assert [warmup_for(p.warmup_steps, 15) for p in PRESETS.values()] == [5, 3, 2, 0]  # toy world v3's
    assert [warmup_for(p.warmup_steps, 30) for p in PRESETS.values()] == [9, 6, 4, 0]  # world v2's
    assert warmup_for(49, 10) == 9 and warmup_for(15, 1) == 0  # every preset guides at least the last step


def test_sld_weak_guides_a_15_step_generation(pipe, tmp_path):
    """Unscaled, sld-weak's warm-up (15) lasted the whole of toy world v3's 15 steps: it never acted."""
    eraser = SLD("weak")
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16)
    kw = KW | {"num_inference_steps": 15}
    original = pipe(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **kw).images
    with eraser.apply(pipe, artifacts) as generate:
        erased = generate(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], **kw).images
        assert generate.guidance.warmup == 5 and generate.guidance.step == 15
    assert json.loads(artifacts[0].read_text())["warmup_counts_steps_of"] == 50  # the unit of the preset's warm-up
    assert np.abs(erased - original).max() > 1e-6


def test_sld_leaves_unet_calls_outside_sampling_as_they_are(pipe, tmp_path):
    """An attack's loss calls the UNet on conditional rows only (4 here, no CFG halves): SLD, a guidance of CFG
    sampling, must neither split them into halves (it failed on the timesteps' batch) nor change them."""
    eraser = SLD("max")
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16)
    unet = pipe.unet
    x = torch.randn(4, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 200, 500, 900])
    states = torch.randn(4, 5, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bare = unet(x, t, encoder_hidden_states=states).sample
        with eraser.apply(pipe, artifacts) as generate:
            hooked = unet(x, t, encoder_hidden_states=states).sample
            generate(["snoopy the dog"], generator=[torch.Generator().manual_seed(0)], num_inference_steps=2, **KW)
            assert generate.guidance.step == 2 and not generate.guidance.sampling  # it guided the sampling only
    torch.testing.assert_close(hooked, bare)
