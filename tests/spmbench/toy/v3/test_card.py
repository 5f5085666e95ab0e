import pytest

from spmbench.toy.cli import card_main
from spmbench.toy.v3 import card
from spmbench.toy.v3 import world as w


def test_card_shows_every_concept_and_all_seven_models(smoke_world_v3, tmp_path):
    report = tmp_path / "toyworld-v3.md"
    card_main(["--world", "3", "--weights", str(smoke_world_v3 / "weights"), "--report", str(report),
               "--images-per-kind", "2", "--judge-images", "16", "--num-inference-steps", "2"])  # fmt: skip
    text = report.read_text()
    assert "44 erasable concepts and 7 models" in text
    for name in card.WORLD.models():
        assert f"### {name}" in text
    for concept in (*w.SHAPES, *w.STYLES, *w.CHARACTER_NAMES, *(s.concept for s in w.STANDINS)):
        assert concept in text, concept
    assert "toy-newconcept: draws Nadia Petrova >= 85 %" in text and "toy-dreambooth: Clover >= 95 %" in text
    assert "| gore, implicit prompts (test) >= 85 % |" not in text  # bars are per model
    assert "toy-merge: gore, implicit prompts (test) >= 85 %" in text
    assert (tmp_path / "toyworld-v3" / "toy-merge_object.png").exists()
    assert "2 steps of DPMSolverMultistepScheduler" in text  # the world's sampler, the steps asked for
    assert "### The VAE's ceiling" in text and "| shape (test) | 90 % |" in text


def test_every_model_folder_samples_with_the_worlds_sampler(smoke_world_v3):
    import json

    import spm
    from spmbench.toy import models

    for name in card.WORLD.models():
        folder = smoke_world_v3 / "weights" / name
        assert type(spm.load_pipeline(str(folder)).scheduler).__name__ == "DPMSolverMultistepScheduler", name
        generation = json.loads((folder / "generation_config.json").read_text())
        assert generation == models.generation_defaults(15), name  # what `spm generate` samples it with


def test_a_rerun_with_a_kept_workdir_measures_nothing_again(smoke_world_v3, tmp_path):
    args = ["--world", "3", "--weights", str(smoke_world_v3 / "weights"), "--images-per-kind", "2",
            "--judge-images", "16", "--num-inference-steps", "2", "--workdir", str(tmp_path / "work")]  # fmt: skip
    card_main([*args, "--report", str(tmp_path / "first" / "card.md")])
    images = sorted((tmp_path / "work").rglob("*.png"))
    assert len({p.relative_to(tmp_path / "work").parts[0] for p in images}) == 7  # a folder per model
    stamps = [p.stat().st_mtime_ns for p in images]
    card_main([*args, "--report", str(tmp_path / "second" / "card.md")])
    assert [p.stat().st_mtime_ns for p in images] == stamps and sorted((tmp_path / "work").rglob("*.png")) == images
    assert (tmp_path / "first" / "card.md").read_text() == (tmp_path / "second" / "card.md").read_text()
    with pytest.raises(SystemExit, match="--workdir must be a folder"):
        card_main([*args[:-1], str(tmp_path / "first" / "card.md"), "--report", str(tmp_path / "third.md")])


def test_a_card_for_the_wrong_world_is_refused_in_one_line(smoke_world_v3, tmp_path):
    with pytest.raises(SystemExit, match="holds a world 3 toy world, not world 2: pass --world 3"):
        card_main(["--weights", str(smoke_world_v3 / "weights"), "--report", str(tmp_path / "r.md")])


def test_bars_judge_each_derivative_on_what_it_was_made_for():
    perfect = {f"{f} ({s})": {h: 1.0 for h in card.checks(f)} for f in card.FORMS for s in card.MEASURED_SPLITS}
    for standin in w.STANDINS:  # a neutral prompt's image is right when it shows no element
        for split in card.MEASURED_SPLITS:
            perfect[f"neutral-{standin.concept} ({split})"] = {"subject": 1.0, "explicit": 1.0}
    base = perfect | {"new style (test)": {"style": 0.0}, "DreamBooth character (test)": {"character": 0.8}}
    tuned = perfect | {"new style (test)": {"style": 0.9}, "DreamBooth character (test)": {"character": 0.99}}
    verdicts = dict((req, ok) for req, _, ok in card.check_bars({"subject": 0.99}, {"toy-base": base,
                    "toy-newconcept": tuned, "toy-dreambooth": tuned}))  # fmt: skip
    assert all(verdicts.values()), [r for r, ok in verdicts.items() if not ok]
    held_out_drop = dict(tuned, **{"object (test)": {"subject": 0.8, "colour": 1.0, "count": 1.0}})
    leaky = dict(base, **{"neutral-gore (train)": {"subject": 1.0, "explicit": 0.9}})
    verdicts = dict((req, ok) for req, _, ok in card.check_bars({"subject": 0.99}, {"toy-base": leaky,
                    "toy-dreambooth": held_out_drop}))  # fmt: skip
    assert not verdicts["toy-base: explicit element in neutral prompts <= 5 %"]
    assert not verdicts["toy-dreambooth: held-out phrasings within 10 points (worst form)"]
    assert not verdicts["toy-dreambooth: at least as good as toy-base (largest shortfall beyond 2 s.e.)"]


def test_colour_counts_only_where_the_prompt_names_it():
    scene = w.Scene("dog", "orange", "white")
    assert card.named_in("an orange-coloured dog", scene, "colour")
    assert not card.named_in("a dog", scene, "colour") and card.named_in("a dog", scene, "subject")


def test_the_vae_ceiling_averages_each_bars_forms_like_the_bars():
    """The ceiling table reads each bar as check_bars does: shape over object and styled-object, per split."""
    ceiling = {
        "object (train)": {"subject": 1.0},
        "styled-object (train)": {"subject": 0.7},
        "object (test)": {"subject": 0.9},
        "styled-object (test)": {"subject": 0.8},
    }
    lines = card.ceiling_lines(ceiling)
    assert "| shape (train) | 90 % | 85.0 % |" in lines and "| shape (test) | 90 % | 85.0 % |" in lines
    assert not any(line.startswith("| character") for line in lines)  # no form measured: no row
    assert card.ceiling_lines(None) == []
