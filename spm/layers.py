"""The membrane layer: a frozen Linear/Conv2d plus k low-rank branches with per-sample permeability.

y = W x + b + sum_i gamma_i * s_i * U_i (D_i x)     (spec section 2)

The k branches are stored side by side and applied as one rank-(sum r_i) product, so k SPMs cost
one extra thin matmul per layer, not k.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models import Transformer2DModel
from diffusers.models.attention import FeedForward, JointTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn


# Per-prompt folding keeps one folded weight per distinct permeability (G copies, not one per prompt) for
# the call, while a layer's G copies hold at most FOLD_BUDGET times the elements of its input and all layers'
# copies of the call together at most FOLD_BYTES; past either bound the layer runs the branch path (no copies).
FOLD_BUDGET = 16
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
        self.folded_bytes = 0  # the per-prompt folds' bytes in `folded`, bounded by FOLD_BYTES
        self.version += 1
        # Decided once per call, on the host: layers then never sync with the device to check it.
        rows = self.gamma if self.gamma is not None else self.default
        self.uniform = rows is None or bool((rows == rows[:1]).all())
        # Prompts that share a permeability share a folded weight: (G, k) distinct rows, each prompt's index.
        self.groups, self.group_of = (None, None) if rows is None else torch.unique(rows, dim=0, return_inverse=True)

    def on_device(self, name: str, device, dtype=None) -> torch.Tensor:
        """`groups` or `group_of` (by `name`) on `device`: copied once per call, shared by every layer."""
        key = (name, str(device), dtype)
        if key not in self._on_device:
            tensor = getattr(self, name)
            self._on_device[key] = tensor.to(device=device, dtype=dtype or tensor.dtype)
        return self._on_device[key]

    def rows_of_groups(self, n: int, device) -> list[torch.Tensor]:
        """For a batch of n = m * B rows (row r is prompt r mod B): each group's row indices, on `device`."""
        key = ("rows_of_groups", n, str(device))
        if key not in self._on_device:
            group_of_row = self.group_of.repeat(n // self.group_of.numel())
            self._on_device[key] = [
                (group_of_row == g).nonzero().flatten().to(device) for g in range(self.groups.shape[0])
            ]
        return self._on_device[key]

    def for_batch(self, n: int, k: int, device, dtype) -> torch.Tensor:
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

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base_layer, nn.Conv2d)

    def add_branch(self, down: torch.Tensor, up: torch.Tensor, scale: float, trainable: bool = False) -> None:
        """Add one SPM's factors: down (r, in[, kh, kw]), up (out, r[, 1, 1])."""
        ref = self.base_layer.weight
        # Own copies: training or editing a layer never writes into the caller's SPM tensors.
        self.down.append(nn.Parameter(down.detach().to(ref.device, ref.dtype, copy=True), requires_grad=trainable))
        self.up.append(nn.Parameter(up.detach().to(ref.device, ref.dtype, copy=True), requires_grad=trainable))
        self.scales.append(float(scale))
        self._packed = None

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All branches side by side: down (R, in...), up (out, R...), each rank row's branch index and scale.

        Cached while the factors are frozen and unchanged (same storage, no in-place edit); a device
        or dtype move, an edit or factors made trainable rebuild it (trainable ones on every call,
        so gradients reach them).
        """
        params = [*self.down, *self.up]
        key = tuple((p.data_ptr(), p._version) for p in params)
        trainable = any(p.requires_grad for p in params)
        if self._packed is not None and self._packed[0] == key and not trainable:
            return self._packed[1:]
        self._coeff = None  # derived from the factors being rebuilt
        self.state.folded.pop(id(self), None)
        down, up = torch.cat(list(self.down)), torch.cat(list(self.up), dim=1)
        owner = torch.cat([torch.full((d.shape[0],), i) for i, d in enumerate(self.down)])
        row_scale = torch.tensor(self.scales, dtype=down.dtype)[owner].to(down.device)
        owner = owner.to(down.device)
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
        if not self.down:
            return self.base_layer(x)
        gamma = self.state.for_batch(x.shape[0], len(self.down), x.device, x.dtype)
        if self.state.legacy:
            return self.base_layer(x) + self._legacy_branch(x, gamma)
        down, up, owner, row_scale = self.packed()
        # Trainable factors need the branch for their gradients; frozen ones are folded into the weight.
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in self.up)):
            if self.state.uniform:
                return self._merged_forward(x, self._folded(gamma, down, up, owner, row_scale, per_prompt=False))
            if self._per_prompt_fits(x):
                return self._per_prompt_forward(x, self._folded(gamma, down, up, owner, row_scale, per_prompt=True))
        coeff = self._coefficients(gamma, owner, row_scale)
        y = self.base_layer(x)
        # The up-projection is a fused matmul-add: a conv with R input channels is ~30x slower on CPU.
        if self.is_conv:
            conv = self.base_layer
            h = F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation) * coeff[:, :, None, None]
            n, out = y.shape[:2]
            return torch.baddbmm(y.reshape(n, out, -1), up.flatten(1).expand(n, -1, -1), h.flatten(2)).view_as(y)
        h = F.linear(x, down) * coeff.view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), up.T).view_as(y)

    def _coefficients(self, gamma, owner, row_scale) -> torch.Tensor:
        """Each row's weight per rank row (N, R), for the branch path.

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

    def _folded(self, gamma, down, up, owner, row_scale, per_prompt: bool) -> torch.Tensor:
        """W + U diag(c) D for the call's permeability: one weight (all prompts alike) or one per prompt
        (B, out, in...), made once per distinct permeability and shared by the prompts that have it.

        Made once per call (cached in the state until the permeability changes), so the denoising steps
        of one generation pay it once: out x in x R multiply-adds per distinct permeability, far less than
        the branch's (in + out) x R per token on every step.
        """
        cached = self.state.folded.get(id(self))
        if cached is not None and cached[0] == self._fold_key(per_prompt):
            return cached[1]
        base = self.base_layer.weight
        # The distinct rows, or the one row all prompts share (already on the device for this call).
        rows = self.state.on_device("groups", base.device, base.dtype) if per_prompt else gamma[:1].to(base.dtype)
        coeff = rows[:, owner] * row_scale.to(base.dtype)  # (G, R)
        scaled_up = up.flatten(1)[None] * coeff[:, None, :]  # (G, out, R): U diag(c_g)
        g = scaled_up.shape[0]
        weight = torch.baddbmm(base.flatten(1).expand(g, -1, -1), scaled_up, down.flatten(1).expand(g, -1, -1))
        if not per_prompt:
            weight = weight[0].view_as(base)
        elif cached is not None:  # a refold (the base weight was edited): its old copies are dropped
            self.state.folded_bytes -= cached[1].numel() * cached[1].element_size()
        if per_prompt:
            self.state.folded_bytes += weight.numel() * weight.element_size()
        self.state.folded[id(self)] = (self._fold_key(per_prompt), weight)
        return weight

    def _fold_key(self, per_prompt: bool) -> tuple:
        """What a fold depends on besides the factors (packed() drops it when they change): the call's
        permeability and the base weight, whose in-place edits (merge(), load_state_dict) bump _version."""
        base = self.base_layer.weight
        return (self.state.version, per_prompt, base.data_ptr(), base._version, base.dtype, base.device)

    def _merged_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One permeability for the whole batch: the rank-R update folded into the weight."""
        base = self.base_layer
        if self.is_conv:
            return F.conv2d(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
        return F.linear(x, weight, base.bias)

    def _per_prompt_fits(self, x: torch.Tensor) -> bool:
        """Whether each prompt's rows can run on its permeability's folded weight: a Linear or a pointwise
        conv, whose G folded copies (kept for the call) hold at most FOLD_BUDGET times the input's elements
        and fit, with the call's other folds, in FOLD_BYTES. Checked before folding, so a layer that does
        not fit stays on the branch path for the whole call (the call's folds only grow)."""
        base = self.base_layer
        if self.is_conv and (base.kernel_size != (1, 1) or base.stride != (1, 1) or base.padding != (0, 0)):
            return False
        cached = self.state.folded.get(id(self))
        if cached is not None and cached[0] == self._fold_key(True):
            return True
        copies = self.state.groups.shape[0] * base.weight.numel()
        nbytes = copies * base.weight.element_size()
        return copies <= FOLD_BUDGET * x.numel() and self.state.folded_bytes + nbytes <= FOLD_BYTES

    def _per_prompt_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Each row times its permeability's folded weight (row n is prompt n mod B: CFG stacks m copies
        of the B prompts): one product per distinct permeability over the rows that have it."""
        base = self.base_layer
        out = weights.shape[1]
        rows_of = self.state.rows_of_groups(x.shape[0], x.device)
        if len(rows_of) == 1:
            return self._merged_forward(x, weights[0].view_as(base.weight))
        y = x.new_empty(x.shape[0], *((out, *x.shape[2:]) if self.is_conv else (*x.shape[1:-1], out)))
        for weight, rows in zip(weights, rows_of):
            if rows.numel():
                y.index_copy_(0, rows, self._merged_forward(x.index_select(0, rows), weight.view_as(base.weight)))
        return y

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
        if isinstance(block, JointTransformerBlock):
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


def _joint_block_targets(block_name: str, block: JointTransformerBlock) -> dict[str, nn.Module]:
    """An MMDiT (SD3) block's membrane layers: every Linear of its attention and feed-forward modules, for
    both streams (to_q/k/v, to_out.0, add_q/k/v_proj, to_add_out, ff, ff_context; attn2 in SD3.5's dual
    attention blocks), except the last block's add_q_proj, whose output nothing reads. As on SD 1.x, these are the layers that read the tokens. The AdaLayerNorm
    modulation Linears are left out: they read only the timestep and pooled embedding, as the resnets'
    time projections do in a UNet, where SPM has no membrane."""
    found: dict[str, nn.Module] = {}
    for part_name, part in block.named_children():
        if not isinstance(part, (Attention, FeedForward)):
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
