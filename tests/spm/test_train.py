import pytest
import torch

import spm


FAST = dict(lr=3e-3, warmup_steps=1, rollout_steps=6, anchor_weight=10.0, checkpoint_every=0)


def prediction(pipe, attached, prompts, gamma):
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attached.permeable(gamma):
        return pipe.unet(x, 500, encoder_hidden_states=pipe.text_encoder(ids)[0]).sample


def test_training_lowers_the_erase_loss_and_acts_on_the_target(pipe):
    logs = []
    cfg = spm.TrainConfig(iterations=50, **FAST)
    trained = spm.train(
        pipe, ["snoopy the dog"], config=cfg, progress=False, callback=lambda step, entry: logs.append(entry)
    )
    erase = [entry["erase"] for entry in logs]
    assert sum(erase[-10:]) < 0.8 * sum(erase[:10])
    assert trained.targets == ["snoopy the dog"] and trained.provenance["train_config"]["iterations"] == 50
    attached = spm.attach(pipe, trained, transport=False)
    prompts = ["snoopy the dog", "a red car on the road"]
    change = prediction(pipe, attached, prompts, torch.ones(1, 1)) - prediction(
        pipe, attached, prompts, torch.zeros(1, 1)
    )
    change = change.pow(2).mean(dim=(1, 2, 3))
    assert change[0] > 2 * change[1]


def test_same_seed_same_spm_and_resume_after_a_kill(pipe, tmp_path):
    cfg = spm.TrainConfig(iterations=8, seed=3, **(FAST | {"checkpoint_every": 3}))
    reference = spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    again = spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    ckpt = tmp_path / "run.ckpt.pt"

    def kill_at_step_7(step, logs):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False, callback=kill_at_step_7)
    assert ckpt.exists()  # steps 1-6 survived the kill
    resumed = spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)
    for name, (d, u) in reference.layers.items():
        assert torch.equal(again.layers[name][1], u)
        torch.testing.assert_close(resumed.layers[name][0], d)
        torch.testing.assert_close(resumed.layers[name][1], u)
    with pytest.raises(ValueError, match="other settings"):
        spm.train(pipe, ["mickey"], config=cfg, checkpoint=ckpt, progress=False)


def test_anchor_sampling_respects_norm_range():
    from spm.train import sample_anchors

    c = torch.randn(5, 16)
    anchors = sample_anchors(c, 50, (0.8, 1.2), torch.Generator().manual_seed(0))
    ratio = anchors.flatten(1).norm(dim=1) / c.norm()
    assert anchors.shape == (50, 5, 16) and ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.2 + 1e-5


def test_no_targets_is_an_error(pipe):
    with pytest.raises(ValueError, match="at least one target"):
        spm.train(pipe, [], progress=False)


def test_bfloat16_autocast_trains_finite_weights(pipe):
    trained = spm.train(
        pipe, ["snoopy"], config=spm.TrainConfig(iterations=3, dtype="bfloat16", **FAST), progress=False
    )
    ups = torch.cat([u.flatten() for _, u in trained.layers.values()])
    assert torch.isfinite(ups).all() and ups.abs().sum() > 0 and ups.dtype == torch.float32


def test_surrogate_and_several_targets_are_recorded(pipe):
    trained = spm.train(
        pipe,
        ["snoopy", "snoopy the dog"],
        surrogate="a dog",
        config=spm.TrainConfig(iterations=2, **FAST),
        progress=False,
    )
    assert trained.targets == ["snoopy", "snoopy the dog"] and trained.provenance["surrogate"] == "a dog"
