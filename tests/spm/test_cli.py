import dataclasses
import json
import shutil

import pytest
import torch
import typer.main
from safetensors.torch import save_file
from typer.testing import CliRunner

import spm
from spm.cli import app


runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_inspect_generate(tiny_dir, tmp_path):
    out = tmp_path / "snoopy.safetensors"
    result = run("train", "--model", tiny_dir, "--target", "snoopy", "--target", "snoopy the dog", "--iterations", 3,
                 "--resolution", 16, "--vocabulary-anchors", 2, "--checkpoint-every", 2, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.exists() and not (tmp_path / "snoopy.safetensors.ckpt.pt").exists()
    info = run("inspect", out)
    assert info.exit_code == 0 and "snoopy, snoopy the dog" in info.output and "layers:     48" in info.output
    for i, extra in enumerate(([], ["--no-transport"], ["--legacy"], ["--similarity", "relative"])):
        images = tmp_path / f"img{i}"
        result = run("generate", "--model", tiny_dir, "--spm", out, "--spm", out, "--prompt", "snoopy", "--prompt", "a cat",
                     "--steps", 2, "--num-images", 2, "--out", images, *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert len(list(images.glob("*.png"))) == 4


def test_helpful_errors(tiny_dir, tmp_path):
    result = run("generate", "--model", "toy-base", "--prompt", "x", "--out", tmp_path)
    assert_one_line_error(result, "'toy-base' is neither a local diffusers directory nor a hub id (org/name)")
    result = run("train", "--model", tiny_dir, "--target", "x", "--out", tmp_path / "x.pt")
    assert result.exit_code == 2 and "must end in .safetensors" in result.output
    spm_file = tmp_path / "s.safetensors"
    assert (
        run(
            "train", "--model", tiny_dir, "--target", "x", "--iterations", 1, "--resolution", 16, "--out", spm_file
        ).exit_code
        == 0
    )
    result = run("generate", "--model", tiny_dir, "--spm", spm_file, "--prompt", "x", "--similarity", "pooled",
                 "--steps", 1, "--out", tmp_path / "g")  # fmt: skip
    assert result.exit_code == 2 and "unknown similarity 'pooled'" in result.output
    result = run("inspect", tmp_path / "missing.safetensors")
    assert result.exit_code == 2 and "no SPM file" in result.output


def assert_one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert all(p in result.output for p in parts), result.output


@pytest.fixture()
def no_load(monkeypatch):
    """Bad input must be refused before the model loads: loading fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(spm, "load_pipeline", boom)


def test_train_refuses_bad_input_before_loading(tiny_dir, tmp_path, no_load, monkeypatch):
    (tmp_path / "dd.safetensors").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "s.safetensors.ckpt.pt").write_bytes(b"garbage")
    ok = tmp_path / "ok.safetensors"
    for extra, message in [
        (["--out", tmp_path / "dd.safetensors"], "is a directory"),
        (["--out", tmp_path / "afile" / "x.safetensors"], "afile is a file"),
        (["--out", tmp_path / "s.safetensors"], "not a training checkpoint: delete it"),
        (["--out", ok, "--lr", -1], "lr must be greater than 0, not -1.0 (option --lr)"),
        (["--out", ok, "-t", " "], "--target is empty"),
        (["--out", ok, "--resolution", 7], "--resolution 7: give a positive multiple of 8"),
        (["--out", ok, "--resolution", 0], "--resolution 0"),
        (["--out", ok, "--device", "bogus"], "not a torch device"),
        (["--out", ok, "--lr", "inf"], "lr must be a finite number, not inf (option --lr)"),
        (["--out", ok, "--lr", "nan"], "lr must be a finite number, not nan (option --lr)"),
        (
            ["--out", ok, "--checkpoint-every", -1],
            "checkpoint_every must be at least 0, not -1 (option --checkpoint-every)",
        ),
        (["--out", ok, "--anchor-weight", -1], "anchor_weight must be at least 0, not -1.0 (option --anchor-weight)"),
    ]:
        assert_one_line_error(run("train", "--model", tiny_dir, "-t", "x", *extra), message)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run("train", "--model", tiny_dir, "-t", "x", "--out", ok, "--device", "cuda")
    assert_one_line_error(result, "CUDA is not available")


def test_train_refuses_a_checkpoint_from_other_settings(tiny_dir, tmp_path):
    out = tmp_path / "s.safetensors"
    torch.save({"step": 1, "fingerprint": "other settings"}, tmp_path / "s.safetensors.ckpt.pt")
    result = run("train", "--model", tiny_dir, "-t", "x", "--iterations", 1, "--resolution", 16, "--out", out)
    assert_one_line_error(result, "from other settings or targets: delete it")


def test_a_diverging_training_exits_non_zero_in_one_line_writes_nothing_and_keeps_the_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "big.safetensors"
    result = run("train", "--model", tiny_dir, "-t", "star", "--iterations", 5, "--lr", 1e6, "--resolution", 16,
                 "--checkpoint-every", 1, "--out", out)  # fmt: skip
    # the loss or, one step earlier, the factors (checked before each checkpoint) become NaN
    assert_one_line_error(result, "error: ", " became ", " at step ", "lower lr (now 1000000.0)", "is kept")
    assert "wrote" not in result.output and not out.exists()
    saved = torch.load(tmp_path / "big.safetensors.ckpt.pt", weights_only=True)
    assert f"the checkpoint at step {saved['step']} is kept" in result.output
    assert all(torch.isfinite(p).all() for p in saved["params"])


def test_generate_refuses_bad_input_before_loading(tiny_dir, tmp_path, no_load):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    images = tmp_path / "images"
    for extra, message in [
        (["--steps", -3], "Invalid value for '--steps'"),
        (["--steps", 0], "Invalid value for '--steps'"),
        (["--num-images", 0], "Invalid value for '--num-images'"),
        (["--out", tmp_path / "afile"], "afile is a file: give a directory"),
        (["--spm", tmp_path / "garbage.safetensors"], "garbage.safetensors: not a safetensors file"),
        (["--similarity", "bogus"], "unknown similarity 'bogus'"),
        (["--device", "bogus"], "not a torch device"),
        (["--guidance", "nan"], "--guidance nan: give a finite number"),
        (["--guidance", "inf"], "--guidance inf: give a finite number"),
    ]:
        args = ["--out", images, *extra] if "--out" not in extra else extra
        assert_one_line_error(run("generate", "--model", tiny_dir, "-p", "x", *args), message)


def test_inspect_names_the_bad_file_and_field(tmp_path):
    path = tmp_path / "badmeta.safetensors"
    tensors = {"lora_unet_a.lora_down.weight": torch.zeros(1, 2), "lora_unet_a.lora_up.weight": torch.zeros(2, 1)}
    for field in ("prompts", "spm_provenance"):
        save_file(tensors, str(path), metadata={field: "[x"})
        assert_one_line_error(run("inspect", path), str(path), f"metadata field '{field}' is not valid JSON")
    path.write_bytes(b"garbage")
    assert_one_line_error(run("inspect", path), f"{path}: not a safetensors file")


def test_model_paths_that_are_not_pipelines(tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["-p", "x", "--out", tmp_path / "images"]
    result = run("generate", "--model", tmp_path / "empty", *args)
    assert_one_line_error(result, "is not a diffusers pipeline directory (no model_index.json)")
    result = run("generate", "--model", "/nonexistent/dir", *args)
    assert_one_line_error(result, "no such directory: /nonexistent/dir")


# A toy model's SPM settings, as the benchmark's model file gives them (lr written the way YAML users do).
TOY_SETTINGS = "iterations: 300\nlr: 1e-2\nwarmup_steps: 10\nrollout_steps: 10\nanchor_weight: 30.0\n"


def test_the_command_line_trains_the_spm_the_library_trains(tiny_dir, tmp_path):
    cfg = spm.TrainConfig(
        iterations=2, lr=1e-2, warmup_steps=10, rollout_steps=10, anchor_weight=30.0, resolutions=(16,)
    )
    reference = spm.train(spm.load_pipeline(str(tiny_dir)), ["snoopy"], config=cfg, progress=False)
    config = tmp_path / "spm.yaml"
    config.write_text(TOY_SETTINGS + "resolutions: [16]\n")
    from_flags = ["--iterations", 2, "--lr", 1e-2, "--warmup-steps", 10, "--rollout-steps", 10, "--anchor-weight", 30,
                  "--resolution", 16]  # fmt: skip
    for i, args in enumerate((["--config", config, "--iterations", 2], from_flags)):  # the option overrides the file
        out = tmp_path / f"{i}.safetensors"
        result = run("train", "--model", tiny_dir, "-t", "snoopy", *args, "--out", out)
        assert result.exit_code == 0, result.output
        trained = spm.SPM.load(out)
        assert trained.provenance["train_config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
        for name, (down, up) in reference.layers.items():
            assert torch.equal(trained.layers[name][0], down) and torch.equal(trained.layers[name][1], up)


def test_every_training_setting_is_an_option(tiny_dir, tmp_path, monkeypatch):
    command = typer.main.get_command(app).commands["train"]
    options = {name for param in command.params for name in param.opts}
    assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(spm.TrainConfig)} <= options
    assert {"--iterations", "--lr", "--anchor-weight", "--num-anchors", "--legacy-anchors", "--vocabulary-anchors",
            "--resolution", "--dtype", "--seed", "--checkpoint-every", "--config"} <= options  # fmt: skip
    seen = []

    def record(pipe, targets, surrogate, config, checkpoint):
        seen.append(config)
        raise ValueError("recorded")

    monkeypatch.setattr(spm, "train", record)
    args = ["--weight-decay", 0.5, "--restarts", 1, "--eta", 2, "--no-legacy-anchors", "--legacy-schedule",
            "--anchor-scale", 1, 1.5, "--rollout-guidance", 4, "--resolution", 16, "--resolutions", 24, "--rank", 2,
            "--alpha", 3, "--dtype", "bfloat16", "--seed", 7, "--num-anchors", 1, "--vocabulary-anchors", 3]  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text("legacy_anchors: true\nseed: 1\nrank: 4\n")
    result = run(
        "train", "--model", tiny_dir, "-t", "x", "--config", config, *args, "--out", tmp_path / "s.safetensors"
    )
    assert_one_line_error(result, "recorded")
    assert seen == [
        spm.TrainConfig(weight_decay=0.5, restarts=1, eta=2.0, legacy_anchors=False, legacy_schedule=True,
                        anchor_scale=(1.0, 1.5), rollout_guidance=4.0, resolutions=(16, 24), rank=2, alpha=3.0,
                        dtype="bfloat16", seed=7, num_anchors=1, vocabulary_anchors=3)
    ]  # fmt: skip


def test_a_bad_config_file_is_refused_in_one_line_naming_the_key(tiny_dir, tmp_path, no_load):
    ok = tmp_path / "ok.safetensors"
    for text, extra, message in [
        ("lr: 1e-2\nwarmup: 10\n", [], "unknown setting 'warmup'; the settings are iterations, lr,"),
        ("iterations: '300'\n", [], "iterations must be a whole number, not '300' (in --config "),
        ("lr: .nan\n", [], "lr must be a finite number, not nan (in --config "),
        ("anchor_weight: -.inf\n", [], "anchor_weight must be a finite number, not -inf (in --config "),
        ("legacy_anchors: 'yes'\n", [], "legacy_anchors must be true or false, not 'yes' (in --config "),
        ("resolutions: 16\n", [], "resolutions must be a list of sizes in pixels, e.g. [256, 320], not 16"),
        ("resolutions: [12]\n", [], "resolutions in --config "),
        ("seed: 1.5\n", [], "seed must be a whole number, not 1.5 (in --config "),
        ("- lr\n", [], "must be a mapping of training settings (name: value), not a list"),
        ("lr: [\n", [], "is not valid YAML"),
        ("lr: -1\n", ["--lr", 0.1, "--iterations", 0], "iterations must be at least 1, not 0 (option --iterations)"),
    ]:
        config = tmp_path / "c.yaml"
        config.write_text(text)
        result = run("train", "--model", tiny_dir, "-t", "x", "--config", config, *extra, "--out", ok)
        assert_one_line_error(result, message)
        assert len(result.output.strip().splitlines()) == 1, result.output
    result = run("train", "--model", tiny_dir, "-t", "x", "--config", tmp_path / "none.yaml", "--out", ok)
    assert_one_line_error(result, "none.yaml: cannot read it")
    config.write_text("lr: .nan\n")  # the option overrides the file's bad value
    result = run("train", "--model", tiny_dir, "-t", "x", "--config", config, "--lr", 0.1, "--out", ok)
    assert "the model was loaded" in str(result.exception)  # it got past every check


def test_generate_takes_its_defaults_from_the_model_folder(tiny_dir, tmp_path):
    declared = tmp_path / "model"
    shutil.copytree(tiny_dir, declared)
    (declared / "generation_config.json").write_text('{"guidance_scale": 3.0, "num_inference_steps": 2}')

    def generate(model, out, *flags):
        result = run("generate", "--model", model, "-p", "a cat", "--out", tmp_path / out, *flags)
        assert result.exit_code == 0, result.output
        return [path.read_bytes() for path in sorted((tmp_path / out).glob("*.png"))] or None

    assert generate(declared, "a") == generate(tiny_dir, "b", "--guidance", 3, "--steps", 2)
    assert generate(declared, "c", "--guidance", 7.5, "--steps", 3) == generate(tiny_dir, "d", "--steps", 3)
    assert generate(tiny_dir, "e") == generate(tiny_dir, "f", "--guidance", 7.5, "--steps", 30)  # none declared


def test_a_bad_generation_config_is_refused_in_one_line(tiny_dir, tmp_path, no_load):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    for text, message in [
        ("{", "generation_config.json is not valid JSON"),
        ("[3]", "must be a JSON object"),
        (
            '{"guidance_scale": NaN}',
            "guidance_scale must be a finite number, not nan: fix the file, or give --guidance",
        ),
        ('{"num_inference_steps": 0}', "num_inference_steps must be a positive whole number, not 0"),
        ('{"num_inference_steps": 2.5}', "num_inference_steps must be a positive whole number, not 2.5"),
    ]:
        (model / "generation_config.json").write_text(text)
        result = run("generate", "--model", model, "-p", "x", "--out", tmp_path / "images")
        assert_one_line_error(result, message)


def test_a_failed_run_removes_the_output_folders_it_made_and_only_those(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    existing = tmp_path / "existing"
    existing.mkdir()
    for model, extra in [
        ("/nonexistent/dir", []),
        (broken, []),
        (tiny_dir, ["--spm", tmp_path / "garbage.safetensors"]),
    ]:
        for out in (tmp_path / "new" / "images", existing):
            result = run("generate", "--model", model, "-p", "x", "--steps", 1, "--out", out, *extra)
            assert result.exit_code != 0
        assert not (tmp_path / "new").exists() and existing.is_dir()
    result = run("train", "--model", "/nonexistent/dir", "-t", "x", "--out", tmp_path / "new" / "s.safetensors")
    assert_one_line_error(result, "no such directory")
    assert not (tmp_path / "new").exists()


def test_a_full_disk_loses_no_training_and_the_rerun_does_not_train_again(
    tiny_dir, tmp_path, disk_full_for, monkeypatch
):
    out = tmp_path / "s.safetensors"
    args = ["train", "--model", tiny_dir, "-t", "star", "--iterations", 3, "--resolution", 16, "--out", out]
    free_again = disk_full_for(".safetensors")
    result = run(*args)
    assert_one_line_error(result, f"cannot write {out}: no space left", "needs", "kept in", ".ckpt.pt")
    assert not out.exists() and torch.load(tmp_path / "s.safetensors.ckpt.pt", weights_only=True)["step"] == 3
    free_again()
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda *a, **k: pytest.fail("the rerun trained again"))
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert out.exists() and not (tmp_path / "s.safetensors.ckpt.pt").exists()
    monkeypatch.undo()
    again = tmp_path / "again.safetensors"
    assert run(*args[:-1], again).exit_code == 0  # the same training, uninterrupted
    kept, uninterrupted = spm.SPM.load(out).layers, spm.SPM.load(again).layers
    assert kept.keys() == uninterrupted.keys()
    assert all(torch.equal(a, b) for name in kept for a, b in zip(kept[name], uninterrupted[name]))


def test_generate_on_a_full_disk_is_one_line_and_leaves_no_image(tiny_dir, tmp_path, disk_full_for):
    disk_full_for(".png")
    images = tmp_path / "images"
    result = run("generate", "--model", tiny_dir, "-p", "a star", "--steps", 1, "--out", images)
    assert_one_line_error(result, "cannot write", ".png: no space left", "needs")
    assert not images.exists() or not any(images.iterdir())


def test_a_full_disk_for_the_checkpoint_only_still_writes_the_spm(tiny_dir, tmp_path, disk_full_for):
    """The finished training's checkpoint is a safety copy: if it does not fit, the SPM is still saved."""
    out = tmp_path / "s.safetensors"
    disk_full_for(".ckpt.pt")
    result = run("train", "--model", tiny_dir, "-t", "star", "--iterations", 2, "--resolution", 16, "--out", out)
    assert result.exit_code == 0, result.output
    assert spm.SPM.load(out).targets == ["star"] and not (tmp_path / "s.safetensors.ckpt.pt").exists()


def test_a_full_disk_with_no_checkpoint_kept_does_not_claim_one(tiny_dir, tmp_path, disk_full_for):
    out = tmp_path / "s.safetensors"
    disk_full_for(".safetensors", ".ckpt.pt")
    result = run("train", "--model", tiny_dir, "-t", "star", "--iterations", 2, "--resolution", 16, "--out", out)
    assert_one_line_error(result, f"cannot write {out}: no space left")
    assert "kept" not in result.output and not out.exists()


def test_a_config_file_that_is_not_text_is_one_line(tiny_dir, tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_bytes(b"lr: \xff\xfe\x00")
    result = run("train", "--model", tiny_dir, "-t", "x", "--config", config, "--out", tmp_path / "s.safetensors")
    assert_one_line_error(result, f"--config {config}: cannot read it")


@pytest.mark.parametrize(
    ("config", "family", "layers", "parameters"),
    [("SDXL_UNET_CONFIG", "SDXL", 722, "2,659,840"), ("SD1_UNET_CONFIG", "SD 1.x/2.x", None, None)],
)
def test_inspect_reads_the_family_off_diffusers_module_names(config, family, layers, parameters, tmp_path):
    """The released SPM code's SDXL script names layers by diffusers' module paths (down_blocks_1_...), as SD 1.x
    files are named: inspect reads the family off the names (SDXL's first down block has no attention, its
    deeper blocks stack transformer blocks), not 'SD 1.x/2.x' for every non-kohya SDXL file."""
    from diffusers import UNet2DConditionModel

    from spm import models
    from spm.adapter import layer_names

    with torch.device("meta"):
        unet = UNet2DConditionModel(**getattr(models, config))
    s = spm.SPM.init(unet, ["snoopy"])
    paths = layer_names(unet)
    path = tmp_path / "diffusers-named.safetensors"
    spm.SPM(s.targets, {paths[name].replace(".", "_"): f for name, f in s.layers.items()}).save(path)
    info = run("inspect", path)
    assert info.exit_code == 0, info.output
    assert f"family:     {family}\n" in info.output and "lora_unet_down_blocks" not in info.output
    if layers is not None:
        assert f"layers:     {layers}\n" in info.output and f"parameters: {parameters}\n" in info.output


@pytest.mark.parametrize(
    ("model_dir", "layers", "family"),
    [("tiny_sdxl_dir", "192 layers, 9,680 parameters", "sdxl"), ("tiny_sd3_dir", "20 layers, 464 parameters", "sd3")],
)
def test_the_command_line_trains_and_generates_on_each_family(model_dir, layers, family, request, tmp_path):
    model, out = request.getfixturevalue(model_dir), tmp_path / "snoopy.safetensors"
    train = ["train", "--model", model, "--target", "snoopy", "--iterations", 1, "--rollout-steps", 2, "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in train])
    assert result.exit_code == 0, result.output
    assert layers in result.output and spm.SPM.load(out).family == family
    generate = [
        "generate",
        "--model",
        model,
        "--spm",
        out,
        "--prompt",
        "snoopy",
        "--steps",
        2,
        "--out",
        tmp_path / "i",
    ]
    result = CliRunner().invoke(app, [str(a) for a in generate])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "i").glob("*.png"))) == 1


def test_transformer_pipelines_sample_with_their_own_defaults(pipe, tiny_sd3_dir, tiny_flux_dir):
    """Without a generation_config.json: SD's 7.5 and 30 steps on a UNet pipeline, a transformer pipeline's own
    (SD3: 7.0, 28; FLUX.1: its embedded guidance 3.5, 28), not SD's CFG 7.5 as FLUX.1's guidance."""
    import spm
    from spm.cli import _pipeline_defaults

    assert _pipeline_defaults(pipe) == {"guidance_scale": 7.5, "num_inference_steps": 30}
    assert _pipeline_defaults(spm.load_pipeline(str(tiny_sd3_dir))) == {
        "guidance_scale": 7.0,
        "num_inference_steps": 28,
    }
    assert _pipeline_defaults(spm.load_pipeline(str(tiny_flux_dir))) == {
        "guidance_scale": 3.5,
        "num_inference_steps": 28,
    }
