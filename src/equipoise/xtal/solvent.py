"""Flat bulk-solvent mask and its structure factors.

The mask is gemmi's ``SolventMasker`` with cctbx's atomic radii, probe radius 1.1 Å and shrink
radius 0.9 Å (the defaults of cctbx ``mmtbx.masks``, Jiang & Brunger 1994): 1 in the solvent,
0 inside the model. Its structure factors F_mask(h) = (V/N) sum_grid mask exp(2 pi i h.x) are
taken from one FFT of the whole-cell grid. They are constant during an xyz or B stage and
recomputed when scales are updated.
"""

from __future__ import annotations

import gemmi
import numpy as np
import torch


def mask_structure_factors(structure: gemmi.Structure, hkl: torch.Tensor, *, d_min: float,
                           grid_step: float | None = None) -> torch.Tensor:
    """(m,) complex128 F_mask at hkl (m, 3) for the flat solvent mask of ``structure``.

    structure: a gemmi Structure with cell and space group (its first model is used);
    d_min: data resolution (Å); grid_step: mask grid spacing in Å (default min(d_min/4, 0.6)).
    """
    step = grid_step if grid_step is not None else min(d_min / 4.0, 0.6)
    grid = gemmi.FloatGrid()
    grid.setup_from(structure, spacing=step)
    masker = gemmi.SolventMasker(gemmi.AtomicRadiiSet.Cctbx)
    masker.put_mask_on_float_grid(grid, structure[0])
    values = np.array(grid, copy=False).astype(np.float64)
    shape = values.shape
    transform = np.fft.rfftn(values) * (structure.cell.volume / values.size)
    h = hkl.cpu().numpy().astype(np.int64)
    neg = h[:, 2] < 0
    hs = np.where(neg[:, None], -h, h)
    picked = transform[hs[:, 0] % shape[0], hs[:, 1] % shape[1], hs[:, 2]]
    # rfftn uses exp(-2 pi i ...): F(h) is its complex conjugate; F(-h) = conj F(h) for real maps
    f = np.where(neg, picked, np.conj(picked))
    return torch.as_tensor(f, dtype=torch.complex128, device=hkl.device)
