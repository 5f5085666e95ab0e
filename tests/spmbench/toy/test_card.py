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
        "device": "H100",
        "seconds_per_stage": {"vae": 60},
        "steps_run": {"vae": 300},
        "steps_per_second": {"vae": 10, "base": 2},
    }
    text = "\n".join(_training_summary({**CPU_INFO, "gpu_run": gpu}))
    # vae 600 / 10 = 1 min; base 1200 / 2 = 10 min; pastel and verbose 120 / 2 = 1 min each at the base's rate
    assert "about 13 min for the settings below" in text
    assert "measured on H100" in text
    assert "Run to the end there: vae 300 steps in 1.0 min." in text
    assert "not measured yet" not in text
