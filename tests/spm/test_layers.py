import pytest
import torch
from torch import nn

from spm.adapter import SPM
from spm.layers import MembraneLayer, PermeabilityState, membrane_targets


def dense_reference(base, branches, gamma_row, legacy=False):
    """W + sum_i gamma_i s_i U_i D_i as one dense matrix (or the released gamma^2 factor-sum)."""
    w = base.weight.detach().clone()
    flat = lambda t: t.flatten(1)  # noqa: E731
    if legacy:
        u = sum(g * flat(up) for g, (_, up, _) in zip(gamma_row, branches))
        d = sum(g * flat(down) for g, (down, _, _) in zip(gamma_row, branches))
        return w + branches[0][2] * (u @ d).view_as(w)
    for g, (down, up, s) in zip(gamma_row, branches):
        w = w + g * s * (flat(up) @ flat(down)).view_as(w)
    return w


def make_layer(kind, k=3, rank=1, equal_scales=False):
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if kind == "linear" else nn.Conv2d(6, 5, 1)
    state = PermeabilityState()
    layer = MembraneLayer(base, state)
    branches = []
    for i in range(k):
        shape_d, shape_u = ((rank, 6), (5, rank)) if kind == "linear" else ((rank, 6, 1, 1), (5, rank, 1, 1))
        down, up, s = torch.randn(shape_d), torch.randn(shape_u), 0.5 if equal_scales else 0.5 + i
        layer.add_branch(down, up, s)
        branches.append((down, up, s))
    return base, layer, state, branches


def apply_dense(base, weight, x):
    if isinstance(base, nn.Linear):
        return nn.functional.linear(x, weight, base.bias)
    return nn.functional.conv2d(x, weight, base.bias)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("legacy", [False, True])
def test_membrane_matches_dense_reference_per_sample(kind, legacy):
    base, layer, state, branches = make_layer(kind, equal_scales=legacy)
    gamma = torch.tensor([[1.0, 0.0, 0.3], [0.2, 0.9, 0.0]])
    state.gamma, state.legacy = gamma, legacy
    x = torch.randn(4, 7, 6) if kind == "linear" else torch.randn(4, 6, 3, 3)  # 4 rows = CFG copies of 2 prompts
    y = layer(x)
    for row in range(4):
        g = gamma[row % 2]  # [uncond_0, uncond_1, cond_0, cond_1]: each prompt's gamma on both branches
        ref = apply_dense(base, dense_reference(base, branches, g, legacy), x[row : row + 1])
        torch.testing.assert_close(y[row : row + 1], ref, rtol=1e-5, atol=1e-5)


def test_rank_two_branch_and_default_gamma_is_one():
    base, layer, state, branches = make_layer("linear", k=2, rank=2)
    x = torch.randn(3, 6)
    ref = apply_dense(base, dense_reference(base, branches, [1.0, 1.0]), x)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


def test_legacy_rejects_unequal_scales():
    _, layer, state, _ = make_layer("linear")
    state.legacy = True
    with pytest.raises(ValueError, match="legacy"):
        layer(torch.randn(2, 6))


def test_batch_that_does_not_tile_the_prompts_is_an_error():
    _, layer, state, _ = make_layer("linear")
    state.gamma = torch.ones(3, 3)
    with pytest.raises(ValueError, match="does not tile"):
        layer(torch.randn(4, 6))


def sd15_unet_on_meta():
    from diffusers import UNet2DConditionModel

    from spm.models import SD1_UNET_CONFIG

    with torch.device("meta"):
        return UNet2DConditionModel(**SD1_UNET_CONFIG)


def test_sd15_membrane_covers_192_layers_and_423936_parameters():
    unet = sd15_unet_on_meta()
    layers = membrane_targets(unet)
    assert len(layers) == 192
    kinds = {name.rsplit(".", 1)[-1] if not name.endswith("to_out.0") else "to_out.0" for name in layers}
    assert kinds == {"proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "proj", "2"}
    params = sum(
        m.in_features + m.out_features if isinstance(m, nn.Linear) else m.in_channels + m.out_channels
        for m in layers.values()
    )
    assert params == 423_936
    spm = SPM.init(unet, ["x"])  # the factors themselves live on the CPU
    assert len(spm.layers) == 192 and spm.num_parameters == 423_936


def test_packed_factors_follow_in_place_edits():
    base, layer, state, branches = make_layer("linear", k=2)
    x = torch.randn(2, 6)
    layer(x)
    with torch.no_grad():
        layer.up[1].mul_(3.0)  # an edit after the first call must not be served from a stale cache
    scaled = [(d, u * (3.0 if i == 1 else 1.0), s) for i, (d, u, s) in enumerate(branches)]
    torch.testing.assert_close(
        layer(x), apply_dense(base, dense_reference(base, scaled, [1.0, 1.0]), x), rtol=1e-5, atol=1e-5
    )


def test_factors_made_trainable_after_a_cached_call_get_gradients():
    _, layer, state, _ = make_layer("linear", k=2)
    x = torch.randn(2, 6)
    layer(x)  # frozen factors: packed and cached
    for p in [*layer.down, *layer.up]:
        p.requires_grad_(True)
    for gamma in (None, torch.tensor([[1.0, 0.5], [0.0, 1.0]])):  # the folded and the per-row paths
        state.gamma = gamma
        layer(x).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*layer.down, *layer.up]), gamma
        layer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_every_new_permeability_is_used_not_a_cached_one(kind):
    base, layer, state, branches = make_layer(kind)
    x = torch.randn(4, 7, 6) if kind == "linear" else torch.randn(4, 6, 3, 3)
    # One prompt (folded weight), two prompts (per-row branches), then one again, then none (all ones).
    for gamma in ([[1.0, 0.0, 0.3]], [[1.0, 0.0, 0.3], [0.2, 0.9, 0.0]], [[0.0, 1.0, 0.5]], None):
        state.gamma = None if gamma is None else torch.tensor(gamma)
        rows = torch.ones(1, 3) if gamma is None else state.gamma
        for _ in range(2):  # the second call of a permeability is served from the layer's caches
            y = layer(x)
            for row in range(4):
                ref = apply_dense(base, dense_reference(base, branches, rows[row % len(rows)]), x[row : row + 1])
                torch.testing.assert_close(y[row : row + 1], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize(
    "gamma, rows",
    [
        # 4 prompts, two sharing a permeability, tiled over CFG's [uncond; cond] (8 rows).
        ([[1.0, 0.0, 0.3], [1.0, 0.0, 0.3], [0.2, 0.9, 0.0], [0.5, 0.5, 0.5]], 8),
        # A row per batch row: the uncond half shares one permeability, the cond half has its own per prompt.
        ([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [1.0, 0.0, 0.3], [0.2, 0.9, 0.0]], 4),
    ],
)
def test_folded_per_prompt_weights_equal_the_branch_path(kind, gamma, rows, monkeypatch):
    base, layer, state, branches = make_layer(kind)
    x = torch.randn(rows, 7, 6) if kind == "linear" else torch.randn(rows, 6, 3, 3)
    state.gamma = torch.tensor(gamma)
    with torch.no_grad():
        folded = layer(x)
        assert id(layer) in state.folded  # the grouped, folded path ran
        monkeypatch.setattr("spm.layers.FOLD_BUDGET", 0)  # no room for folded copies: the branch path
        state.gamma = torch.tensor(gamma)
        branch = layer(x)
        assert id(layer) not in state.folded
    torch.testing.assert_close(folded, branch, rtol=1e-5, atol=1e-6)
    for row in range(rows):
        ref = apply_dense(base, dense_reference(base, branches, gamma[row % len(gamma)]), x[row : row + 1])
        torch.testing.assert_close(folded[row : row + 1], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [None, [[1.0, 0.0, 0.3], [0.2, 0.9, 0.0]]])  # one fold, then one per group
def test_an_in_place_edit_of_the_base_weight_is_folded_in(gamma):
    base, layer, state, branches = make_layer("linear")
    state.gamma = None if gamma is None else torch.tensor(gamma)
    x = torch.randn(4, 7, 6)
    with torch.no_grad():
        layer(x)
        assert id(layer) in state.folded
        base.weight.mul_(2.0)  # as merge() or load_state_dict edit it, while attached
        y = layer(x)
    for row in range(4):
        g = [1.0, 1.0, 1.0] if gamma is None else gamma[row % 2]
        ref = apply_dense(base, dense_reference(base, branches, g), x[row : row + 1])
        torch.testing.assert_close(y[row : row + 1], ref, rtol=1e-5, atol=1e-5)


def test_folded_copies_are_one_per_distinct_permeability_and_bounded_in_bytes(monkeypatch):
    base, layer, state, branches = make_layer("linear")
    x = torch.randn(16, 7, 6)  # CFG's two halves of 8 prompts sharing 2 permeabilities
    state.gamma = torch.tensor([[1.0, 0.0, 0.3], [0.2, 0.9, 0.0]]).repeat(4, 1)
    with torch.no_grad():
        y = layer(x)
        weights = state.folded[id(layer)][1]
        assert weights.shape == (2, 5, 6) and state.folded_bytes == weights.numel() * weights.element_size()
        monkeypatch.setattr("spm.layers.FOLD_BYTES", weights.numel() * weights.element_size() - 1)
        state.gamma = state.gamma.clone()  # a new call: the byte budget no longer holds its 2 copies
        branch = layer(x)
        assert id(layer) not in state.folded and state.folded_bytes == 0
    torch.testing.assert_close(y, branch, rtol=1e-5, atol=1e-6)
