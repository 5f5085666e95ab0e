import pytest
import torch
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
