"""The toy cards' measurement through the suite's stages: stage files, resume, grids."""

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
    import json

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
    assert images == [run.cell.images / f"object-{i}.png" for i in range(3)]  # the runner's Cell layout
    scores = [json.loads(line) for line in run.cell.scores.read_text().splitlines()]
    assert [s["heads"] for s in scores] == judged and len(judged) == 3
    with torch.no_grad():
        expected = {k: v.argmax(1).tolist() for k, v in net(load_images(images)).items()}
    assert judged == [{k: v[i] for k, v in expected.items()} for i in range(3)]
    stamps = [p.stat().st_mtime_ns for p in images]
    assert run.judged_heads("object", ["a red circle", "two blue squares", "a dog"], seed=5) == (judged, images)
    assert [p.stat().st_mtime_ns for p in images] == stamps  # a rerun generates nothing again


def test_a_kept_workdir_is_keyed_by_the_weights_and_the_settings(smoke_world, tmp_path):
    import shutil

    from spmbench.toy.card import CardSettings
    from spmbench.toy.measure import measured_key, stages_folder

    model = tmp_path / "toy-base"
    shutil.copytree(smoke_world[0] / "weights" / "toy-base", model)
    settings = CardSettings(num_inference_steps=2)
    key = measured_key(model, settings)
    assert key.startswith("toy-base-") and key == measured_key(model, CardSettings(num_inference_steps=2))
    assert measured_key(model, CardSettings(num_inference_steps=3)) != key  # other settings: measured afresh
    weights = next(model.rglob("unet/*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    assert measured_key(model, settings) != key  # retrained weights: never read stale
    key = measured_key(model, settings)
    scheduler = model / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text().replace("DDIMScheduler", "DPMSolverMultistepScheduler"))
    assert measured_key(model, settings) != key  # another sampler
    with stages_folder(tmp_path / "kept") as kept:
        (kept / "x").write_text("x")
    assert (tmp_path / "kept" / "x").exists()
    with stages_folder(None) as temporary:
        (temporary / "x").write_text("x")
    assert not temporary.exists()
