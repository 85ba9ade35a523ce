"""Robust losses that never saturate, and angle differences in their natural space.

All functions are element-wise (any shape in, same shape out) and keep dtype and device.
Angles are in radians. Each docstring states the gradient, since the gradient, not the value,
is what the optimiser sees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["log_scaled", "huber", "wrap_angle", "angle_difference", "angular_huber"]

TWO_PI = 2.0 * math.pi


def _check_positive(value: float, field: str) -> None:
    if not value > 0 or not math.isfinite(value):
        raise InputError(f"must be a positive finite number, got {value}", field=field)


def log_scaled(x: Tensor, scale: float) -> Tensor:
    """``scale * log1p(x / scale)`` for a non-negative error ``x`` (same unit as ``scale``).

    Equals ``x`` for ``x << scale`` and grows like ``scale * log(x)`` for large ``x``; it never
    saturates. Gradient: ``d/dx = scale / (scale + x)``, positive for every finite ``x >= 0``
    (at ``x = 25000``, ``scale = 100`` it is 1/251, where ``clamp(x, max=100)`` gives 0).
    """
    _check_positive(scale, "log_scaled.scale")
    return scale * torch.log1p(x / scale)


def huber(x: Tensor, delta: float) -> Tensor:
    """Huber loss of a residual ``x``: ``x^2/2`` for ``|x| <= delta``, else ``delta*(|x| - delta/2)``.

    Continuous with a continuous first derivative at ``|x| = delta``. Gradient:
    ``d/dx = clamp(x, -delta, delta)`` (never zero outside the quadratic zone).
    """
    _check_positive(delta, "huber.delta")
    ax = x.abs()
    return torch.where(ax <= delta, 0.5 * x * x, delta * (ax - 0.5 * delta))


def wrap_angle(x: Tensor) -> Tensor:
    """Angle ``x`` (radians) wrapped into ``(-pi, pi]``. Gradient: 1 (away from the cut at pi)."""
    wrapped = math.pi - torch.remainder(math.pi - x, TWO_PI)
    # remainder can round up to exactly 2*pi for tiny negative arguments, giving -pi: move to +pi
    return torch.where(wrapped <= -math.pi, wrapped + TWO_PI, wrapped)


def angle_difference(a: Tensor, b: Tensor) -> Tensor:
    """Signed difference ``a - b`` of two angles in radians, wrapped into ``(-pi, pi]``.

    Gradient: ``+1`` with respect to ``a`` and ``-1`` with respect to ``b``, whatever the size of
    the difference (a cosine-space loss ``(cos a - cos b)^2`` has vanishing gradient near 0 and pi).
    """
    return wrap_angle(a - b)


def angular_huber(a: Tensor, b: Tensor, delta: float) -> Tensor:
    """Huber loss of the wrapped angle difference ``a - b`` (radians; ``delta`` in radians).

    Gradient with respect to ``a``: ``clamp(wrap(a - b), -delta, delta)``.
    """
    return huber(angle_difference(a, b), delta)
