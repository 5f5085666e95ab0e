from typer.testing import CliRunner

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
    result = run("generate", "--model", "toy-bse", "--prompt", "x", "--out", tmp_path)
    assert result.exit_code == 2 and "did you mean 'toy-base'" in result.output
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
