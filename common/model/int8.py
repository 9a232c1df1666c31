"""int8 for a text tower's linear layers, with a query's vector independent of its batch.

torch's dynamic quantization scales each batch's activations by that batch's range, so a
query's vector would change with the queries encoded beside it. Here weights are int8 with
one scale per output neuron (symmetric, rounded to nearest), and each linear layer's input
is int8 with one scale per token row, taken from that row alone: a query's token rows are
quantized and multiplied (int32 sums) the same whatever else is in the batch, so its vector
does not depend on its batch (up to the float32 parts' summation order, which can differ
in a padded batch and now and then flips a rounding: 5 of 300 queries by up to 3.6e-3 in
one value, measured on the base encoder). A few of a transformer's input channels carry
outliers far above the rest, which would make a row's scale coarse for the others; as in SmoothQuant
(Xiao et al., 2023), each input channel ``j`` is divided by a fixed
``s_j = max|x_j| ** a / max|W_:,j| ** (1 - a)`` (``max|x_j|`` calibrated once on
calibration texts) and the weights' column multiplied by it, which leaves the float
product unchanged and evens out the channels. The product runs in oneDNN's int8 kernel
(``qlinear_pointwise``, float32 output); embeddings, layer norms and attention's softmax
stay float32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from common.model.int8_codes import INT8_MAX, SMOOTHING, TINY
from common.model.linear_layers import linear_layer_names, swap_layer

ZERO_POINT = 128  # symmetric int8 codes, shifted into oneDNN's uint8 inputs


class _Observed(nn.Module):
    """A float ``nn.Linear`` that records each input channel's min and max (calibration)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        low, high = rows.amin(dim=0), rows.amax(dim=0)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        out: torch.Tensor = self.linear(x)
        return out


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (a scale per output neuron) and int8 inputs (a scale
    per token row, from that row alone); ``low`` and ``high``: each input channel's calibrated
    range, for smoothing; ``smoothing``: SmoothQuant's ``a`` (None: inputs not smoothed)."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        low: torch.Tensor,
        high: torch.Tensor,
        smoothing: float | None = SMOOTHING,
    ) -> None:
        super().__init__()
        if low.shape != (linear.in_features,) or high.shape != low.shape:
            raise ValueError(f"low and high need one value per input ({linear.in_features})")
        if not bool(torch.all(low <= high)):
            raise ValueError("a calibrated range needs low <= high in every channel")
        weight = linear.weight.detach().float()
        smooth = torch.ones(linear.in_features)
        if smoothing is not None:
            x_max = torch.maximum(low.abs(), high.abs()).clamp(min=TINY)
            w_max = weight.abs().amax(dim=0).clamp(min=TINY)
            smooth = (x_max**smoothing / w_max ** (1 - smoothing)).clamp(min=TINY)
        weight = weight * smooth[None, :]
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / INT8_MAX
        codes = torch.round(weight / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("inverse_smooth", 1.0 / smooth)
        self.register_buffer("scale", scale)
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(codes, None))
        self.register_buffer("zeros", torch.zeros(self.out_features, dtype=torch.long))
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inverse_smooth = cast(torch.Tensor, self.inverse_smooth)
        rows = x.reshape(-1, self.in_features).float() * inverse_smooth
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=TINY) / INT8_MAX
        codes = (torch.round(rows / row_scale) + ZERO_POINT).to(torch.uint8).contiguous()
        out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
            codes, 1.0, ZERO_POINT, self.packed, self.scale, self.zeros, None,
            1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        out = out * row_scale
        bias = cast(torch.Tensor | None, self.bias)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_linears(
    module: nn.Module, calibrate: Callable[[nn.Module], None], *, skip: tuple[str, ...] = ()
) -> nn.Module:
    """A copy of ``module`` (eval mode) with every ``nn.Linear`` outside the submodules named
    in ``skip`` replaced by an ``Int8Linear``, calibrated on what ``calibrate(copy)`` runs
    through it; ``module`` is left unchanged."""
    out = copy.deepcopy(module).eval()
    targets = linear_layer_names(out, skip=skip)
    for name in targets:
        swap_layer(out, name, lambda linear: _Observed(cast(nn.Linear, linear)))
    with torch.inference_mode():
        calibrate(out)
    for name in targets:
        swap_layer(out, name, _calibrated)
    return out


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (int8 weights count one byte each)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _calibrated(observed: nn.Module) -> Int8Linear:
    if not isinstance(observed, _Observed) or observed.low is None or observed.high is None:
        raise ValueError("calibration ran no input through a linear layer")
    return Int8Linear(observed.linear, low=observed.low, high=observed.high)
