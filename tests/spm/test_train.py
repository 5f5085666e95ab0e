import re

import pytest
import torch

import spm


FAST = dict(lr=3e-3, warmup_steps=1, rollout_steps=6, anchor_weight=10.0, checkpoint_every=0)


def prediction(pipe, attached, prompts, gamma):
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attached.permeable(gamma):
        return pipe.unet(x, 500, encoder_hidden_states=spm.encode_prompts(pipe, prompts)).sample


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


def _train_killed_at(pipe, cfg, ckpt, step: int) -> None:
    """Train 'snoopy' with checkpoints into `ckpt`, killed (KeyboardInterrupt) in the callback of step index
    `step`: that step is done, its checkpoint (if due) not written."""

    def kill(done, _logs):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False, callback=kill)


def test_same_seed_same_spm_and_resume_after_a_kill(pipe, tmp_path):
    cfg = spm.TrainConfig(iterations=8, seed=3, **(FAST | {"checkpoint_every": 3}))
    reference = spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    again = spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    ckpt = tmp_path / "run.ckpt.pt"

    _train_killed_at(pipe, cfg, ckpt, step=6)
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


def test_vocabulary_anchors_are_words_other_than_the_targets(pipe):
    from spm.train import anchor_vocabulary, sample_vocabulary_prompts

    vocabulary = anchor_vocabulary(pipe.tokenizer, ["snoopy the dog"])
    assert {"cat", "car", "red"} <= set(vocabulary)
    assert not {"snoopy", "the", "dog"} & set(vocabulary) and all(w.isalpha() for w in vocabulary)
    prompts = sample_vocabulary_prompts(vocabulary, 20, torch.Generator().manual_seed(0))
    assert prompts == sample_vocabulary_prompts(vocabulary, 20, torch.Generator().manual_seed(0))
    assert {len(p.split()) for p in prompts} == {1, 2, 3} and all(w in vocabulary for p in prompts for w in p.split())


def test_vocabulary_anchors_hold_real_prompts_in_place(pipe):
    """With anchors drawn from the vocabulary, the membrane moves an unrelated real prompt less,
    relative to how much it moves the target, than with the paper's random directions alone."""
    prompts = ["snoopy the dog", "a red car on the road"]

    def selectivity(vocabulary_anchors):
        cfg = spm.TrainConfig(iterations=50, vocabulary_anchors=vocabulary_anchors, **FAST)
        attached = spm.attach(pipe, spm.train(pipe, ["snoopy the dog"], config=cfg, progress=False), transport=False)
        try:
            change = prediction(pipe, attached, prompts, torch.ones(1, 1)) - prediction(
                pipe, attached, prompts, torch.zeros(1, 1)
            )
        finally:
            attached.detach()
        change = change.pow(2).mean(dim=(1, 2, 3))
        return (change[1] / change[0]).item()

    assert selectivity(4) < selectivity(0)


def test_zero_random_anchors_leave_the_empty_prompt_anchor():
    from spm.train import sample_anchors

    c = torch.randn(5, 16)
    assert sample_anchors(c, 0, (0.8, 1.2), torch.Generator()).shape == (0, 5, 16)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "setting, message",
    [({"dtype": "float16"}, "dtype must be"), ({"iterations": 0}, "iterations must be at least 1"),
     ({"num_anchors": -1}, "num_anchors must be at least 0"), ({"rollout_steps": 1}, "rollout_steps must be at least 2"),
     ({"lr": NAN}, "lr must be a finite number, not nan"), ({"lr": INF}, "lr must be a finite number, not inf"),
     ({"lr": 0.0}, "lr must be greater than 0"), ({"eta": NAN}, "eta must be a finite number"),
     ({"eta": -1.0}, "eta must be at least 0"), ({"anchor_weight": -1.0}, "anchor_weight must be at least 0"),
     ({"anchor_weight": INF}, "anchor_weight must be a finite number"), ({"checkpoint_every": -1}, "checkpoint_every must be at least 0"),
     ({"rollout_guidance": NAN}, "rollout_guidance must be a finite number"), ({"alpha": INF}, "alpha must be a finite number"),
     ({"alpha": 0.0}, "alpha must be greater than 0"), ({"weight_decay": -0.1}, "weight_decay must be at least 0"),
     ({"warmup_steps": -1}, "warmup_steps must be at least 0"), ({"iterations": 2.5}, "iterations must be a whole number"),
     ({"num_anchors": "four"}, "num_anchors must be a whole number, not 'four'"),
     ({"anchor_scale": (0.8, NAN)}, "anchor_scale must be two finite numbers"),
     ({"anchor_scale": (1.2, 0.8)}, "anchor_scale must be two finite numbers"), ({"anchor_scale": (0.0, 1.0)}, "anchor_scale"),
     ({"resolutions": (16, -8)}, "resolutions must be positive whole numbers"),
     ({"legacy_schedule": "yes"}, "legacy_schedule must be true or false, not 'yes'"),
     ({"legacy_anchors": 1}, "legacy_anchors must be true or false, not 1"),
     ({"resolutions": 16}, "resolutions must be a list of sizes in pixels, e.g. [256, 320], not 16"),
     ({"seed": "0"}, "seed must be a whole number, not '0'"), ({"seed": 2**64}, "seed must be between"),
     ({"adversarial_every": -1}, "adversarial_every must be at least 0"),
     ({"adversarial_steps": 0}, "adversarial_steps must be at least 1"),
     ({"adversarial_lr": 0.0}, "adversarial_lr must be greater than 0"),
     ({"rollout_reuse": 0}, "rollout_reuse must be at least 1, not 0"),
     ({"rollout_reuse": 2.0}, "rollout_reuse must be a whole number, not 2.0"),
     ({"rollout_trajectories": -1}, "rollout_trajectories must be at least 0"),
     ({"rollout_trajectories": 3, "rollout_reuse": 2}, "rollout_trajectories must be at most rollout_reuse (2)")],
)  # fmt: skip
def test_impossible_settings_are_refused_in_one_line(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        spm.TrainConfig(**setting)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(
        next(iter(setting))
    )  # the CLI names the option


def test_valid_settings_from_files_are_accepted():
    cfg = spm.TrainConfig(anchor_scale=[1.0, 1.0], resolutions=[16], eta=0, anchor_weight=0, lr=1, checkpoint_every=0)
    assert cfg.anchor_scale == [1.0, 1.0]  # as given: a YAML list is a range too


def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(pipe, tmp_path):
    ckpt, steps = tmp_path / "run.ckpt.pt", []
    # Step 1 runs at lr 0 (warm-up); the step-2 update at lr 1e6 makes the step-3 loss NaN.
    cfg = spm.TrainConfig(iterations=8, seed=3, resolutions=(16,), **(FAST | {"lr": 1e6, "checkpoint_every": 2}))
    with pytest.raises(spm.NonFiniteLoss) as caught:
        spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False, callback=lambda s, _: steps.append(s))
    message = str(caught.value)
    assert message == (
        "loss became nan at step 3: lower lr (now 1000000.0) or anchor_weight (now 10.0); the checkpoint at step 2 is kept"
    )
    assert steps == [0, 1]  # the bad step reached neither the callback nor the factors
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 2 and all(torch.isfinite(p).all() for p in saved["params"])


def test_factors_that_overflow_on_a_finite_loss_are_caught_before_a_checkpoint():
    from spm.checkpoint import Checkpoint
    from spm.train import _check_factors

    params = [torch.zeros(2), torch.tensor([1.0, float("inf")])]
    ckpt = Checkpoint("run.ckpt.pt", {}, 2)
    with pytest.raises(
        spm.NonFiniteLoss, match="the weights became NaN or infinite at step 4: .*checkpoint at step 2 is kept"
    ):
        _check_factors(params, 4, spm.TrainConfig(), ckpt, saved=2)
    _check_factors(params[:1], 4, spm.TrainConfig(), ckpt, saved=2)  # finite: nothing to say


def test_a_checkpoint_with_non_finite_weights_is_refused_on_resume(pipe, tmp_path):
    ckpt = tmp_path / "run.ckpt.pt"
    cfg = spm.TrainConfig(iterations=2, resolutions=(16,), **(FAST | {"checkpoint_every": 2}))
    spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)
    saved = torch.load(ckpt, weights_only=True)
    saved["params"][0][0, 0] = float("nan")  # as a diverged run wrote it before training checked its losses
    torch.save(saved, ckpt)
    with pytest.raises(spm.CheckpointError, match="holds NaN or infinite weights: delete it"):
        spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)


def test_a_half_precision_pipeline_is_refused_before_training(pipe):
    pipe.to(torch.bfloat16)
    with pytest.raises(ValueError, match="needs the pipeline in float32"):
        spm.train(pipe, ["snoopy"], progress=False)


def test_training_sizes_are_drawn_per_side():
    from spm.train import _draw_size

    gen = torch.Generator().manual_seed(0)
    sizes = {_draw_size((256, 320, 384, 448), gen, 8) for _ in range(200)}
    assert {h for h, _ in sizes} == {w for _, w in sizes} == {32, 40, 48, 56}
    assert any(h != w for h, w in sizes)  # non-square, as the released code trains
    assert {_draw_size((32,), gen, 8) for _ in range(5)} == {(4, 4)}


def test_legacy_anchors_are_two_random_ones_and_the_empty_prompt_twice(pipe):
    seen = []
    pipe.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach()), with_kwargs=True
    )
    cfg = spm.TrainConfig(iterations=1, num_anchors=5, legacy_anchors=True, **FAST)
    spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    trained = seen[-1]  # the membrane's prediction: the target, then the anchors
    empty = spm.encode_prompts(pipe, [""])[0]
    assert len(trained) == 1 + 2 + 2
    assert torch.equal(trained[3], empty) and torch.equal(trained[4], empty)
    assert not torch.equal(trained[1], empty) and not torch.equal(trained[2], empty)


def test_a_file_that_is_not_a_checkpoint_is_refused_by_the_library_too(pipe, tmp_path):
    ckpt = tmp_path / "s.ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a training checkpoint: delete it"):
        spm.train(pipe, ["snoopy"], config=spm.TrainConfig(iterations=1, **FAST), checkpoint=ckpt, progress=False)


def test_a_pipeline_loaded_from_a_path_object_trains_checkpoints_saves_and_loads(tiny_dir, tmp_path):
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(Path(tiny_dir), safety_checker=None, requires_safety_checker=False)
    cfg = spm.TrainConfig(iterations=2, resolutions=(16,), **(FAST | {"checkpoint_every": 1}))
    ckpt, out = tmp_path / "run.ckpt.pt", tmp_path / "s.safetensors"
    trained = spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)
    assert ckpt.exists() and trained.provenance["base_model"] == str(tiny_dir)
    trained.save(out)  # was: TypeError, PosixPath is not JSON serializable
    loaded = spm.SPM.load(out)
    assert loaded.provenance["base_model"] == str(tiny_dir)
    assert all(torch.equal(loaded.layers[name][1], u) for name, (_, u) in trained.layers.items())
    resumed = spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)  # the same run's file
    assert all(torch.equal(resumed.layers[name][1], u) for name, (_, u) in trained.layers.items())


@pytest.mark.parametrize(
    "legacy, grid, query",
    [
        (False, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1], lambda k: 1 + 100 * (9 - k)),  # the scheduler's
        (True, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0], lambda k: 999 - k * 1000 // 10),  # the released
    ],
)
def test_the_rollout_grid_and_query_timestep_follow_the_released_code_under_legacy_schedule(pipe, legacy, grid, query):
    calls = []  # (batch, timestep) of every UNet forward
    pipe.unet.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append((len(kwargs["encoder_hidden_states"]), int(args[1]))), with_kwargs=True
    )
    cfg = spm.TrainConfig(iterations=6, resolutions=(16,), legacy_schedule=legacy, **(FAST | {"rollout_steps": 10}))
    spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    depths = []
    while calls:  # per step: k rollout forwards (batch 2), the frozen one (batch 7), the membrane's (batch 6)
        k = next(i for i, (batch, _) in enumerate(calls) if batch != 2)
        assert [t for _, t in calls[:k]] == grid[:k]
        assert calls[k] == (7, query(k)) and calls[k + 1] == (6, query(k))
        depths.append(k)
        del calls[: k + 2]
    assert len(depths) == 6 and len(set(depths)) > 2


def test_a_checkpoint_from_before_legacy_schedule_is_still_resumed(pipe):
    from spm.train import _run_settings

    settings = _run_settings(["snoopy"], "", spm.TrainConfig(), pipe)
    assert "legacy_schedule" not in settings["config"]  # the fingerprint of a run made before the switch
    assert _run_settings(["snoopy"], "", spm.TrainConfig(legacy_schedule=True), pipe)["config"]["legacy_schedule"]


def test_adversarial_training_erases_found_prompts_saves_loads_and_resumes(pipe, tmp_path):
    """The hardened option: searches (one per `adversarial_every` steps) add an adversarial term to the loss; the
    SPM saves and loads through safetensors with the option in its provenance; a killed run resumes to the same
    factors (the latest adversarial prompts are in the checkpoint)."""
    plain_cfg = spm.TrainConfig(iterations=6, seed=1, **FAST)
    cfg = spm.TrainConfig(
        iterations=6, seed=1, adversarial_every=2, adversarial_steps=2, **(FAST | {"checkpoint_every": 3})
    )
    logs = []
    hardened = spm.train(pipe, ["snoopy"], config=cfg, progress=False, callback=lambda step, e: logs.append(e))
    assert all(entry["adversarial"] > 0 for entry in logs)
    out = tmp_path / "hardened.safetensors"
    hardened.save(out)
    loaded = spm.SPM.load(out)
    assert loaded.provenance["train_config"]["adversarial_every"] == 2
    assert all(torch.equal(loaded.layers[n][1], u) for n, (_, u) in hardened.layers.items())
    plain = spm.train(pipe, ["snoopy"], config=plain_cfg, progress=False)
    assert any(not torch.equal(plain.layers[n][1], u) for n, (_, u) in hardened.layers.items())

    ckpt = tmp_path / "run.ckpt.pt"
    _train_killed_at(pipe, cfg, ckpt, step=4)
    resumed = spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)
    for name, (d, u) in hardened.layers.items():
        torch.testing.assert_close(resumed.layers[name][0], d)
        torch.testing.assert_close(resumed.layers[name][1], u)


def test_adversarial_training_is_refused_on_two_text_encoders(tiny_sdxl_dir):
    sdxl = spm.load_pipeline(str(tiny_sdxl_dir))
    with pytest.raises(ValueError, match="SD 1.x/2.x pipelines only"):
        spm.train(sdxl, ["snoopy"], config=spm.TrainConfig(iterations=1, adversarial_every=1, **FAST), progress=False)


def _rollout_calls(pipe):
    """(batch, timestep, latents) of every UNet forward, by a hook; the list fills as the UNet is called."""
    calls = []
    pipe.unet.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append((len(kwargs["encoder_hidden_states"]), int(args[1]), args[0].clone())),
        with_kwargs=True,
    )
    return calls


def test_without_rollout_reuse_x_t_is_the_spec_rollout_from_the_draws_in_their_order(pipe):
    """rollout_reuse 1 (the default) is the spec's loop as before the option: per iteration a target, a size, the
    rollout depth k and the noise, drawn from the seed in that order, then k CFG steps of DDIM. At the first step
    the membrane is still closed (its up factors start at zero), so x_t is the frozen model's: recomputed here."""
    from diffusers import DDIMScheduler

    calls = _rollout_calls(pipe)
    cfg = spm.TrainConfig(iterations=1, seed=4, resolutions=(16,), **FAST)
    spm.train(pipe, ["snoopy", "mickey"], config=cfg, progress=False)
    calls = calls[:]  # the training's (the recomputation below calls the UNet too)
    gen = torch.Generator().manual_seed(4)
    drawn = int(torch.randint(2, (), generator=gen))
    torch.randint(1, (), generator=gen)  # the size, from the one given
    k = int(torch.randint(1, cfg.rollout_steps, (), generator=gen))
    x = torch.randn(1, 4, 8, 8, generator=gen)
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim.set_timesteps(cfg.rollout_steps)
    cond = torch.cat([spm.encode_prompts(pipe, [""]), spm.encode_prompts(pipe, [["snoopy", "mickey"][drawn]])])
    with torch.no_grad():
        for t in ddim.timesteps[:k]:
            uncond, text = pipe.unet(x.expand(2, -1, -1, -1), t, encoder_hidden_states=cond).sample.chunk(2)
            x = ddim.step(uncond + cfg.rollout_guidance * (text - uncond), t, x).prev_sample
    assert [batch for batch, _, _ in calls] == [2] * k + [7, 6]  # k rollout steps, the frozen call, the membrane's
    torch.testing.assert_close(calls[k][2][:1], x, rtol=0, atol=1e-6)  # the frozen call, at x_t
    assert spm.TrainConfig().rollout_reuse == 1


@pytest.mark.parametrize("trajectories, batches", [(0, {2 * n for n in range(1, 5)}), (1, {2})])
def test_a_reused_rollout_serves_its_iterations_each_at_its_own_depth(pipe, trajectories, batches):
    """rollout_reuse 4: two rollouts for 8 iterations, all trajectories in one call per DDIM step (as many as the
    iterations, or one), then per iteration its frozen and membrane calls on its own x_t at its depth's timestep."""
    calls = _rollout_calls(pipe)
    cfg = spm.TrainConfig(iterations=8, resolutions=(16,), rollout_reuse=4, rollout_trajectories=trajectories, **FAST)
    spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    frozen = [i for i, (batch, _, _) in enumerate(calls) if batch == 7]
    assert len(frozen) == 8 and all(calls[i + 1][0] == 6 for i in frozen)
    # the UNet calls before each iteration's frozen one (after the previous iteration's membrane call)
    before = [calls[a + 2 if a is not None else 0 : b] for a, b in zip([None, *frozen], frozen)]
    assert [len(b) > 0 for b in before] == [True, False, False, False] * 2
    assert all(len(b) <= cfg.rollout_steps - 1 and {batch for batch, _, _ in b} <= batches for b in before)
    assert len({calls[i][1] for i in frozen}) > 1  # the iterations' own depths
    if trajectories == 0:  # every iteration its own noise: four different latents from one rollout
        assert len({tuple(calls[i][2].flatten().tolist()) for i in frozen[:4]}) == 4


def test_training_with_rollout_reuse_erases_and_resumes_within_a_rollout(pipe, tmp_path):
    """The erase loss falls and the membrane acts on the target as with the spec's loop; a run killed between two
    rollouts' steps resumes from its checkpoint (which keeps the rollout's latents) to the same factors."""
    logs = []
    cfg = spm.TrainConfig(iterations=50, rollout_reuse=5, **FAST)
    trained = spm.train(
        pipe, ["snoopy the dog"], config=cfg, progress=False, callback=lambda step, entry: logs.append(entry)
    )
    erase = [entry["erase"] for entry in logs]
    assert sum(erase[-10:]) < 0.8 * sum(erase[:10])
    attached = spm.attach(pipe, trained, transport=False)
    prompts = ["snoopy the dog", "a red car on the road"]
    change = prediction(pipe, attached, prompts, torch.ones(1, 1)) - prediction(
        pipe, attached, prompts, torch.zeros(1, 1)
    )
    attached.detach()
    change = change.pow(2).mean(dim=(1, 2, 3))
    assert change[0] > 2 * change[1]

    cfg = spm.TrainConfig(iterations=9, seed=2, rollout_reuse=4, **(FAST | {"checkpoint_every": 3}))
    whole = spm.train(pipe, ["snoopy"], config=cfg, progress=False)
    ckpt = tmp_path / "run.ckpt.pt"

    _train_killed_at(pipe, cfg, ckpt, step=7)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 6 and saved["rollout_latents"].shape[0] == 4  # step 6: within the second rollout
    resumed = spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)
    for name, (d, u) in whole.layers.items():
        assert torch.equal(resumed.layers[name][0], d) and torch.equal(resumed.layers[name][1], u)
    del saved["rollout_latents"]
    torch.save(saved, ckpt)
    with pytest.raises(spm.CheckpointError, match="has no rollout latents: delete it"):
        spm.train(pipe, ["snoopy"], config=cfg, checkpoint=ckpt, progress=False)


def test_rollout_reuse_is_not_in_the_fingerprint_of_a_spec_loop_run(pipe):
    from spm.train import _run_settings

    assert "rollout_reuse" not in _run_settings(["snoopy"], "", spm.TrainConfig(), pipe)["config"]
    assert _run_settings(["snoopy"], "", spm.TrainConfig(rollout_reuse=3), pipe)["config"]["rollout_reuse"] == 3


@pytest.mark.parametrize("family", ["tiny_sdxl_dir", "tiny_sd3_dir"])
def test_rollout_reuse_trains_sdxl_and_sd3(family, request):
    other = spm.load_pipeline(str(request.getfixturevalue(family)))
    cfg = spm.TrainConfig(iterations=4, rollout_reuse=2, **FAST)
    trained = spm.train(other, ["snoopy"], config=cfg, progress=False)
    ups = torch.cat([u.flatten() for _, u in trained.layers.values()])
    assert torch.isfinite(ups).all() and ups.abs().sum() > 0


def toy3_sampler(pipe):
    """DPM-Solver++ 2M on the pipeline's noise schedule, built as toy world v3 ships it (diffusers' defaults:
    "linspace" spacing, no offset), and one taken from the pipeline's config."""
    from diffusers import DPMSolverMultistepScheduler

    noise = {k: pipe.scheduler.config[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    built = DPMSolverMultistepScheduler(**noise, algorithm_type="dpmsolver++", solver_order=2)
    return built, DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)


def test_the_rollout_grid_is_ddims_whatever_sampler_the_pipeline_ships(pipe):
    from spm.train import _rollout_schedule, ddim_scheduler

    cfg = spm.TrainConfig(rollout_steps=10)
    ddim_grid = _rollout_schedule(pipe, cfg)[0].timesteps.tolist()
    assert ddim_grid == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]  # the tiny pipeline's DDIM config
    for sampler in toy3_sampler(pipe):
        pipe.scheduler = sampler
        assert _rollout_schedule(pipe, cfg)[0].timesteps.tolist() == ddim_grid
        assert ddim_scheduler(pipe).config.clip_sample is False
    assert toy3_sampler(pipe)[0].config.steps_offset == 0  # the built one would have given 900, ..., 0 unfixed
