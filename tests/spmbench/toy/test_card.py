from spmbench.toy.card import _training_summary


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
