"""``product(x0, x1, ...)``: the broadcast product of tensors, whose backward pass keeps only the factors.

Autograd keeps both operands of every multiplication of a chain ``x0 * x1 * x2 * ...`` (the partial
products too): for the simulator's per-pixel chain (lattice sum · scale · polarization · solid
angle, simulate.py) that is two values per pixel and factor for the whole image until the backward
pass. :func:`product` keeps the factors alone (a factor given several times, e.g. ``1/R`` for
``1/R³``, once) and forms the partial products in the backward pass:
``∂/∂x_i = g · Π_{j≠i} x_j``, with the one-element factors multiplied as scalars, a factor given
p times as one power, and the products of the others from prefix and suffix products over the
distinct factors; summed to each factor's shape where it was broadcast. The forward value is
``((x0 · x1) · x2) · ...``, bit for bit the chain written out.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _same(a: Tensor, b: Tensor) -> bool:
    return (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())


def _power(x: Tensor, p: int) -> Tensor:
    out = x
    for _ in range(p - 1):
        out = out * x
    return out


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
        xs, needs = ctx.saved_tensors, ctx.needs_input_grad
        # distinct factors with their powers and positions; one-element ones are multiplied as scalars
        groups: list[tuple[Tensor, list[int]]] = []
        for i, x in enumerate(xs):
            for x0, where in groups:
                if _same(x0, x):
                    where.append(i)
                    break
            else:
                groups.append((x, [i]))
        scalars = [(x, w) for x, w in groups if x.numel() == 1]
        vectors = [(x, w) for x, w in groups if x.numel() > 1]
        grads: list[Tensor | None] = [None] * len(xs)

        def scalar_product(skip: int | None = None) -> Tensor | None:
            """Π of the one-element factors, leaving out position ``skip``."""
            out = None
            for x, where in scalars:
                for i in where:
                    if i != skip:
                        out = x if out is None else out * x
            return out

        s = scalar_product()
        powers = [_power(x, len(w)) for x, w in vectors]          # x^p of each distinct vector factor
        g = grad if s is None else grad * s
        prefix: list[Tensor | None] = [None]                     # Π_{k<j} x_k^p_k
        for v in powers[:-1]:
            prefix.append(v if prefix[-1] is None else prefix[-1] * v)
        suffix = None                                             # Π_{k>j} x_k^p_k
        for j in reversed(range(len(vectors))):
            x, where = vectors[j]
            if any(needs[i] for i in where):
                gj = g if suffix is None else g * suffix
                if prefix[j] is not None:
                    gj = gj * prefix[j]
                if len(where) > 1:                                # each occurrence: x^(p-1) · the rest
                    gj = gj * _power(x, len(where) - 1)
                gj = gj.sum_to_size(x.shape)
                for i in where:
                    grads[i] = gj
            suffix = powers[j] if suffix is None else suffix * powers[j]
        if any(needs[i] for _, where in scalars for i in where):
            total = grad if suffix is None else grad * suffix     # suffix is now Π of all vector factors
            total = total.sum()
            for x, where in scalars:
                for i in where:
                    if needs[i]:
                        rest = scalar_product(skip=i)
                        grads[i] = (total if rest is None else total * rest).reshape(x.shape)
        return tuple(grads)


def product(*factors: Tensor) -> Tensor:
    """``factors[0] * factors[1] * ...`` (broadcast; same dtype and device), keeping only the factors for autograd."""
    if not factors:
        raise ValueError("product() needs at least one factor")
    if len(factors) == 1:
        return factors[0]
    return _Product.apply(*factors)
