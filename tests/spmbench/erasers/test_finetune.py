"""The shared fine-tuning loop (finetune.py) through the erasers built on it (ESD-x, ESD-u, Concept
Ablation) on the tiny pipeline: the loss falls, only the intended parameters move, the pipeline is left
as it was, fits are reproducible and resume."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from spm import Checkpoint
from spmbench.erasers import ERASERS


# Enough iterations for a trend through the noise of random timesteps; lr per method (ESD-u trains
# every non-attention weight, so it needs a smaller step not to overshoot).
SETTINGS = {
    "esd-x": {"iterations": 30, "lr": 3e-3, "rollout_steps": 4},
    "esd-u": {"iterations": 30, "lr": 3e-4, "rollout_steps": 4},
    "ca": {"iterations": 30, "lr": 1e-3, "batch_size": 2, "anchor_images": 2, "sample_steps": 4},
}
INTENDED = {
    "esd-x": lambda name: ".attn2." in name,
    "esd-u": lambda name: (
        ".attn2." not in name and not name.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))
    ),
    "ca": lambda name: name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")),
}


def state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def losses(path) -> list[float]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["losses"])


@pytest.mark.parametrize("name", list(SETTINGS))
def test_fit_trains_only_the_intended_parameters_and_leaves_the_pipeline(name, pipe, tmp_path):
    eraser, before = ERASERS.get(name), state(pipe)
    [path] = eraser.fit(pipe, ("snoopy",), tmp_path, 16, SETTINGS[name])
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # fit trained a copy
    curve = losses(path)
    assert len(curve) == SETTINGS[name]["iterations"]
    assert np.mean(curve[-10:]) < 0.7 * np.mean(curve[:10])
    mtime = path.stat().st_mtime_ns
    assert eraser.fit(pipe, ("snoopy",), tmp_path, 16, SETTINGS[name]) == [path]  # idempotent
    assert path.stat().st_mtime_ns == mtime and not list(tmp_path.rglob("*.ckpt.pt"))
    with eraser.apply(pipe, [path]):
        changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(INTENDED[name](k) for k in changed)
    if name == "ca":  # every key/value projection moves
        assert changed == {k for k in before if INTENDED[name](k)}
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # apply undone


@pytest.mark.parametrize("name", list(SETTINGS))
def test_an_unknown_setting_is_an_error(name, pipe, tmp_path):
    with pytest.raises(ValueError, match="unknown field.*'iteratons'"):
        ERASERS.get(name).fit(pipe, ("snoopy",), tmp_path, 16, {"iteratons": 3})


@pytest.mark.parametrize("name", list(SETTINGS))
def test_same_seed_same_fit_and_a_resumed_fit_equals_an_uninterrupted_one(name, pipe, tmp_path, monkeypatch):
    eraser = ERASERS.get(name)
    cfg = eraser.settings(SETTINGS[name] | {"iterations": 4})
    deltas, curve = eraser.train(pipe, ("snoopy", "mickey"), 16, cfg)
    again, _ = eraser.train(pipe, ("snoopy", "mickey"), 16, cfg)
    assert all(torch.equal(deltas[k], again[k]) for k in deltas)
    checkpoint, save = tmp_path / "fit.ckpt.pt", Checkpoint.save

    def killed_after_step_2(self, step, state, **extra):
        save(self, step, state, **extra)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(eraser, "checkpoint_every", 2)
    monkeypatch.setattr(Checkpoint, "save", killed_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        eraser.train(pipe, ("snoopy", "mickey"), 16, cfg, checkpoint)
    monkeypatch.setattr(Checkpoint, "save", save)
    assert torch.load(checkpoint, weights_only=True)["step"] == 2
    resumed, resumed_curve = eraser.train(pipe, ("snoopy", "mickey"), 16, cfg, checkpoint)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4  # the finished fit is kept until it is saved
    finished, _ = eraser.train(pipe, ("snoopy", "mickey"), 16, cfg, checkpoint)
    assert all(torch.equal(resumed[k], finished[k]) for k in deltas)
    assert resumed_curve == pytest.approx(curve)
    assert all(torch.allclose(deltas[k], resumed[k]) for k in deltas)
    with pytest.raises(ValueError, match="other settings"):
        eraser.train(pipe, ("snoopy", "mickey"), 16, dataclasses.replace(cfg, seed=1), checkpoint)


def test_ddim_for_samples_the_ddim_grid_under_a_dpm_solver_pipeline(pipe):
    """Toy world v3 ships DPM-Solver++ ("linspace", no offset): ESD's and CA's rollouts still take the grid the
    same noise schedule's DDIM config gives (901, 801, ..., 1 at 10 steps)."""
    from diffusers import DPMSolverMultistepScheduler

    from spmbench.erasers.finetune import ddim_for

    expected = ddim_for(pipe)
    expected.set_timesteps(10)
    noise = {k: pipe.scheduler.config[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    pipe.scheduler = DPMSolverMultistepScheduler(**noise, algorithm_type="dpmsolver++", solver_order=2)
    ddim = ddim_for(pipe)
    ddim.set_timesteps(10)
    assert expected.timesteps.tolist() == ddim.timesteps.tolist() == list(range(901, 0, -100))
    assert torch.equal(ddim.alphas_cumprod, expected.alphas_cumprod)
