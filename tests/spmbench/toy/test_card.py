import torch

from spmbench.toy import data
from spmbench.toy.card import _training_summary
from spmbench.toy.cli import card_main


CPU_INFO = {
    "device": "cpu",
    "machine": "x86_64, 2 torch threads",
    "config": {"vae_steps": 600, "base_steps": 1200, "pastel_steps": 120, "verbose_steps": 120},
    "seconds_per_stage": {"vae": 1800, "base": 5400},
}


def test_a_cpu_trained_world_says_its_gpu_time_is_not_measured():
    text = "\n".join(_training_summary(CPU_INFO))
    assert "2.0 h in all" in text
    assert "GPU training time: not measured yet" in text


def test_an_unfinished_gpu_run_projects_the_shipped_settings_from_its_measured_rates():
    gpu = {
        "machine": "H100",
        "config": {"vae_steps": 300},
        "seconds_per_stage": {"vae": 30, "base": 60},
        "steps_per_stage": {"vae": 300, "base": 120},
    }
    text = "\n".join(_training_summary({**CPU_INFO, "gpu_run": gpu}))
    # vae 600 / 10 = 1 min; base 1200 / 2 = 10 min; pastel and verbose 120 / 2 = 1 min each at the base's rate
    assert "about 13 min for the settings below, projected from the steps/s of a run on H100" in text
    assert "That run: vae 300 steps in 0.5 min, base 120 steps in 1.0 min." in text
    assert "not measured yet" not in text
    no_base = {**gpu, "seconds_per_stage": {"vae": 30}}
    assert "about 1 min for the settings below (less base, pastel, verbose, not measured)" in "\n".join(
        _training_summary({**CPU_INFO, "gpu_run": no_base})
    )


def test_a_gpu_run_of_the_shipped_settings_states_its_measured_time():
    steps = {"vae": 600, "base": 1200, "pastel": 120, "verbose": 120}
    gpu = {
        "machine": "H100",
        "config": CPU_INFO["config"],
        "seconds_per_stage": {"vae": 90, "base": 400, "pastel": 40, "verbose": 50},
        "steps_per_stage": steps,
    }
    text = "\n".join(_training_summary({**CPU_INFO, "gpu_run": gpu}))
    assert "GPU training time: 10 min in all for the settings below, measured on H100" in text
    assert "projected" not in text
    short = {**gpu, "steps_per_stage": {**steps, "verbose": 60}}  # stopped before the end: projected
    assert "projected" in "\n".join(_training_summary({**CPU_INFO, "gpu_run": short}))


def test_card_settings_are_checked_before_anything_is_measured(tmp_path):
    import pytest

    from spmbench.toy.cli import card_main

    (tmp_path / "afile").touch()
    for argv, message in (
        (["--sweep", "abc"], "sweep must be comma-separated numbers"),
        (["--sweep", "0,3"], "sweep guidances must be positive"),
        (["--judge-images", "0"], "judge_images must be positive"),
        (["--report", str(tmp_path / "afile" / "x.md")], "--report must be a .md file path"),
    ):
        with pytest.raises(SystemExit, match=message):
            card_main(["--weights", str(tmp_path / "none"), *argv])


def test_card_measures_and_writes_report(smoke_world, tmp_path):
    root, _ = smoke_world
    report = tmp_path / "toyworld.md"
    card_main(["--weights", str(root / "weights"), "--report", str(report), "--images-per-kind", "2",
               "--judge-images", "16", "--num-inference-steps", "2", "--sweep", "1,7.5", "--sweep-images-per-kind", "2"])  # fmt: skip
    text = report.read_text()
    assert (
        "Judge accuracy" in text and "| through the VAE |" in text and "### toy-pastel" in text and "implicit" in text
    )
    assert "## Quality bars" in text and "## Guidance" in text and "toy-verbose: at least as good as toy-base" in text
    assert "| 1 | " in text and "| 7.5 | " in text  # one sweep row per guidance
    for model in ("toy-base", "toy-pastel", "toy-verbose"):
        assert f"| {model}: shape >= 90 % |" in text
        assert (tmp_path / "toyworld" / f"{model}_character.png").exists()


def test_quality_bars_verdicts():
    from spmbench.toy.card import check_bars

    good = {"object": {"subject": 0.95, "colour": 0.9, "count": 0.9}, "object (held-out)": {"subject": 0.9, "colour": 0.9, "count": 0.85},
            "styled": {"subject": 0.92, "colour": 0.9, "style": 0.88}, "character": {"character": 0.93},
            "animal": {"subject": 0.9, "colour": 0.9}, "explicit_named": {"explicit": 0.9}, "implicit": {"explicit": 0.86},
            "explicit in neutral prompts": {"explicit": 0.02}}  # fmt: skip
    bars = {req: ok for req, _, ok in check_bars({"subject": 0.99}, {"toy-base": good})}
    assert all(bars.values()), bars
    bad = dict(
        good, implicit={"explicit": 0.5}, **{"object (held-out)": {"subject": 0.7, "colour": 0.9, "count": 0.85}}
    )
    verdicts = {req: ok for req, _, ok in check_bars({"subject": 0.97}, {"toy-base": good, "toy-pastel": bad})}
    assert not verdicts["judge accuracy, subject >= 98 %"]
    assert not verdicts["toy-pastel: explicit element, implicit prompts >= 85 %"]
    assert not verdicts["toy-pastel: held-out object phrasings within 10 points"]
    assert not verdicts["toy-pastel: at least as good as toy-base (largest shortfall beyond 2 s.e.)"]
    assert verdicts["toy-base: held-out object phrasings within 10 points"]
    # a 2-point dip on 64 images is sampling noise, not a worse model
    close = dict(good, character={"character": 0.91})
    verdicts = {req: ok for req, _, ok in check_bars({"subject": 0.99}, {"toy-base": good, "toy-pastel": close}, 64)}
    assert verdicts["toy-pastel: at least as good as toy-base (largest shortfall beyond 2 s.e.)"]


def test_colour_is_scored_only_where_the_prompt_names_it():
    from spmbench.toy import world as w
    from spmbench.toy.card import named_in
    from spmbench.toy.measure import JudgeHeads, head_accuracy

    class Fixed(torch.nn.Module):  # a judge that always sees a red dog
        def forward(self, images):
            logits = {h: torch.zeros(len(images), n) for h, n in data.JUDGE_HEADS.items()}
            logits["subject"][:, w.SUBJECTS.index("dog")] = 1
            logits["colour"][:, 1 + list(w.COLOURS).index("red")] = 1
            return logits

    pairs = [("a red dog", w.Scene("dog", "red", "white")), ("a photo of a dog", w.Scene("dog", "blue", "white")),
             ("a blue dog", w.Scene("dog", "blue", "white"))]  # fmt: skip
    judged = [r["heads"] for r in JudgeHeads(Fixed(), "cpu").assess(torch.zeros(3, 3, 32, 32), [""] * 3)]
    labels = data.label_tensors([s for _, s in pairs])
    named = {head: [named_in(p, s, head) for p, s in pairs] for head in ("subject", "colour")}
    # the unnamed blue dog is not held against the model
    assert head_accuracy(judged, labels, named) == {"subject": 1.0, "colour": 0.5}
    assert head_accuracy(judged, labels, {"colour": [False] * 3}) == {}  # nothing named: no measure


def test_card_measures_at_the_guidance_the_toy_models_are_run_with():
    from spmbench.models import load_models
    from spmbench.toy.card import CardSettings

    registry = load_models()
    for name in ("toy-base", "toy-pastel", "toy-verbose"):
        spec = registry.get(name)
        assert (spec.guidance_scale, spec.num_inference_steps) == (
            CardSettings().guidance_scale,
            CardSettings().num_inference_steps,
        ), name
