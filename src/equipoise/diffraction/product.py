"""``product(x0, x1, ...)``: the broadcast product of tensors, whose backward pass keeps only the factors.

Autograd keeps both operands of every multiplication of a chain ``x0 * x1 * x2 * ...`` (the partial
products too): for the simulator's per-pixel chain (lattice sum · scale · polarization · solid
angle, simulate.py) that is two values per pixel and factor for the whole image until the backward
pass. :func:`product` keeps the factors alone (a factor given several times, e.g. ``1/R`` for
``1/R³``, once) and forms the partial products in the backward pass:
``∂/∂x_i = g · Π_{j<i} x_j · Π_{j>i} x_j`` (prefix and suffix products, 2(k − 1) multiplications
for k factors), summed to each factor's shape where it was broadcast. The forward value is
``((x0 · x1) · x2) · ...``, bit for bit the chain written out.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *factors: Tensor) -> Tensor:
        out = factors[0]
        for f in factors[1:]:
            out = out * f
        ctx.save_for_backward(*factors)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        xs = ctx.saved_tensors
        prefix: list[Tensor | None] = [None]            # prefix[i] = x0 · ... · x_{i-1}
        for x in xs[:-1]:
            prefix.append(x if prefix[-1] is None else prefix[-1] * x)
        grads: list[Tensor | None] = [None] * len(xs)
        suffix = grad                                   # g · x_{i+1} · ... · x_{k-1}
        for i in reversed(range(len(xs))):
            if ctx.needs_input_grad[i]:
                g = suffix if prefix[i] is None else suffix * prefix[i]
                grads[i] = g.sum_to_size(xs[i].shape)
            if i:
                suffix = suffix * xs[i]
        return tuple(grads)


def product(*factors: Tensor) -> Tensor:
    """``factors[0] * factors[1] * ...`` (broadcast; same dtype and device), keeping only the factors for autograd."""
    if not factors:
        raise ValueError("product() needs at least one factor")
    if len(factors) == 1:
        return factors[0]
    return _Product.apply(*factors)
