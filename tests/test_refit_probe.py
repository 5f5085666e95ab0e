"""scripts/refit_probe.py: a stored fit's settings read back from its provenance, and trained again to the same factors."""

import dataclasses
import importlib.util
from pathlib import Path

import spm


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "refit_probe.py"
spec = importlib.util.spec_from_file_location("refit_probe", SCRIPT)
refit_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refit_probe)

SETTINGS = dict(iterations=3, lr=3e-3, warmup_steps=1, rollout_steps=4, anchor_weight=10.0, checkpoint_every=0,
                adversarial_every=2, adversarial_steps=1, adversarial_tokens=2, seed=2)  # fmt: skip


def test_a_fit_is_trained_again_from_its_provenance_to_the_same_factors(pipe, tmp_path):
    config = spm.TrainConfig(**SETTINGS)
    fit = tmp_path / "fit.safetensors"
    spm.train(pipe, ["a cat"], "", config, progress=False).save(fit)

    stored = refit_probe.stored_config(fit, None)
    assert stored == config  # tuples (anchor_scale, resolutions) come back as tuples, not lists
    assert refit_probe.stored_config(fit, 7) == dataclasses.replace(config, iterations=7)

    again = spm.train(pipe, ["a cat"], "", stored, progress=False)
    assert refit_probe.largest_difference(fit, again, tmp_path) == 0.0
    other_seed = spm.train(pipe, ["a cat"], "", dataclasses.replace(stored, seed=3), progress=False)
    assert refit_probe.largest_difference(fit, other_seed, tmp_path) > 0.0
