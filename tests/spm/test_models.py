from pathlib import Path

import pytest
import torch

import spm


def test_pipelines_load_in_the_dtype_asked_for_whatever_their_files_hold(tiny_dir, tmp_path):
    half = spm.load_pipeline(str(tiny_dir), dtype=torch.bfloat16)
    assert {half.unet.dtype, half.text_encoder.dtype, half.vae.dtype} == {torch.bfloat16}
    half.save_pretrained(tmp_path / "half")  # files in bfloat16, like the toy world's float16 ones
    full = spm.load_pipeline(str(tmp_path / "half"))
    assert {full.unet.dtype, full.text_encoder.dtype, full.vae.dtype} == {torch.float32}


def test_local_paths_that_are_not_pipelines_say_so(tiny_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is not a diffusers pipeline directory"):
        spm.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is a file, not a diffusers pipeline directory"):
        spm.resolve_model(str(tmp_path / "afile"))
    for missing in ("/nonexistent/dir", "./missing", "~/missing-spm-model", "a/b/c"):
        with pytest.raises(ValueError, match=f"no such directory: {missing}"):
            spm.resolve_model(missing)
    assert spm.resolve_model("org/name") == "org/name"  # a hub id
    assert spm.resolve_model(str(tiny_dir)) == str(tiny_dir)


@pytest.mark.parametrize("name", ["toy-base", "sd14", "org/"])
def test_a_short_name_is_refused_in_one_line(name):
    with pytest.raises(ValueError, match=r"neither a local diffusers directory nor a hub id \(org/name\)") as error:
        spm.load_pipeline(name)
    assert "ask the registry that defines it" in str(error.value) and "\n" not in str(error.value)


def test_nothing_in_spm_names_the_benchmark():
    """spm resolves paths and hub ids only; benchmark model names belong to the benchmark's registry."""
    root = Path(spm.__file__).parent
    tests = Path(__file__).parent
    files = [*root.rglob("*.py"), *tests.rglob("*.py"), tests.parent / "tiny.py", tests.parent / "conftest.py"]
    naming = [str(f) for f in files if "spm" + "bench" in f.read_text()]
    assert len(files) > 10 and naming == []
