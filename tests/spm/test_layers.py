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


def per_row_reference(base, branches, gamma, x):
    """W x + b + sum_k gamma[n mod B, k] s_k u_k (d_k . x) for each row n, from the definition, in float64
    (rows of a batch of m x B rows are prompt n mod B: CFG's [uncond; cond] copies share their prompt's gamma)."""
    conv = isinstance(base, nn.Conv2d)
    x64 = (x.movedim(1, -1) if conv else x).double()  # channels last: a 1x1 conv is a Linear per position
    w, b = base.weight.detach().double().flatten(1), base.bias.detach().double()
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    ys = []
    for n in range(x.shape[0]):
        y = x64[n] @ w.T + b
        for g, (down, up, s) in zip(gamma[n % len(gamma)], branches):
            y = y + g * s * (x64[n] @ down.double().flatten(1).T) @ up.double().flatten(1).T
        ys.append(y)
    y = torch.stack(ys)
    return (y.movedim(-1, 1) if conv else y).float()


# Batches as a pipeline makes them: every prompt its own gamma, some shared, zeros, tiled over CFG's 2 copies
# (rows = 2 x prompts) or one gamma per row (rows = prompts).
GAMMAS = {
    "distinct": lambda k: torch.rand(4, k, generator=torch.Generator().manual_seed(k)),
    "shared-and-zero": lambda k: torch.tensor([[0.7] * k, [0.0] * k, [0.7] * k, [0.2, *[1.0] * (k - 1)]]),
}


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("gammas", sorted(GAMMAS))
@pytest.mark.parametrize("copies", [2, 1])
@pytest.mark.parametrize("path", ["per-row fold", "branch"])
def test_per_row_gammas_equal_the_definition_on_both_paths(kind, k, gammas, copies, path, monkeypatch):
    base, layer, state, branches = make_layer(kind, k=k)
    if path == "per-row fold":
        monkeypatch.setattr("spm.layers.FOLD_RATIO", 1e9)
    else:
        monkeypatch.setattr("spm.layers.FOLD_BYTES", 0)
    gamma = GAMMAS[gammas](k)
    x = torch.randn(4 * copies, 7, 6) if kind == "linear" else torch.randn(4 * copies, 6, 3, 3)
    state.gamma = gamma
    with torch.no_grad():
        for _ in range(2):  # the first call plans the layer, the second runs the plan
            torch.testing.assert_close(layer(x), per_row_reference(base, branches, gamma, x), rtol=1e-5, atol=1e-5)
        assert (id(layer) in state.folded) == (path == "per-row fold")


def plan_on(path: str, state: PermeabilityState, monkeypatch) -> torch.Tensor:
    """Make a layer of `state` take `path` (per-row fold, branch, one permeability): the fold constants and a
    permeability of two prompts, set on `state`; returns the permeability."""
    if path == "per-row fold":
        monkeypatch.setattr("spm.layers.FOLD_RATIO", 1e9)
    elif path == "branch":
        monkeypatch.setattr("spm.layers.FOLD_BYTES", 0)
    state.gamma = torch.tensor([[0.5], [0.5]]) if path == "one permeability" else torch.tensor([[0.3], [0.9]])
    return state.gamma


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("path", ["per-row fold", "branch", "one permeability"])
def test_a_plan_bound_to_one_input_shape_is_made_afresh_for_another(kind, bias, path, monkeypatch):
    """A planned step runs a closure bound to the input's shape: the same permeability at other token counts
    (another resolution in one permeable() block) is planned again, and every plan equals the definition."""
    base, layer, state, branches = make_layer(kind, k=1)
    if not bias:
        base.bias = None
        base.register_parameter("bias", None)
    gamma = plan_on(path, state, monkeypatch)
    shapes = [(4, 7, 6), (4, 3, 6), (4, 7, 6)] if kind == "linear" else [(4, 6, 3, 3), (4, 6, 2, 5), (4, 6, 3, 3)]
    reference_base = nn.Linear(6, 5) if kind == "linear" else nn.Conv2d(6, 5, 1)
    reference_base.load_state_dict(base.state_dict(), strict=False)
    if not bias:
        reference_base.bias.data.zero_()
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape)
            for _ in range(2):  # planned, then run from the plan
                expected = per_row_reference(reference_base, branches, gamma, x)
                torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("path", ["per-row fold", "branch", "one permeability"])
@pytest.mark.parametrize("swap", ["assign", "bias storage"])
def test_a_base_weight_or_bias_put_in_place_of_the_old_is_planned_again(kind, path, swap, monkeypatch):
    """Plans bind tensors: a weight or bias replaced between calls (load_state_dict(assign=True), functional_call,
    offloading hooks; a bias whose storage is swapped) must not leave a call on the old ones."""
    base, layer, state, branches = make_layer(kind, k=1)
    gamma = plan_on(path, state, monkeypatch)
    x = torch.randn(4, 7, 6) if kind == "linear" else torch.randn(4, 6, 3, 3)
    with torch.no_grad():
        layer(x)  # planned on the old tensors
        if swap == "assign":
            new = {k: torch.randn_like(v) for k, v in base.state_dict().items()}
            base.load_state_dict(new, assign=True)
        else:
            base.bias.data = base.bias.data + 1.0
        torch.testing.assert_close(layer(x), per_row_reference(base, branches, gamma, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_the_trainable_branch_equals_the_definition_and_gets_gradients(kind):
    base, layer, state, branches = make_layer(kind, k=2)
    for p in [*layer.down, *layer.up]:
        p.requires_grad_(True)
    gamma = torch.tensor([[1.0, 0.5], [0.0, 0.25]])
    state.gamma = gamma
    x = torch.randn(4, 7, 6) if kind == "linear" else torch.randn(4, 6, 3, 3)
    y = layer(x)
    torch.testing.assert_close(y, per_row_reference(base, branches, gamma, x), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*layer.down, *layer.up])


def test_the_cost_model_folds_narrow_layers_over_many_tokens_and_not_wide_ones_over_few():
    """The toy UNet's extremes (one CPU thread): a 32-wide layer over 64 tokens runs on per-row folded
    weights, a 64 -> 512 one over 4 tokens on the rank-1 branch; a 1x1 conv always folds."""
    state = PermeabilityState()
    state.gamma = torch.rand(4, 1)
    cases = [(nn.Linear(32, 32), torch.randn(8, 64, 32), True), (nn.Linear(64, 512), torch.randn(8, 4, 64), False)]
    cases.append((nn.Conv2d(64, 64, 1), torch.randn(8, 64, 2, 2), True))
    for base, x, folds in cases:
        layer = MembraneLayer(base, state)
        down, up = (
            torch.randn(1, *base.weight.shape[1:]),
            torch.randn(base.weight.shape[0], 1, *base.weight.shape[2:]),
        )
        layer.add_branch(down, up, 1.0)
        with torch.no_grad():
            layer(x)
        assert (id(layer) in state.folded) == folds, base


def test_per_row_folds_are_bounded_in_bytes(monkeypatch):
    base, layer, state, branches = make_layer("linear")
    monkeypatch.setattr("spm.layers.FOLD_RATIO", 1e9)
    x = torch.randn(16, 7, 6)  # CFG's two halves of 8 prompts sharing 2 permeabilities
    state.gamma = torch.tensor([[1.0, 0.0, 0.3], [0.2, 0.9, 0.0]]).repeat(4, 1)
    with torch.no_grad():
        y = layer(x)
        weights = state.folded[id(layer)][1]
        assert weights.shape == (16, 6, 5) and state.folded_bytes == weights.numel() * weights.element_size()
        monkeypatch.setattr("spm.layers.FOLD_BYTES", weights.numel() * weights.element_size() - 1)
        state.gamma = state.gamma.clone()  # a new call: the byte budget no longer holds its 16 copies
        branch = layer(x)
        assert id(layer) not in state.folded and state.folded_bytes == 0
    torch.testing.assert_close(y, branch, rtol=1e-5, atol=1e-6)
