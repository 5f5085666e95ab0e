import torch

import spm


def test_pipelines_load_in_the_dtype_asked_for_whatever_their_files_hold(tiny_dir, tmp_path):
    half = spm.load_pipeline(str(tiny_dir), dtype=torch.bfloat16)
    assert {half.unet.dtype, half.text_encoder.dtype, half.vae.dtype} == {torch.bfloat16}
    half.save_pretrained(tmp_path / "half")  # files in bfloat16, like the toy world's float16 ones
    full = spm.load_pipeline(str(tmp_path / "half"))
    assert {full.unet.dtype, full.text_encoder.dtype, full.vae.dtype} == {torch.float32}
