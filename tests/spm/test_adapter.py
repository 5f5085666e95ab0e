import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spm import SPM
from tests import tiny


def random_spm(unet, targets=("snoopy",), seed=0):
    return tiny.random_spm(unet, targets, seed, scale=1.0)  # unit-scale up factors: clearly non-zero effects


def test_fresh_spm_is_zero_up_and_kaiming_down(pipe):
    spm = SPM.init(pipe.unet, ["snoopy"])
    for down, up in spm.layers.values():
        assert torch.count_nonzero(up) == 0
        bound = down.shape[1] ** -0.5  # kaiming-uniform a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert down.abs().max() <= bound and down.abs().max() > 0.5 * bound


def test_round_trip_keeps_weights_targets_and_provenance(pipe, tmp_path):
    spm = random_spm(pipe.unet, ["snoopy", "snoopy the dog"])
    spm.provenance = {"base_model": "tiny", "train_config": {"iterations": 3}}
    path = tmp_path / "s.safetensors"
    spm.save(path)
    back = SPM.load(path)
    assert back.targets == spm.targets and back.alpha == 1.0 and back.rank == 1
    assert back.provenance == spm.provenance
    for name, (d, u) in spm.layers.items():
        torch.testing.assert_close(back.layers[name][0], d, rtol=0, atol=0)
        torch.testing.assert_close(back.layers[name][1], u, rtol=0, atol=0)


def test_file_uses_kohya_keys_and_metadata(pipe, tmp_path):
    path = tmp_path / "s.safetensors"
    random_spm(pipe.unet).save(path)
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in keys
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha" in keys
    assert json.loads(meta["prompts"]) == ["snoopy"]
    assert meta["rank"] == "1" and meta["alpha"] == "1.0" and meta["spm_format_version"] == "1"


def test_released_layout_loads(pipe, tmp_path):
    """The released files: fp16 factors, comma-separated prompts, no provenance."""
    spm = random_spm(pipe.unet)
    tensors = {}
    for name, (d, u) in spm.layers.items():
        tensors[f"lora_unet_{name}.lora_down.weight"] = d.half()
        tensors[f"lora_unet_{name}.lora_up.weight"] = u.half()
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(1.0).half()
    path = tmp_path / "released.safetensors"
    save_file(tensors, str(path), metadata={"prompts": "snoopy, snoopy dog", "rank": "1", "alpha": "1.0"})
    back = SPM.load(path)
    assert back.targets == ["snoopy", "snoopy dog"] and back.provenance == {}
    assert back.layers.keys() == spm.layers.keys()
    assert SPM.load(path, targets=["other"]).targets == ["other"]


def test_not_an_spm_file_says_so(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an SPM"):
        SPM.load(path)
    with pytest.raises(FileNotFoundError, match="no SPM file"):
        SPM.load(tmp_path / "missing.safetensors")


def test_save_is_atomic_and_leaves_no_temp(pipe, tmp_path):
    path = tmp_path / "s.safetensors"
    random_spm(pipe.unet).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_a_file_without_alpha_takes_the_lora_convention_alpha_equals_rank(pipe, tmp_path):
    spm = SPM.init(pipe.unet, ["snoopy"], rank=2)
    tensors = {}
    for name, (d, u) in spm.layers.items():
        tensors[f"lora_unet_{name}.lora_down.weight"] = d
        tensors[f"lora_unet_{name}.lora_up.weight"] = u
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    assert SPM.load(tmp_path / "plain.safetensors").scale == 1.0  # as diffusers' LoRA loader applies it


def test_a_garbage_file_or_bad_metadata_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"garbage, not safetensors")
    with pytest.raises(ValueError, match="x.safetensors: not a safetensors file"):
        SPM.load(path)
    tensors = {"lora_unet_a.lora_down.weight": torch.zeros(1, 2), "lora_unet_a.lora_up.weight": torch.zeros(2, 1)}
    for metadata, problem in [
        ({"prompts": "[x"}, "metadata field 'prompts' is not valid JSON"),
        ({"spm_provenance": "{x"}, "metadata field 'spm_provenance' is not valid JSON"),
        ({"spm_provenance": "[1]"}, "metadata field 'spm_provenance' is not a JSON object"),
    ]:
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(ValueError, match=f"x.safetensors: {problem}"):
            SPM.load(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_file_with_a_non_finite_tensor_is_refused_naming_the_tensor_and_the_file(pipe, tmp_path, bad):
    spm = random_spm(pipe.unet)
    name = sorted(spm.layers)[3]
    spm.layers[name][1][0, 0] = bad
    path = tmp_path / "diverged.safetensors"
    spm.save(path)
    with pytest.raises(ValueError, match="NaN or infinite") as caught:
        SPM.load(path)
    message = str(caught.value)
    assert str(path) in message and f"lora_unet_{name}.lora_up.weight" in message and "\n" not in message


def test_a_non_finite_alpha_is_refused(pipe, tmp_path):
    spm = random_spm(pipe.unet)
    spm.alpha = float("inf")
    path = tmp_path / "s.safetensors"
    spm.save(path)
    with pytest.raises(ValueError, match=f"{path}: tensor .*alpha holds NaN or infinite"):
        SPM.load(path)


def test_saving_twice_gives_the_same_bytes(pipe, tmp_path):
    """The same SPM is the same file (safetensors alone orders the metadata at random), mode 0644."""
    spm = random_spm(pipe.unet)
    spm.provenance = {"base_model": "tiny", "train_config": {"iterations": 3}}
    old = os.umask(0o022)
    try:
        for name in ("a", "b", "c"):
            spm.save(tmp_path / f"{name}.safetensors")
    finally:
        os.umask(old)
    assert len({(tmp_path / f"{n}.safetensors").read_bytes() for n in "abc"}) == 1
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644


def _with_header(data: bytes, header) -> bytes:
    import struct

    (length,) = struct.unpack("<Q", data[:8])
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def test_fuzzed_spm_files_load_or_are_one_line_value_errors(pipe, tmp_path):
    """Every mutant of a saved SPM (its bytes, then its header's values) loads with finite weights,
    or is a ValueError naming the file in one line."""
    import struct

    from tests.fuzz import byte_mutants, value_mutants

    path = tmp_path / "s.safetensors"
    random_spm(pipe.unet).save(path)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    mutants = list(byte_mutants(data, 300)) + [_with_header(data, h) for h in value_mutants(header, 300)]
    for mutant in mutants:
        path.write_bytes(mutant)
        try:
            loaded = SPM.load(path)
        except ValueError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)
            continue
        assert all(torch.isfinite(t).all() for pair in loaded.layers.values() for t in pair)
