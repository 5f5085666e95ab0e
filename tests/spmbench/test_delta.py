"""Weight deltas: applied exactly, undone exactly, refused on another architecture."""

import pytest
import torch

from spmbench.erasers.delta import applied, load_delta, save_delta


def test_apply_adds_the_delta_and_exit_restores(pipe, tmp_path):
    name = next(n for n, _ in pipe.unet.named_parameters() if n.endswith("attn2.to_k.weight"))
    param = dict(pipe.unet.named_parameters())[name]
    before = param.detach().clone()
    delta = torch.randn_like(before)
    path = save_delta(tmp_path / "edit.safetensors", {name: delta}, method="test", targets=["snoopy"])
    assert load_delta(path)[0] == "unet"
    with applied(pipe, [path, path]):  # two edits add up
        torch.testing.assert_close(param.detach(), before + 2 * delta)
    assert torch.equal(param.detach(), before)


def test_text_encoder_component(pipe, tmp_path):
    name, param = next(iter(pipe.text_encoder.named_parameters()))
    before = param.detach().clone()
    path = save_delta(tmp_path / "te.safetensors", {name: torch.ones_like(before)}, component="text_encoder")
    with applied(pipe, [path]):
        torch.testing.assert_close(param.detach(), before + 1)
    assert torch.equal(param.detach(), before)


@pytest.mark.parametrize("bad", ["no.such.layer.weight", "shape"])
def test_another_architecture_is_refused_and_nothing_changes(pipe, tmp_path, bad):
    good, param = next(iter(pipe.unet.named_parameters()))
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    deltas = {good: torch.ones_like(param)}
    deltas[bad if bad != "shape" else good] = torch.ones(3, 3) if bad == "shape" else torch.ones(1)
    path = save_delta(tmp_path / "edit.safetensors", deltas)
    with pytest.raises(ValueError, match="fitted on another architecture"):
        with applied(pipe, [path]):
            pass
    assert all(torch.equal(p.detach(), before[n]) for n, p in pipe.unet.named_parameters())
