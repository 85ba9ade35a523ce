"""Structure factors F_cell(h, k, l) from a dense HKL grid — PHYSICS.md §1.5.

* Nearest neighbour (default when all N > 2): ``F[h0, k0, l0]`` on the grid, else ``default_F``;
  ``h0 = ceil(h − 0.5)``.
* Tricubic (``-interpolate``, automatically on when any of Na, Nb, Nc ≤ 2): the 4×4×4 Lagrange
  polynomial on the nodes ``floor(h)−1 … floor(h)+2`` (the polynomial nanoBragg's Neville
  ``polint/polin2/polin3`` evaluates), at the fractional (h, k, l). Where the neighbourhood leaves
  the grid by nanoBragg's test (``h > h_max − 2`` or ``h < h_min + 2``, same for k, l) the
  nearest-neighbour value is used *for that evaluation only*. nanoBragg instead switches
  interpolation off for the rest of the run after the first such point (a global, racy under
  OpenMP, that depends on pixel order); this is not reproduced, in either mode (none of the golden
  cases triggers it).

Differentiable w.r.t. the grid values (``params["F"]``), ``default_F`` and, for interpolation,
the fractional indices. Grid points that the file did not list hold the value they were filled
with when the grid was read (``default_F`` at read time), so ``params["default_F"]`` changes only
the value outside the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lattice import nearest_index


class StructureFactors:
    """F lookup on a grid.

    values: (nh, nk, nl) tensor or None (no ``-hkl``: F = default_F everywhere); lower: (h, k, l)
    of ``values[0, 0, 0]``; default_F: () tensor; interpolate: tricubic on/off.
    """

    def __init__(self, values: Tensor | None, lower: tuple[int, int, int], default_F: Tensor,
                 interpolate: bool) -> None:
        self.values = values
        self.default_F = default_F
        self.interpolate = interpolate and values is not None
        if values is not None:
            self.shape = tuple(values.shape)
            dev = values.device
            self.lower = torch.tensor(lower, dtype=values.dtype, device=dev)
            self.upper = self.lower + torch.tensor(self.shape, dtype=values.dtype, device=dev) - 1
            self.flat = values.reshape(-1)
            self.strides = torch.tensor([self.shape[1] * self.shape[2], self.shape[2], 1],
                                        dtype=torch.int64, device=dev)

    def __call__(self, hkl: Tensor) -> Tensor:
        """F_cell (...) for fractional Miller indices hkl (..., 3)."""
        if self.values is None:
            return self.default_F.expand(hkl.shape[:-1])
        near = self._nearest(hkl)
        if not self.interpolate:
            return near
        inside = ((hkl >= self.lower + 2) & (hkl <= self.upper - 2)).all(-1)
        return torch.where(inside, self._tricubic(hkl), near)

    def _nearest(self, hkl: Tensor) -> Tensor:
        idx = nearest_index(hkl.detach()) - self.lower
        ok = ((idx >= 0) & (idx <= self.upper - self.lower)).all(-1)
        flat = (torch.where(ok.unsqueeze(-1), idx, torch.zeros_like(idx)).long() * self.strides).sum(-1)
        return torch.where(ok, self.flat[flat], self.default_F.to(self.flat.dtype))

    def _tricubic(self, hkl: Tensor) -> Tensor:
        base = torch.floor(hkl.detach())
        t = hkl - base  # in [0, 1); nodes at t = −1, 0, 1, 2
        w = torch.stack([-t * (t - 1) * (t - 2) / 6, (t + 1) * (t - 1) * (t - 2) / 2,
                         -(t + 1) * t * (t - 2) / 2, (t + 1) * t * (t - 1) / 6], -1)  # (..., 3, 4)
        start = (base - 1 - self.lower).long()
        hi = self.upper - self.lower
        offs = torch.arange(4, device=hkl.device)
        idx = [(start[..., i, None] + offs).clamp(0, int(hi[i])) for i in range(3)]  # (..., 4) each
        flat = (idx[0][..., :, None, None] * self.strides[0] + idx[1][..., None, :, None] * self.strides[1]
                + idx[2][..., None, None, :])
        vals = self.flat[flat.reshape(*flat.shape[:-3], 64)].reshape(flat.shape)
        return torch.einsum("...i,...j,...k,...ijk->...", w[..., 0, :], w[..., 1, :], w[..., 2, :], vals)
