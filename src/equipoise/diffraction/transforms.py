"""Smooth maps from unconstrained optimisation variables to bounded physical parameters.

Refinement optimises free variables ``u`` (any real value) and maps them to parameters in user
units with a :class:`Transform`. Every map is smooth and strictly monotone, so bounds hold
without clamping and gradients never vanish at a bound (DESIGN.md: no clamp that kills
gradients). Each transform is scaled so that a unit change of ``u`` is a typical step of the
parameter (one degree, one pixel, a factor e), which keeps the variables comparably conditioned
for L-BFGS and Adam.

Transforms act elementwise on tensors of any shape; :meth:`Transform.inverse` takes numbers or
arrays in user units and returns the matching ``u`` as a float64 numpy array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["Transform", "Shift", "Positive", "Above", "Interval", "Split", "CubicCell"]


class Transform:
    """Map ``u`` (unconstrained) -> value (user units) and back."""

    def __call__(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, value, field: str) -> np.ndarray:
        """``u`` for ``value``; InputError naming ``field`` if ``value`` is outside the bounds."""
        raise NotImplementedError


def _array(value, field: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise InputError(f"must be finite, got {v.tolist()}", field=field)
    return v


@dataclass(frozen=True)
class Shift(Transform):
    """Unbounded: ``value = origin + unit·u`` (origin and unit in user units)."""

    origin: tuple[float, ...] | float
    unit: float = 1.0

    def __call__(self, u: Tensor) -> Tensor:
        return torch.as_tensor(self.origin, dtype=u.dtype, device=u.device) + self.unit * u

    def inverse(self, value, field: str) -> np.ndarray:
        return (_array(value, field) - np.asarray(self.origin, dtype=np.float64)) / self.unit


@dataclass(frozen=True)
class Positive(Transform):
    """``value = ref·exp(rate·u) > 0``: multiplicative steps (u = 1 is a factor exp(rate))."""

    ref: tuple[float, ...] | float
    rate: float = 1.0

    def __call__(self, u: Tensor) -> Tensor:
        return torch.as_tensor(self.ref, dtype=u.dtype, device=u.device) * torch.exp(self.rate * u)

    def inverse(self, value, field: str) -> np.ndarray:
        v = _array(value, field)
        if not np.all(v > 0):
            raise InputError(f"must be > 0, got {v.tolist()}", field=field)
        return np.log(v / np.asarray(self.ref, dtype=np.float64)) / self.rate


@dataclass(frozen=True)
class Above(Transform):
    """``value = lower + unit·softplus(u) > lower``: linear far above the bound, smooth near it."""

    lower: float
    unit: float = 1.0

    def __call__(self, u: Tensor) -> Tensor:
        return self.lower + self.unit * torch.nn.functional.softplus(u)

    def inverse(self, value, field: str) -> np.ndarray:
        v = _array(value, field)
        if not np.all(v > self.lower):
            raise InputError(f"must be > {self.lower:g}, got {v.tolist()}", field=field)
        y = (v - self.lower) / self.unit
        return y + np.log(-np.expm1(-y))  # softplus⁻¹(y) = log(exp(y) − 1), stable for large y


@dataclass(frozen=True)
class Interval(Transform):
    """``value = low + (high − low)·sigmoid(u)`` in the open interval (low, high)."""

    low: float
    high: float

    def __call__(self, u: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(u)

    def inverse(self, value, field: str) -> np.ndarray:
        v = _array(value, field)
        if not np.all((v > self.low) & (v < self.high)):
            raise InputError(f"must lie in ({self.low:g}, {self.high:g}), got {v.tolist()}", field=field)
        p = (v - self.low) / (self.high - self.low)
        return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Split(Transform):
    """Different transforms for consecutive parts of a vector: ``parts`` = ((length, transform), ...).

    E.g. a unit cell (6,): lengths ``Positive`` and angles ``Interval(0, 180)``.
    """

    parts: tuple[tuple[int, Transform], ...]

    def __call__(self, u: Tensor) -> Tensor:
        pieces, start = [], 0
        for length, transform in self.parts:
            pieces.append(transform(u[..., start:start + length]))
            start += length
        return torch.cat(pieces, dim=-1)

    def inverse(self, value, field: str) -> np.ndarray:
        v = _array(value, field)
        pieces, start = [], 0
        for length, transform in self.parts:
            pieces.append(transform.inverse(v[..., start:start + length], field))
            start += length
        return np.concatenate(pieces, axis=-1)


@dataclass(frozen=True)
class CubicCell(Transform):
    """A cubic unit cell from one variable: ``u`` (1,) -> (a, a, a, 90, 90, 90) with
    ``a = length·exp(rate·u)`` (Å, deg). The lattice constraint of the cubic system: one free length.

    :meth:`inverse` takes a (6,) cell and needs it cubic (equal lengths, 90° angles).
    """

    length: float
    rate: float = 1.0

    def __call__(self, u: Tensor) -> Tensor:
        a = self.length * torch.exp(self.rate * u)
        right = torch.full(a.shape, 90.0, dtype=u.dtype, device=u.device)
        return torch.cat([a, a, a, right, right, right], dim=-1)

    def inverse(self, value, field: str) -> np.ndarray:
        v = _array(value, field)
        if v.shape[-1:] != (6,) or not (np.allclose(v[..., :3], v[..., :1], rtol=1e-9)
                                         and np.allclose(v[..., 3:], 90.0, atol=1e-9) and np.all(v[..., :3] > 0)):
            raise InputError(f"a cubic cell needs a = b = c > 0 and alpha = beta = gamma = 90, got {v.tolist()}",
                             field=field)
        return np.log(v[..., :1] / self.length) / self.rate
