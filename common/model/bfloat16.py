"""bfloat16 for a text tower's linear layers, the weights cast once.

``torch.autocast`` casts every weight to bfloat16 again on every call, which for a short
query costs more than the bfloat16 product saves. Here each linear layer's weight is cast
once, when the copy is made; per call only the input is cast, the product runs in
bfloat16 (oneDNN's matmul, on AMX tiles where the CPU has them, accumulating in float32)
and comes back rounded to bfloat16, and the bias is added in float32. Embeddings, layer
norms and attention's softmax stay float32. At batch 1 a query tower reads its linear
weights from memory once per call, so halving them halves that traffic.

No scale depends on the batch, but a query's vector is not bit-for-bit the same alone and
in a padded batch: where float32's summation order differs, the product's rounding to
bfloat16 can flip (up to about 6e-4 in a value, cosine above 0.99999; ``README.md``,
"Speed and memory", has the figure on 100 catalog queries).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from common.model.linear_layers import linear_layer_names, swap_layer


class BFloat16Linear(nn.Module):
    """``nn.Linear`` computing its product in bfloat16 (weights stored in bfloat16) and
    returning float32, its bias added in float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).contiguous())
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = cast(torch.Tensor, self.weight), cast(torch.Tensor | None, self.bias)
        out = F.linear(x.to(torch.bfloat16), weight).float()
        return out if bias is None else out + bias


def bfloat16_linears(module: nn.Module, *, skip: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``module`` (eval mode) with every ``nn.Linear`` outside the submodules named
    in ``skip`` replaced by a ``BFloat16Linear``; ``module`` is left unchanged."""
    out = copy.deepcopy(module).eval()
    for name in linear_layer_names(out, skip=skip):
        swap_layer(out, name, lambda linear: BFloat16Linear(cast(nn.Linear, linear)))
    return out
