"""Σ over crystal orientations of F_cell² · F_latt² for the square (sincg) lattice: the simulator's inner loop.

For scattering vectors q (M, 3) [1/m] and the real-space vectors of K orientations ``rot`` (K, 3, 3)
(rows a, b, c in m; K = φ steps × mosaic domains), with ``h = a·q`` etc. (PHYSICS.md §1.3):

    I[m] = Σ_k F_cell(h0_mk)² · Π_i sincg(π h_mki, N_i)²          (PHYSICS.md §1.4 SQUARE, §1.5)

``sincg(πh, N) = sin(Nπu)/sin(πu)`` up to sign with ``u = h − round(h)`` (lattice.py explains why
the offset gives the same F_latt²); at ``sin(πu) = 0`` it is N. F_cell is nearest-neighbour:
``table[index]`` with ``table`` the flattened HKL grid followed by ``default_F`` (the value outside
the grid), or 1 without a grid (the caller multiplies by default_F²).

This is the same function as ``lattice.lattice_factor(..., "square")`` with
``structure_factors.StructureFactors`` (nearest neighbour), written for speed: without autograd it
runs in place on (M, 3K) buffers; with autograd, :class:`SquareLatticeSum` computes the value and its
derivatives in one pass (sin and cos shared) and saves only per-chunk Jacobians, so the backward
pass is a few matrix products. The gradients are the analytic ones of the same formula
(``d sincg/du = π(N cos Nπu − sincg · cos πu)/sin πu``, ``d sincg/dN = πu cos Nπu / sin πu``, with
lattice.py's series ``N(1 − (N²−1)π²u²/6)`` below |u| = 1e-3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .lattice import _SMALL_U


def grid_index(hkl: Tensor, lower: Tensor, shape: Tensor, strides: Tensor, size: int) -> Tensor:
    """Flat nearest-neighbour indices (...) into ``cat(grid.flatten(), [default_F])`` for hkl (..., 3).

    ``h0 = ceil(h − 0.5)`` (nanoBragg); points outside the grid map to the last entry, ``size``
    (the number of grid points, where default_F sits). lower, shape: (3,) in the dtype of hkl
    (first Miller index and extent of the grid); strides: (3,) int64.
    """
    idx = torch.ceil(hkl - 0.5) - lower
    ok = ((idx >= 0) & (idx < shape)).all(-1)
    flat = (torch.where(ok.unsqueeze(-1), idx, torch.zeros_like(idx)).long() * strides).sum(-1)
    return torch.where(ok, flat, torch.full_like(flat, size))


def _miller(q: Tensor, rot: Tensor) -> Tensor:
    """h = a·q for every orientation: (M, K, 3) from q (M, 3) and rot (K, 3, 3)."""
    k = rot.shape[0]
    return (q @ rot.reshape(k * 3, 3).T).view(q.shape[0], k, 3)


def square_lattice_sum_nograd(q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None = None,
                              grid: tuple[Tensor, Tensor, Tensor, int] | None = None) -> Tensor:
    """I (M,) as in the module docstring, without autograd (in-place arithmetic on fresh buffers).

    grid: (lower, shape, strides, size) for :func:`grid_index` when ``table`` is given.
    """
    hkl = _miller(q, rot)                                   # (M, K, 3)
    u = torch.round(hkl)
    torch.sub(hkl, u, out=u)
    u.mul_(math.pi)                                         # π u
    s1 = torch.sin(u)
    sn = u.mul_(n_cells).sin_()                             # sin(N π u) (reuses u's buffer)
    num = sn[..., 0] * sn[..., 1]
    num.mul_(sn[..., 2])
    den = s1[..., 0] * s1[..., 1]
    den.mul_(s1[..., 2])
    zero = den == 0
    f = num.div_(den)                                       # F_latt (M, K), NaN where some sin(πu) = 0
    if bool(zero.any()):  # some u exactly 0 (e.g. q = 0 at the direct beam): sincg = N there
        m, k = torch.nonzero(zero, as_tuple=True)
        f[m, k] = _sincg_exact(hkl[m, k], n_cells).prod(-1)
    f.square_()
    if table is not None:
        fc = table[grid_index(hkl, *grid)]
        f.mul_(fc.square_())
    return f.sum(-1)


def _sincg_exact(hkl: Tensor, n_cells: Tensor) -> Tensor:
    """sincg per component (..., 3) with the value N where sin(πu) = 0 (few points, any shape)."""
    pu = math.pi * (hkl - torch.round(hkl))
    s1 = torch.sin(pu)
    ratio = torch.sin(n_cells * pu) / torch.where(s1 == 0, torch.ones_like(s1), s1)
    return torch.where(s1 == 0, n_cells.expand_as(pu), ratio)


def _value_and_jacobians(hkl: Tensor, n_cells: Tensor, fc2: Tensor | None):
    """Per term (M, K): F_cell²·F_latt², its d/dh and d/dN (M, K, 3), and 2·F_latt² (for d/dF_cell = 2 F_cell F_latt²).

    Runs without autograd (inside :class:`SquareLatticeSum`), in place where possible.
    """
    pu = torch.round(hkl)
    torch.sub(hkl, pu, out=pu).mul_(math.pi)               # π u
    npu = pu * n_cells
    s1, c1, sn, cn = torch.sin(pu), torch.cos(pu), torch.sin(npu), torch.cos(npu)
    f = sn.div_(s1)                                         # sincg; NaN where sin(πu) = 0 (fixed below)
    df_dn = npu.mul_(0.0).addcmul_(pu, cn).div_(s1)        # πu cos(Nπu) / sin(πu)
    df_du = cn.mul_(n_cells * math.pi).addcmul_(f, c1, value=-math.pi).div_(s1)
    small = pu.abs() < math.pi * _SMALL_U                   # lattice.py's series branch (includes u = 0)
    if bool(small.any()):
        at = torch.nonzero(small, as_tuple=True)
        n, p = n_cells.expand_as(pu)[at], pu[at]
        f[at] = n * (1.0 - (n * n - 1.0) * p * p / 6.0)
        df_du[at] = -n * (n * n - 1.0) * math.pi * p / 3.0
        df_dn[at] = 1.0 - (3.0 * n * n - 1.0) * p * p / 6.0
    f0, f1, f2 = f.unbind(-1)
    others = torch.empty_like(f)                            # Π_{j≠i} f_j
    torch.mul(f1, f2, out=others[..., 0])
    torch.mul(f0, f2, out=others[..., 1])
    torch.mul(f0, f1, out=others[..., 2])
    latt = f0 * others[..., 0]                              # F_latt (M, K)
    two_latt2 = 2.0 * latt * latt
    value = 0.5 * two_latt2 if fc2 is None else 0.5 * two_latt2 * fc2
    others.mul_((2.0 * latt if fc2 is None else 2.0 * latt * fc2).unsqueeze(-1))
    return value, df_du.mul_(others), df_dn.mul_(others), two_latt2


class SquareLatticeSum(torch.autograd.Function):
    """Differentiable I (M,) = Σ_k F_cell² F_latt² w.r.t. q, rot, n_cells and the F table (see module doc)."""

    @staticmethod
    def forward(ctx, q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None,
                grid: tuple[Tensor, Tensor, Tensor, int] | None) -> Tensor:
        hkl = _miller(q, rot)
        fc2 = idx = None
        if table is not None:
            idx = grid_index(hkl, *grid)
            fc = table[idx]
            fc2 = fc * fc
        value, jac_h, jac_n, two_latt2 = _value_and_jacobians(hkl, n_cells, fc2)
        jac_t = None if table is None else two_latt2 * fc  # dI/dtable[j] = Σ_{k: idx = j} 2 F_cell F_latt²
        ctx.save_for_backward(q, rot, jac_h, jac_n.sum(1), idx, jac_t)
        ctx.table_size = None if table is None else table.shape[0]
        return value.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, rot, jac_h, jac_n, idx, jac_t = ctx.saved_tensors
        k = rot.shape[0]
        g = (grad[:, None, None] * jac_h).reshape(q.shape[0], k * 3)  # dL/dh (M, 3K)
        grad_q = g @ rot.reshape(k * 3, 3) if ctx.needs_input_grad[0] else None
        grad_rot = (g.T @ q).reshape(k, 3, 3) if ctx.needs_input_grad[1] else None
        grad_n = grad @ jac_n if ctx.needs_input_grad[2] else None
        grad_table = None
        if jac_t is not None and ctx.needs_input_grad[3]:
            grad_table = torch.zeros(ctx.table_size, dtype=grad.dtype, device=grad.device)
            grad_table.index_add_(0, idx.reshape(-1), (grad[:, None] * jac_t).reshape(-1))
        return grad_q, grad_rot, grad_n, grad_table, None


def square_lattice_sum(q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None = None,
                       grid: tuple[Tensor, Tensor, Tensor, int] | None = None) -> Tensor:
    """I (M,) = Σ_k F_cell² F_latt² (module doc) for q (M, 3), rot (K, 3, 3), n_cells (3,).

    table: (G + 1,) flattened HKL grid then default_F, with grid = (lower, shape, strides, size) as in :func:`grid_index`, or None
    (F_cell = 1). Differentiable w.r.t. q, rot, n_cells and table.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, rot, n_cells, table))
    if not needs_grad:
        with torch.no_grad():
            return square_lattice_sum_nograd(q, rot, n_cells, table, grid)
    return SquareLatticeSum.apply(q, rot, n_cells, table, grid)
