"""spmbench.erasers.spm: the hardened SPM (adversarial training, FT with a least permeability) on the tiny pipeline."""

import pytest

import spm
from spm.layers import MembraneLayer
from spmbench.erasers import ERASERS


FAST = {"iterations": 2, "lr": 1e-2, "warmup_steps": 1, "rollout_steps": 4}


def test_the_hardened_spm_trains_adversarially_into_its_own_fits_and_keeps_ft_above_its_least(pipe, tmp_path):
    hardened = ERASERS.get("spm-hardened")
    (path,) = hardened.fit(pipe, ("snoopy",), tmp_path, 16, FAST)
    assert path.parent.name == "spm-hardened"  # not the plain SPM's fits
    config = spm.SPM.load(path).provenance["train_config"]
    assert config["adversarial_every"] == hardened.overrides["adversarial_every"] and config["iterations"] == 2
    with hardened.apply(pipe, [path]) as attached:
        gamma = attached.permeability(["snoopy", "a red car on the road", ""])[:, 0]
    assert gamma[0] == pytest.approx(1.0) and min(gamma) >= hardened.least > 0
    assert hardened.applied == {"transport": True, "similarity": "relative", "least": hardened.least}
    with ERASERS.get("spm-rel").apply(pipe, [path]) as plain:  # the same file under the same FT, unfloored
        relative = plain.permeability(["a red car on the road"])[0, 0]
    assert gamma[1] == pytest.approx(hardened.least + (1 - hardened.least) * relative)
    assert not any(isinstance(m, MembraneLayer) for m in pipe.unet.modules())  # detached on exit


def test_the_hardened_spm_is_refused_on_two_text_encoders():
    assert "one text encoder" in ERASERS.get("spm-hardened").family_problem("sdxl")
    assert ERASERS.get("spm-hardened").family_problem("sd1") is None
