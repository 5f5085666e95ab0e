"""The membrane layer: a frozen Linear/Conv2d plus k low-rank branches with per-sample permeability.

y = W x + b + sum_i gamma_i * s_i * U_i (D_i x)     (spec section 2)

The k branches are stored side by side and applied as one rank-(sum r_i) product, so k SPMs cost
one extra thin matmul per layer, not k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.models import Transformer2DModel
from diffusers.models.attention import FeedForward, JointTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_flux import (
    FluxAttention,
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from torch import nn


# Rows with different permeabilities (each prompt its own gamma) run either on per-row folded weights,
# W + U diag(c_n) D for row n, made once per call and applied as one batched product, or on the rank-R branch.
# A per-row weight costs reading in x out elements per row on every step; the branch costs a pass over the
# row's output (tokens x out) and (in + out) x R multiply-adds per token, each much cheaper than a memory pass.
# A Linear folds where in x out <= FOLD_RATIO x tokens x (out + (in + out) x R x BRANCH_MAC_COST), constants
# fitted to per-layer CPU times of the toy UNet (one thread, 64 rows, k = 1 and 20: see
# bench/bench_pipeline_overhead.py --layers); a 1x1 conv always folds (its batched product beats oneDNN's conv
# plus branch at every level measured). All layers' per-row folds of a call fit in FOLD_BYTES.
FOLD_RATIO = 1.7
BRANCH_MAC_COST = 1 / 20
FOLD_BYTES = 256 * 2**20


class PermeabilityState:
    """Shared by every membrane layer of one UNet: the permeability of the current call.

    `gamma` is None (each branch at its fixed `default` weight, 1 unless set: a plain LoRA) or a
    (B, k) tensor, one row per prompt. A UNet batch of N = m * B rows (classifier-free guidance stacks [uncond; cond])
    reuses each prompt's row for all m copies, so a prompt's negative branch gets its gamma too.
    Assign a new tensor to change it: layers cache what they derive from it until the next assignment.
    """

    def __init__(self) -> None:
        self.version = 0  # bumped on every change: layers key their per-call caches on it
        self.legacy = False
        self._default: torch.Tensor | None = None
        self.gamma = None

    @property
    def default(self) -> torch.Tensor | None:
        return self._default

    @default.setter
    def default(self, value: torch.Tensor | None) -> None:
        self._default = value
        self._changed()

    @property
    def gamma(self) -> torch.Tensor | None:
        return self._gamma

    @gamma.setter
    def gamma(self, value: torch.Tensor | None) -> None:
        self._gamma = value
        self._changed()

    def _changed(self) -> None:
        # Host-to-device copies of the rows, made once per call, not once per layer: on CUDA each
        # copy from host memory waits for the queued kernels (151 % overhead on SD 1.5, H100, fp16).
        self._on_device: dict = {}
        # Each layer's weights folded for this permeability, by layer: dropped with it, so the
        # folded copies live only as long as the call they were made for.
        self.folded: dict[int, tuple] = {}
        self.folded_bytes = 0  # the per-row folds' bytes in `folded`, bounded by FOLD_BYTES
        self.plans: dict[int, tuple] = {}  # each layer's plan for the call (MembraneLayer._plan), by layer
        self.version += 1
        # Decided once per call, on the host: layers never sync with the device or branch on tensor values.
        rows = self.gamma if self.gamma is not None else self.default
        self.uniform = rows is None or bool((rows == rows[:1]).all())

    def for_batch(self, n: int, k: int, device, dtype) -> torch.Tensor:
        """(n, k) permeabilities of a UNet batch of n rows, on `device`: made once per call and batch size."""
        key = (n, k, str(device), dtype)
        if key not in self._on_device:
            self._on_device[key] = self._rows(n, k, device, dtype)
        return self._on_device[key]

    def _rows(self, n: int, k: int, device, dtype) -> torch.Tensor:
        if self.gamma is None:
            if self.default is None:
                return torch.ones(n, k, device=device, dtype=dtype)
            return self.default.to(device=device, dtype=dtype).expand(n, k)
        b = self.gamma.shape[0]
        if n % b:
            raise ValueError(f"UNet batch of {n} rows does not tile the {b} prompts' permeabilities")
        return self.gamma.to(device=device, dtype=dtype).repeat(n // b, 1)


class MembraneLayer(nn.Module):
    """Wraps one `nn.Linear` or `nn.Conv2d` (`base_layer`, frozen) with SPM branches."""

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, state: PermeabilityState):
        super().__init__()
        if isinstance(base_layer, nn.Conv2d) and base_layer.groups != 1:
            raise ValueError("membranes on grouped convolutions are not supported")
        self.base_layer = base_layer
        self.state = state
        self.down = nn.ParameterList()
        self.up = nn.ParameterList()
        self.scales: list[float] = []
        self._packed: tuple | None = None  # (key, down, up, owner, row_scale), see packed()
        self._coeff: tuple | None = None  # (key, coeff), see _coefficients()
        self._factors: list[nn.Parameter] = []

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base_layer, nn.Conv2d)

    @property
    def is_pointwise(self) -> bool:
        """A Linear, or a 1x1 conv without stride or padding: a matmul over the channels of each position."""
        base = self.base_layer
        return not self.is_conv or (base.kernel_size == (1, 1) and base.stride == (1, 1) and base.padding == (0, 0))

    def add_branch(self, down: torch.Tensor, up: torch.Tensor, scale: float, trainable: bool = False) -> None:
        """Add one SPM's factors: down (r, in[, kh, kw]), up (out, r[, 1, 1])."""
        ref = self.base_layer.weight
        # Own copies: training or editing a layer never writes into the caller's SPM tensors.
        self.down.append(nn.Parameter(down.detach().to(ref.device, ref.dtype, copy=True), requires_grad=trainable))
        self.up.append(nn.Parameter(up.detach().to(ref.device, ref.dtype, copy=True), requires_grad=trainable))
        self.scales.append(float(scale))
        self._packed = None
        # A plain list of the factors: iterating the ParameterLists costs ~4 us per factor, on every forward.
        self._factors = [*self.down, *self.up]

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All branches side by side: down (R, in...), up (out, R...), each rank row's branch index and scale.

        Cached while the factors are frozen and unchanged (same storage, no in-place edit); a device
        or dtype move, an edit or factors made trainable rebuild it (trainable ones on every call,
        so gradients reach them).
        """
        params = self._factors
        key = tuple((p.data_ptr(), p._version) for p in params)
        trainable = any(p.requires_grad for p in params)
        if self._packed is not None and self._packed[0] == key and not trainable:
            return self._packed[1:]
        self._coeff = None  # derived from the factors being rebuilt
        self._cache_fold(None)
        down, up = torch.cat(list(self.down)), torch.cat(list(self.up), dim=1)
        # Filled on the device (no host-to-device copy, which on CUDA waits for the queued kernels).
        ranks = [(d.shape[0], i, s) for i, (d, s) in enumerate(zip(self.down, self.scales))]
        owner = torch.cat([torch.full((r,), i, device=down.device) for r, i, _ in ranks])
        row_scale = torch.cat([torch.full((r,), s, dtype=down.dtype, device=down.device) for r, _, s in ranks])
        self._packed = None if trainable else (key, down, up, owner, row_scale)
        return down, up, owner, row_scale

    def delta_weight(self, weights: list[float]) -> torch.Tensor:
        """sum_i w_i s_i U_i D_i, shaped like the base weight (for static merging)."""
        delta = torch.zeros_like(self.base_layer.weight)
        for w, s, d, u in zip(weights, self.scales, self.down, self.up):
            if self.is_conv:
                delta += w * s * torch.einsum("or,rikl->oikl", u.flatten(1), d)
            else:
                delta += w * s * (u @ d)
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._factors:
            return self.base_layer(x)
        state = self.state
        if state.legacy:
            gamma = state.for_batch(x.shape[0], len(self.down), x.device, x.dtype)
            return self.base_layer(x) + self._legacy_branch(x, gamma)
        # The denoising steps of a call repeat the same layer work: the first one plans it (fold or branch), the
        # others look the plan up, checking only what could have changed since (the input's shape, dtype and
        # device, grad mode, moves and in-place edits of the factors or the base weight). A planned step runs a
        # closure over bound tensors: on a GPU the bare pipeline is host-bound at small batches (bench/
        # probe_overhead_paths.py), so every microsecond of Python per layer shows in the wall time.
        key = self._plan_key(x)
        plan = state.plans.get(id(self))
        if plan is not None and plan[0] == key:
            return plan[1](x)
        run = self._plan(x)
        if run is not None:
            state.plans[id(self)] = (key, run)
            return run(x)
        down, up, owner, row_scale = self.packed()  # trainable factors, with grad: rebuilt so gradients reach them
        gamma = state.for_batch(x.shape[0], len(self.down), x.device, x.dtype)
        return self._branch_forward(x, down, up, self._coefficients(gamma, owner, row_scale))

    def _plan_key(self, x: torch.Tensor) -> tuple:
        # The base weight and bias are read afresh: a tensor put in their place (load_state_dict(assign=True),
        # torch.func.functional_call, offloading hooks) has another data pointer, so the call is planned again.
        base = self.base_layer
        weight, bias = base.weight, base.bias
        return (
            x.shape, x.dtype, x.device, torch.is_grad_enabled(), weight.data_ptr(), weight._version,
            None if bias is None else (bias.data_ptr(), bias._version),
            *[(p.data_ptr(), p._version, p.requires_grad) for p in self._factors],
        )  # fmt: skip

    def _plan(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How this call's rows of x's shape run, with what it needs bound (folded weights, coefficients); None
        for trainable factors with grad enabled, whose branch is rebuilt on every call so gradients reach them."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._factors):
            return None
        gamma = self.state.for_batch(x.shape[0], len(self.down), x.device, x.dtype)
        down, up, owner, row_scale = self.packed()
        coeff = self._coefficients(gamma, owner, row_scale)
        if self.state.uniform:
            return self._merged_run(self._folded_once(coeff, down, up))
        if self._per_row_fold_pays(x, down.shape[0]):
            return self._per_row_run(x, self._folded_per_row(coeff, down, up))
        return self._branch_run(x, down, self._scaled_up(up, coeff))

    def _branch_run(self, x: torch.Tensor, down, scaled_up: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """_branch_scaled bound for x's shape; a Linear as two products and an in-place multiply-add over bound
        tensors (rank 1, the common case, as a broadcast outer product). Like the folded paths, it calls F.linear
        on the base's weight and bias rather than the base module: hooks on the wrapped layer do not run."""
        base = self.base_layer
        if self.is_conv:
            return partial(self._branch_scaled, down=down, scaled_up=scaled_up)
        weight, bias, n, rank = base.weight, base.bias, x.shape[0], down.shape[0]
        if rank == 1:
            scale = scaled_up.view(n, *([1] * (x.dim() - 2)), -1)
            return lambda x: F.linear(x, weight, bias).addcmul_(F.linear(x, down), scale)
        rows, outs = (n, -1, rank), (n, -1, weight.shape[0])

        def run(x: torch.Tensor) -> torch.Tensor:
            y = F.linear(x, weight, bias)
            y.view(outs).baddbmm_(F.linear(x, down).view(rows), scaled_up)
            return y

        return run

    def _coefficients(self, gamma, owner, row_scale) -> torch.Tensor:
        """Each row's weight per rank row (N, R): gamma of the row's prompt for the rank row's SPM, times its scale.

        Cached for the permeability of the current call, so the denoising steps of one generation
        compute them once: on a GPU their tiny kernels cost more than the layer's own work.
        """
        key = (self.state.version, gamma.shape, gamma.dtype, gamma.device)
        if self._coeff is not None and self._coeff[0] == key:
            return self._coeff[1]
        coeff = gamma[:, owner] * row_scale.to(gamma.dtype)
        if self._packed is not None:  # frozen factors: packed() drops this cache when they change
            self._coeff = (key, coeff)
        return coeff

    def _branch_forward(self, x: torch.Tensor, down, up, coeff: torch.Tensor) -> torch.Tensor:
        """W x + b + U (c_n * D x) per row n: the unfolded rank-R branch, (in + out) x R per token."""
        return self._branch_scaled(x, down, self._scaled_up(up, coeff))

    def _scaled_up(self, up: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        """U diag(c_n) per row n, laid out for _branch_scaled: (N, out, R) for a conv, (N, R, out) for a Linear.
        Made once per call (the plan binds it): the rows' coefficients then cost no product per step."""
        scaled = up.flatten(1)[None] * coeff.to(up.dtype)[:, None, :]  # (N, out, R)
        return scaled if self.is_conv else scaled.transpose(1, 2).contiguous()

    def _branch_scaled(self, x: torch.Tensor, down, scaled_up: torch.Tensor) -> torch.Tensor:
        """The branch with each row's coefficients in its up factor (see _scaled_up), added in place to the base
        layer's output (whose backward does not need it): an out-of-place addmm over a wide output costs 3-4x the
        layer on CPU. Rank 1 adds a broadcast outer product, which beats a matmul with one inner dimension."""
        y = self.base_layer(x)
        n, rank = x.shape[0], down.shape[0]
        if self.is_conv:
            if self.is_pointwise:  # a thin 1x1 conv (R output channels) is ~3x slower than this matmul on CPU
                h = torch.matmul(down.flatten(1), x.reshape(n, x.shape[1], -1))
            else:
                conv = self.base_layer
                h = F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation).flatten(2)
            y3 = y.reshape(n, y.shape[1], -1)  # (N, out, HW); h (N, R, HW)
            if rank == 1:
                y3.addcmul_(h, scaled_up)
            else:
                y3.baddbmm_(scaled_up, h)
            return y3.view(y.shape)
        h = F.linear(x, down)
        if rank == 1:
            return y.addcmul_(h, scaled_up.view(n, *([1] * (x.dim() - 2)), -1))
        y3 = y.reshape(n, -1, y.shape[-1])
        y3.baddbmm_(h.reshape(n, -1, rank), scaled_up)
        return y3.view(y.shape)

    def _folded_once(self, coeff: torch.Tensor, down, up) -> torch.Tensor:
        """W + U diag(c) D for the call's one permeability (every row alike), shaped like the base weight.

        Made once per call (cached in the state until the permeability changes), so the denoising steps
        of one generation pay it once: out x in x R multiply-adds, far less than the branch's
        (in + out) x R per token on every step.
        """
        cached = self.state.folded.get(id(self))
        key = self._fold_key(None)
        if cached is not None and cached[0] == key:
            return cached[1]
        base = self.base_layer.weight
        scaled_up = up.flatten(1) * coeff[0].to(base.dtype)  # U diag(c): (out, R)
        weight = torch.addmm(base.flatten(1), scaled_up, down.flatten(1)).view_as(base)
        self._cache_fold(key, weight)
        return weight

    def _folded_per_row(self, coeff: torch.Tensor, down, up) -> torch.Tensor:
        """Row n's W + U diag(c_n) D, for all N rows of the batch, made once per call: (N, in, out) for a Linear
        (x W^T), (N, out, in) for a 1x1 conv (W x), the operand layouts one batched product reads directly.
        CFG's m copies of the B prompts hold equal weights: the B prompts' are made (out x in x R each) and copied
        m times, since a batched product reads one weight per row (broadcasting would copy them on every step)."""
        n = coeff.shape[0]
        cached = self.state.folded.get(id(self))
        key = self._fold_key(n)
        if cached is not None and cached[0] == key:
            return cached[1]
        prompts = self.state.gamma.shape[0] if self.state.gamma is not None else n
        prompts = prompts if n % prompts == 0 else n  # rows n and n + B share a prompt (PermeabilityState.for_batch)
        base = self.base_layer.weight.flatten(1)  # (out, in)
        scaled_up = up.flatten(1)[None] * coeff[:prompts].to(base.dtype)[:, None, :]  # (B, out, R): U diag(c_b)
        d = down.flatten(1).expand(prompts, -1, -1)  # (B, R, in)
        if self.is_conv:
            weight = torch.baddbmm(base.expand(prompts, -1, -1), scaled_up, d)
        else:
            weight = torch.baddbmm(base.T.expand(prompts, -1, -1), d.transpose(1, 2), scaled_up.transpose(1, 2))
        weight = weight.repeat(n // prompts, 1, 1)
        self._cache_fold(key, weight)
        return weight

    def _cache_fold(self, key: tuple | None, weight: torch.Tensor | None = None) -> None:
        """Keep `weight` as this layer's fold for the call (None: drop it), counting per-row folds' bytes."""
        old = self.state.folded.pop(id(self), None)
        if old is not None and old[0][-1] is not None:  # per-row folds (keyed by their rows) count in the budget
            self.state.folded_bytes -= old[1].numel() * old[1].element_size()
        if key is None:
            return
        self.state.folded[id(self)] = (key, weight)
        if key[-1] is not None:
            self.state.folded_bytes += weight.numel() * weight.element_size()

    def _fold_key(self, rows: int | None) -> tuple:
        """What a fold depends on besides the factors (packed() drops it when they change): the call's
        permeability, the base weight, whose in-place edits (merge(), load_state_dict) bump _version, and
        the batch's rows for per-row folds (None: one fold for all rows). `rows` comes last (see _cache_fold)."""
        base = self.base_layer.weight
        return (self.state.version, base.data_ptr(), base._version, base.dtype, base.device, rows)

    def _merged_run(self, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """One permeability for the whole batch: the rank-R update folded into the weight, the layer's own op."""
        base = self.base_layer
        if self.is_conv:
            return partial(
                F.conv2d, weight=weight, bias=base.bias, stride=base.stride, padding=base.padding,
                dilation=base.dilation, groups=base.groups,
            )  # fmt: skip
        return partial(F.linear, weight=weight, bias=base.bias)

    def _per_row_fold_pays(self, x: torch.Tensor, rank: int) -> bool:
        """Whether this call runs the layer on per-row folded weights: a pointwise layer where reading a folded
        weight per row costs less than the branch's work on the row (FOLD_RATIO), and whose N copies fit, with
        the call's other per-row folds, in FOLD_BYTES. Decided from shapes and counts on the host (no device
        sync); a layer that folded keeps its fold for the call, one that did not stays on the branch (the
        call's folds only grow)."""
        if not self.is_pointwise:
            return False
        cached = self.state.folded.get(id(self))
        if cached is not None and cached[0] == self._fold_key(x.shape[0]):
            return True
        base = self.base_layer.weight
        out, fan_in = base.shape[0], base[0].numel()
        tokens = x[0].numel() // fan_in
        if not self.is_conv and base.numel() > FOLD_RATIO * tokens * (out + (fan_in + out) * rank * BRANCH_MAC_COST):
            return False
        nbytes = x.shape[0] * base.numel() * base.element_size()
        return self.state.folded_bytes + nbytes <= FOLD_BYTES

    def _per_row_run(self, x: torch.Tensor, weights: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Each row times its own folded weight: one batched matmul(-add) over the N rows of x's shape, the bias
        broadcast by the product itself (no expanded copy)."""
        bias = self.base_layer.bias
        n, out = x.shape[0], weights.shape[1 if self.is_conv else 2]
        if self.is_conv:  # (N, out, in) @ (N, in, HW)
            shape, rows = (n, out, *x.shape[2:]), (n, x.shape[1], -1)
            bias = None if bias is None else bias[:, None]
            if bias is None:
                return lambda x: torch.bmm(weights, x.reshape(rows)).view(shape)
            return lambda x: torch.baddbmm(bias, weights, x.reshape(rows)).view(shape)
        shape, rows = (*x.shape[:-1], out), (n, -1, x.shape[-1])  # (N, tokens, in) @ (N, in, out)
        if bias is None:
            return lambda x: torch.bmm(x.reshape(rows), weights).view(shape)
        return lambda x: torch.baddbmm(bias, x.reshape(rows), weights).view(shape)

    def _legacy_branch(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The released code: s * (sum_i gamma_i U_i)(sum_j gamma_j D_j x): gamma^2 and cross terms."""
        if any(d.shape[0] != 1 for d in self.down) or len(set(self.scales)) > 1:
            raise ValueError("legacy mode reproduces the released code only for rank-1 SPMs of equal alpha")
        down, up, _, _ = self.packed()
        if self.is_conv:
            conv = self.base_layer
            h = F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation)  # (N, k, H, W)
            mixed = (h * gamma[:, :, None, None]).sum(1, keepdim=True)  # (N, 1, H, W)
            up_mixed = gamma @ up.flatten(1).T  # (N, out)
            return self.scales[0] * mixed * up_mixed[:, :, None, None]
        h = F.linear(x, down)
        shape = (x.shape[0], *([1] * (x.dim() - 2)), -1)
        mixed = (h * gamma.view(shape)).sum(-1, keepdim=True)
        return self.scales[0] * mixed * (gamma @ up.T).view(shape)


def membrane_targets(unet: nn.Module) -> dict[str, nn.Module]:
    """Every Linear/Conv2d inside every transformer block of `unet`, by module path, in order.

    Found by `isinstance`, never by class names. A layer already wrapped is returned as its wrapper.
    """
    found: dict[str, nn.Module] = {}
    for block_name, block in unet.named_modules():
        if isinstance(block, (JointTransformerBlock, FluxTransformerBlock, FluxSingleTransformerBlock)):
            found.update(_joint_block_targets(block_name, block))
            continue
        if not isinstance(block, Transformer2DModel):
            continue
        wrapped: list[str] = []
        for name, layer in block.named_modules():
            if any(name.startswith(w + ".") for w in wrapped):
                continue
            if isinstance(layer, MembraneLayer):
                wrapped.append(name)
                found[f"{block_name}.{name}"] = layer
            elif isinstance(layer, (nn.Linear, nn.Conv2d)):
                found[f"{block_name}.{name}"] = layer
    return found


def _joint_block_targets(block_name: str, block: nn.Module) -> dict[str, nn.Module]:
    """An MMDiT block's membrane layers: every Linear of its attention and feed-forward modules, for both
    streams (SD3 and FLUX.1's double-stream blocks: to_q/k/v, to_out.0, add_q/k/v_proj, to_add_out, ff,
    ff_context; attn2 in SD3.5's dual attention blocks), and FLUX.1's single-stream blocks' attention (to_q/k/v)
    and their own Linears (proj_mlp, proj_out), except SD3's last block's add_q_proj, whose output nothing reads.
    As on SD 1.x, these are the layers that read the tokens. The AdaLayerNorm modulation Linears are left out:
    they read only the timestep and pooled embedding, as the resnets' time projections do in a UNet, where SPM
    has no membrane."""
    found: dict[str, nn.Module] = {}
    for part_name, part in block.named_children():
        if isinstance(part, (nn.Linear, MembraneLayer)):  # FLUX.1's single-stream proj_mlp and proj_out
            found[f"{block_name}.{part_name}"] = part
            continue
        if not isinstance(part, (Attention, FluxAttention, FeedForward)):
            continue
        # The last block (context_pre_only) discards its text tokens' outputs: their queries change nothing.
        dead = getattr(part, "add_q_proj", None) if isinstance(part, Attention) and part.context_pre_only else None
        wrapped: list[str] = []
        for name, layer in part.named_modules():
            if any(name.startswith(w + ".") for w in wrapped) or (dead is not None and layer is dead):
                continue
            if isinstance(layer, MembraneLayer):
                wrapped.append(name)
            if isinstance(layer, (MembraneLayer, nn.Linear)):
                found[f"{block_name}.{part_name}.{name}"] = layer
    return found


def base_of(layer: nn.Module) -> nn.Linear | nn.Conv2d:
    return layer.base_layer if isinstance(layer, MembraneLayer) else layer


def layer_shapes(layer: nn.Module, rank: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (down, up) factor shapes an SPM of `rank` has on `layer`."""
    base = base_of(layer)
    if isinstance(base, nn.Conv2d):
        return (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1)
    return (rank, base.in_features), (base.out_features, rank)


def init_down(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Kaiming-uniform (a = sqrt(5)), PyTorch's default Linear init, drawn from `generator`."""
    fan_in = math.prod(shape[1:])
    bound = math.sqrt(6.0 / ((1 + 5) * fan_in))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound
