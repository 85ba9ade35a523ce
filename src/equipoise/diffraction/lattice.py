"""Lattice (crystal shape) transforms F_latt(h, k, l) — PHYSICS.md §1.4.

Shapes (nanoBragg ``-square_xtal`` default, ``-round_xtal``, ``-gauss_xtal``, ``-tophat_spots``):

* SQUARE: ``F = sincg(πh, Na)·sincg(πk, Nb)·sincg(πl, Nc)``, ``sincg(x, N) = sin(Nx)/sin(x)``.
  Evaluated here on the offset from the nearest integer, ``u = h − h0``:
  ``|sin(Nπh)/sin(πh)| = |sin(Nπu)/sin(πu)|`` for integer N, so F_latt² (the only thing the
  intensity uses) equals nanoBragg's; the sign ``(−1)^{h0(N−1)}`` is dropped. Near ``u = 0`` a
  Taylor series ``N(1 − (N²−1)π²u²/6)`` replaces the ratio, so values and gradients (w.r.t. h
  and N) stay finite at integer h. This is also the smooth extension used for non-integer N.
* ROUND: ``F = NaNbNc · 0.723601254558268 · sinc3(π sqrt(fudge·hrad²))``,
  ``hrad² = Σ (h−h0)² N²``, ``sinc3(x) = 3(sin x − x cos x)/x³`` (series near 0).
* GAUSS: ``F = NaNbNc · exp(−fudge·Δr*²/0.63)``, ``Δr*² = |Δh a* + Δk b* + Δl c*|² (NaNbNc)²`` with
  a*, b*, c* in Å⁻¹, not rotated by φ or mosaic (nanoBragg quirk, reproduced in both modes).
* TOPHAT: ``F = NaNbNc`` where ``fudge·Δr*² < 0.3969``, else 0 (not differentiable).

``h0 = ceil(h − 0.5)`` as in nanoBragg.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ROUND_SCALE = 0.723601254558268  # sqrt of the cube/sphere volume ratio (nanoBragg.c)
_SMALL_U = 1e-3  # below |u| = 1e-3 the series is exact to ~1e-13 relative (next term ~ (N π u)^4 / 120)


def nearest_index(x: Tensor) -> Tensor:
    """nanoBragg's nearest integer ``ceil(x − 0.5)`` (as a float tensor)."""
    return torch.ceil(x - 0.5)


def sincg_offset(u: Tensor, n: Tensor) -> Tensor:
    """``|sin(Nπu)/sin(πu)|`` up to sign, with a safe series for small ``u`` (= h − h0 ∈ [−½, ½])."""
    small = u.abs() < _SMALL_U
    us = torch.where(small, torch.ones_like(u) * 0.25, u)
    pu = math.pi * us
    ratio = torch.sin(n * pu) / torch.sin(pu)
    pu0 = math.pi * u
    series = n * (1.0 - (n * n - 1.0) * pu0 * pu0 / 6.0)
    return torch.where(small, series, ratio)


def sinc3_of_square(x2: Tensor) -> Tensor:
    """``sinc3(x) = 3(sin x − x cos x)/x³`` as a function of ``x² ≥ 0`` (safe gradient at 0)."""
    small = x2 < 1e-4
    xs = torch.sqrt(torch.where(small, torch.ones_like(x2), x2))
    full = 3.0 * (torch.sin(xs) - xs * torch.cos(xs)) / (xs * xs * xs)
    series = 1.0 - x2 / 10.0 + x2 * x2 / 280.0
    return torch.where(small, series, full)


def lattice_factor(hkl: Tensor, n_cells: Tensor, shape: str, fudge: float,
                   recip_A: Tensor | None = None) -> Tensor:
    """F_latt for fractional Miller indices.

    hkl: (..., 3) fractional (h, k, l); n_cells: (3,) (Na, Nb, Nc); recip_A: (3, 3) rows a*, b*, c*
    in Å⁻¹ (needed for "gauss"/"tophat"). Returns (...) dimensionless.
    """
    frac = hkl - nearest_index(hkl)
    if shape == "square":
        f = sincg_offset(frac, n_cells)
        return f[..., 0] * f[..., 1] * f[..., 2]
    nprod = n_cells[0] * n_cells[1] * n_cells[2]
    if shape == "round":
        hrad2 = (frac * frac * n_cells * n_cells).sum(-1)
        return nprod * ROUND_SCALE * sinc3_of_square(math.pi ** 2 * fudge * hrad2)
    if recip_A is None:
        raise ValueError(f"lattice shape {shape!r} needs the reciprocal vectors")
    dr = frac @ recip_A  # Δh a* + Δk b* + Δl c*, Å⁻¹
    dr2 = (dr * dr).sum(-1) * nprod * nprod
    if shape == "gauss":
        return nprod * torch.exp(-fudge * dr2 / 0.63)
    if shape == "tophat":
        return torch.where(fudge * dr2 < 0.3969, nprod.expand_as(dr2), torch.zeros_like(dr2))
    raise ValueError(f"unknown lattice shape {shape!r}")
