"""The toy cards' measurement through the suite's stages: stage files, resume, grids."""

import json

import torch


def test_grids_are_rows_of_eight_and_a_short_last_row_is_left_out(tmp_path):
    from PIL import Image

    from spmbench.toy.measure import save_grid

    images = []
    for i in range(10):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(images[-1])
    save_grid(images, tmp_path / "ten.png")
    ten = Image.open(tmp_path / "ten.png")
    assert ten.size == (8 * 4 * 3, 4 * 3)  # the two images past the first row are left out
    assert ten.getpixel((7 * 12, 0)) == (140, 0, 0)  # the eighth image, enlarged three times
    save_grid(images[:2], tmp_path / "two.png")
    assert Image.open(tmp_path / "two.png").size == (2 * 4 * 3, 4 * 3)  # a single short row is kept


def test_the_card_generates_and_judges_through_the_suites_stage_files(smoke_world, tmp_path):
    from spmbench.runner import load_images
    from spmbench.toy import models
    from spmbench.toy.card import CardSettings
    from spmbench.toy.measure import JudgeHeads, card_run

    weights = smoke_world[0] / "weights"
    net = models.load_judge(weights / "judge")
    settings = CardSettings(num_inference_steps=2, batch_size=2)
    run = card_run(weights, "toy-verbose", {"prefix": "p, ", "suffix": ", s"}, settings, JudgeHeads(net, "cpu"),
                   tmp_path, "cpu")  # fmt: skip
    assert (run.model.caption_prefix, run.model.guidance_scale, run.model.resolution) == ("p, ", 3.0, 32)
    judged, images = run.judged_heads("object", ["a red circle", "two blue squares", "a dog"], seed=5)
    assert [p.parent for p in images] == [run.cell.images] * 3  # the runner's Cell layout
    assert [p.name.split("-")[:2] for p in images] == [["object", str(i)] for i in range(3)]
    scores = [json.loads(line) for line in run.cell.scores.read_text().splitlines()]
    assert [s["heads"] for s in scores] == judged and len(judged) == 3
    with torch.no_grad():
        expected = {k: v.argmax(1).tolist() for k, v in net(load_images(images)).items()}
    assert judged == [{k: v[i] for k, v in expected.items()} for i in range(3)]
    stamps = [p.stat().st_mtime_ns for p in images]
    assert run.judged_heads("object", ["a red circle", "two blue squares", "a dog"], seed=5) == (judged, images)
    assert [p.stat().st_mtime_ns for p in images] == stamps  # a rerun generates nothing again


def test_a_kept_workdir_is_keyed_by_the_weights_the_judge_and_the_settings(tmp_path):
    from spmbench.toy.card import CardSettings
    from spmbench.toy.measure import measured_key, stages_folder

    model, judge = tmp_path / "toy-base", tmp_path / "judge"
    files = {model / "unet" / "diffusion_pytorch_model.safetensors": b"unet weights",
             model / "scheduler" / "scheduler_config.json": b'{"_class_name": "DDIMScheduler"}',
             judge / "judge.safetensors": b"judge weights", judge / "judge.json": b'{"heads": {}}'}  # fmt: skip
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    settings = CardSettings(num_inference_steps=2)
    key = measured_key(model, settings, judge)
    assert key.startswith("toy-base-") and key == measured_key(model, CardSettings(num_inference_steps=2), judge)
    assert measured_key(model, CardSettings(num_inference_steps=3), judge) != key  # other settings: measured afresh
    changes = [
        (model / "unet" / "diffusion_pytorch_model.safetensors", b"retrained unet weights"),  # never read stale
        (model / "scheduler" / "scheduler_config.json", b'{"_class_name": "DPMSolverMultistepScheduler"}'),
        (judge / "judge.safetensors", b"retrained judge weights"),  # stale verdicts are not reused either
    ]
    for path, content in changes:
        path.write_bytes(content)
        assert measured_key(model, settings, judge) != key, path
        key = measured_key(model, settings, judge)
    with stages_folder(tmp_path / "kept") as kept:
        (kept / "x").write_text("x")
    assert (tmp_path / "kept" / "x").exists()
    with stages_folder(None) as temporary:
        (temporary / "x").write_text("x")
    assert not temporary.exists()


def test_changed_prompts_under_the_same_group_are_generated_afresh(tiny_dir, tmp_path):
    """A tiny untrained SD and judge: the same group, seed and prompt reuse their image; another prompt
    in a place (or another seed) is a new image, never the old prompt's."""
    from spmbench.toy import models
    from spmbench.toy.card import CardSettings
    from spmbench.toy.measure import JudgeHeads, card_run

    torch.manual_seed(0)
    judge = JudgeHeads(models.Judge({"subject": 3}, width=8).eval(), "cpu")
    settings = CardSettings(num_inference_steps=2, batch_size=2)
    run = card_run(tiny_dir.parent, tiny_dir.name, {"prefix": "", "suffix": ""}, settings, judge, tmp_path, "cpu")
    _, first = run.judged_heads("object", ["a red circle", "a dog"], seed=5)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    judged, second = run.judged_heads("object", ["a red circle", "a cat"], seed=5)
    assert second[0] == first[0] and second[0].stat().st_mtime_ns == stamps[first[0]]  # the same prompt: reused
    assert second[1] != first[1] and second[1].exists()  # a changed prompt: a new image, not the dog's
    _, reseeded = run.judged_heads("object", ["a red circle", "a cat"], seed=6)
    assert not set(reseeded) & set(second)
    scored = [json.loads(line)["prompt_id"] for line in run.cell.scores.read_text().splitlines()]
    assert len(scored) == len(set(scored)) == 5 and len(judged) == 2  # each (prompt, seed) made and judged once
