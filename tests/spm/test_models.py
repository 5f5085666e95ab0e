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
