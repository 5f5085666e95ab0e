"""RECE: the adversarial embedding is the ridge solution, each round erases it, rounds=0 is UCE."""

import pytest
import torch
from safetensors.torch import load_file

from spmbench.erasers import ERASERS
from spmbench.erasers.rece import RECE, adversarial_embedding, rece_edit
from spmbench.erasers.uce import UCE, cross_attention_projections, edit_rows


def test_adversarial_embedding_equals_a_direct_least_squares_solve():
    gen = torch.Generator().manual_seed(0)
    d = 4
    original = [torch.randn(5, d, generator=gen, dtype=torch.float64) for _ in range(3)]
    edited = [w + 0.3 * torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in original]
    target = torch.randn(2, d, generator=gen, dtype=torch.float64)
    reg = 0.1
    # min_e sum |W'e - Wc|^2 + reg |e|^2 as one stacked least-squares problem, one column per token
    a = torch.cat([*edited, reg**0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([*(w @ target.T for w in original), torch.zeros(d, 2, dtype=torch.float64)])
    direct = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(adversarial_embedding(edited, original, target, reg), direct)


def _problem(pipe):
    c, g, p = edit_rows(pipe, ["snoopy"], "", ["a photo of a dog"])
    weights = {n: layer.weight.detach().float() for n, layer in cross_attention_projections(pipe.unet).items()}
    return weights, c, g, p


def _distance(weights, e, g, originals):
    """How far the embedding's outputs through `weights` are from the guide's original outputs."""
    return sum(
        float(((weights[n].double() @ e.double().T) - (w.double() @ g.double().T)).norm() ** 2)
        for n, w in originals.items()
    )


def test_each_round_erases_the_embedding_it_found(pipe):
    weights, c, g, p = _problem(pipe)
    previous, _ = rece_edit(weights, c, g, p, lam=0.5, rounds=0, lambda_reg=1e-3)
    for rounds in (1, 2, 3):
        edited, found = rece_edit(weights, c, g, p, lam=0.5, rounds=rounds, lambda_reg=1e-3)
        assert len(found) == rounds and found[-1].shape == c.shape
        e = found[-1]  # found against the previous round's weights
        assert _distance(edited, e, g, weights) < 0.5 * _distance(previous, e, g, weights)
        previous = edited


def test_rece_edits_only_cross_attention_key_value(pipe, tmp_path):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    te_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    eraser = ERASERS.get("rece")
    artifacts = eraser.fit(pipe, ("snoopy",), tmp_path, 16)
    assert eraser.fit(pipe, ("snoopy",), tmp_path, 16) == artifacts
    layers = cross_attention_projections(pipe.unet)
    with eraser.apply(pipe, artifacts):
        changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
        assert all(torch.equal(v, te_before[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert changed == {f"{n}.weight" for n in layers}
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_zero_rounds_is_uce_exactly_and_rounds_change_the_edit(pipe, tmp_path):
    settings = {"guide": "", "preserve": ["a photo of a dog"], "lam": 0.5}
    uce = load_file(str(UCE().fit(pipe, ("snoopy",), tmp_path / "uce", 16, settings)[0]))
    rece0 = load_file(str(RECE().fit(pipe, ("snoopy",), tmp_path / "r0", 16, settings | {"rounds": 0})[0]))
    rece3 = load_file(str(RECE().fit(pipe, ("snoopy",), tmp_path / "r3", 16, settings)[0]))
    assert rece0.keys() == uce.keys() and all(torch.equal(rece0[k], uce[k]) for k in uce)
    assert any(not torch.allclose(rece3[k], uce[k]) for k in uce)


def test_bad_settings_are_errors(pipe, tmp_path):
    with pytest.raises(ValueError, match="unknown field.*'round'"):
        RECE().fit(pipe, ("snoopy",), tmp_path, 16, {"round": 2})
    with pytest.raises(ValueError, match="rounds must be"):
        RECE().fit(pipe, ("snoopy",), tmp_path, 16, {"rounds": -1})
