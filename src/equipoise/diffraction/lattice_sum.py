"""Σ over crystal orientations of F_cell² · F_latt² for the square (sincg) lattice: the simulator's inner loop.

For scattering vectors q (3, M) [1/m], component-major, and the real-space vectors of K
orientations ``rot`` (K, 3, 3) (rows a, b, c in m; K = φ steps × mosaic domains), with ``h = a·q``
etc. (PHYSICS.md §1.3):

    I[m] = Σ_k F_cell(h0_mk)² · Π_i sincg(π h_mki, N_i)²          (PHYSICS.md §1.4 SQUARE, §1.5)

``sincg(πh, N) = sin(Nπu)/sin(πu)`` up to sign with ``u = h − round(h)`` (lattice.py explains why
the offset gives the same F_latt²); at ``sin(πu) = 0`` it is N. F_cell is nearest-neighbour:
``table[index]`` with ``table`` the flattened HKL grid followed by ``default_F`` (the value outside
the grid), or 1 without a grid (the caller multiplies by default_F²).

This is the same function as ``lattice.lattice_factor(..., "square")`` with
``structure_factors.StructureFactors`` (nearest neighbour), written for speed. Rows of q are taken
``rows`` at a time (the working set of one block stays in cache), and Miller indices are laid out
component-major, (3, K, rows), so that every elementwise pass runs over contiguous memory. Without
autograd, :func:`square_lattice_sum_nograd` works in place. For gradients,
:func:`square_lattice_jacobians` computes the value and its derivatives in one pass (sin and cos
shared; only the derivatives some input needs) as :class:`LatticeJacobians`, and
:class:`SavedLatticeSum` turns them into gradients with a few matrix products; the simulator can
compute them in its forward pass and keep them for the backward pass. The gradients are the
analytic ones of the same formula (``d sincg/du = π(N cos Nπu − sincg · cos πu)/sin πu``,
``d sincg/dN = πu cos Nπu / sin πu``, with lattice.py's series ``N(1 − (N²−1)π²u²/6)`` below
|u| = 1e-3).

Whole numbers of cells (N_i integers from 1 to 12, as nanoBragg's ``-N`` always are) take the
identity ``sin(Nπu)/sin(πu) = U_{N−1}(cos πu)`` (Chebyshev polynomial of the second kind, by its
three-term recurrence): one cosine instead of two sines and a division per component, the value N
at u = 0 without a special case, and ``d sincg/du = −π sin(πu) U'_{N−1}(cos πu)`` without the
series (exact where the series is good to ~(Nπu)²/10). The float64 value agrees with the sine ratio
to 3.6e-15·N over u ∈ [−½, ½] for every N ≤ 12 (tests/diffraction/test_lattice.py); it is an
exact rewriting, not a lower precision. A derivative w.r.t. n_cells (non-integer N) uses the sines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .lattice import _SMALL_U

Grid = tuple[Tensor, Tensor, Tensor, int]
#: where the kept derivatives go: ``keep(shape, dtype)`` returns a buffer (saved_buffers.SavedBuffers.take)
Keep = Callable[[tuple[int, ...], torch.dtype], Tensor]
# the Jacobian pass holds about three times the temporaries of the value pass and runs on blocks of
# this fraction of the rows (first measured 2^15 rather than 2^17 evaluations per block, 10
# orientations; with the block workspace, 2 was 5-10 % faster than 4 in CPU time, float32 and
# float64, load average 3.6-3.8)
_JACOBIAN_BLOCK_DIVISOR = 2
# sincg by the Chebyshev recurrence (one cosine and 2(N − 2) in-place passes) for whole numbers of
# cells up to this; above it two sines and a division are cheaper (float64: a sine costs ~15 passes)
_CHEBYSHEV_MAX_N = 12


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


def _component_rows(rot: Tensor) -> Tensor:
    """rot (K, 3, 3) as (3K, 3), component-major: row i·K + k is the i-th real vector of orientation k."""
    return rot.transpose(0, 1).reshape(-1, 3)


def _miller(q: Tensor, rows: Tensor) -> Tensor:
    """h = a·q for every orientation: (3, K, M) from q (3, M) and component-major rows (3K, 3)."""
    return (rows @ q).view(3, rows.shape[0] // 3, q.shape[1])


def _fcell(hkl: Tensor, table: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour F_cell (K, M) and its flat table indices (K, M) for hkl (3, K, M)."""
    idx = grid_index(hkl.permute(1, 2, 0), *grid)
    return table[idx], idx


def _sincg_exact(hkl: Tensor, n_cells: Tensor) -> Tensor:
    """sincg per component (..., 3) with the value N where sin(πu) = 0 (few points, any shape)."""
    pu = math.pi * (hkl - torch.round(hkl))
    s1 = torch.sin(pu)
    ratio = torch.sin(n_cells * pu) / torch.where(s1 == 0, torch.ones_like(s1), s1)
    return torch.where(s1 == 0, n_cells.expand_as(pu), ratio)


def integer_cells(n_cells: Tensor) -> tuple[int, int, int] | None:
    """(Na, Nb, Nc) as ints when each is a whole number from 1 to ``_CHEBYSHEV_MAX_N``, else None."""
    values = [float(v) for v in n_cells.detach().cpu().tolist()]
    if all(v == round(v) and 1 <= v <= _CHEBYSHEV_MAX_N for v in values):
        return int(values[0]), int(values[1]), int(values[2])
    return None


def _chebyshev_sincg(c: Tensor, n: int) -> Tensor:
    """``sin(nπu)/sin(πu) = U_{n−1}(cos πu)`` for ``c = cos πu`` (any shape) and a whole n ≥ 1.

    Chebyshev polynomial of the second kind by its recurrence ``U_k = 2c·U_{k−1} − U_{k−2}``
    (U_0 = 1, U_1 = 2c; Abramowitz & Stegun 22.7.5, 22.3.16): no division, and the value n where
    sin(πu) = 0 comes out of the polynomial. Overwrites ``c``.
    """
    if n == 1:
        return torch.ones_like(c)
    two_c = c.mul_(2.0)
    if n == 2:
        return two_c
    prev, cur = two_c, torch.mul(two_c, two_c).sub_(1.0)   # U_1, U_2
    if n == 3:
        return cur
    prev = prev.clone()  # two_c stays as the recurrence's factor
    for _ in range(n - 3):
        prev.neg_().addcmul_(two_c, cur)                    # U_k into U_{k-2}'s buffer
        prev, cur = cur, prev
    return cur


def _block_nograd(q: Tensor, rows: Tensor, n_cells: Tensor, table: Tensor | None, grid: Grid | None,
                  out: Tensor, whole_n: tuple[int, int, int] | None = None) -> None:
    """I for one block of rows of q into ``out`` (in-place arithmetic on fresh buffers).

    ``whole_n``: (Na, Nb, Nc) as ints (:func:`integer_cells`): sincg by :func:`_chebyshev_sincg`
    (one cosine instead of two sines and a division per component).
    """
    hkl = _miller(q, rows)                                  # (3, K, M)
    u = torch.round(hkl)
    torch.sub(hkl, u, out=u)
    u.mul_(math.pi)                                         # π u
    if whole_n is not None:
        u.cos_()
        f = _chebyshev_sincg(u[0], whole_n[0])
        f.mul_(_chebyshev_sincg(u[1], whole_n[1])).mul_(_chebyshev_sincg(u[2], whole_n[2]))  # F_latt (K, M)
        f.square_()
        if table is not None:
            f.mul_(_fcell(hkl, table, grid)[0].square_())
        torch.sum(f, 0, out=out)
        return
    s1 = torch.sin(u)
    sn = u.mul_(n_cells.view(3, 1, 1)).sin_()               # sin(N π u) (reuses u's buffer)
    num = sn[0] * sn[1]
    num.mul_(sn[2])
    den = s1[0] * s1[1]
    den.mul_(s1[2])
    f = num.div_(den)                                       # F_latt (K, M), not finite where some sin(πu) = 0
    f.square_()
    if not bool(torch.isfinite(f.sum())):  # some u exactly 0 (e.g. q = 0 at the direct beam): sincg = N there
        k, m = torch.nonzero(den == 0, as_tuple=True)
        f[k, m] = _sincg_exact(hkl[:, k, m].T, n_cells).prod(-1).square()
    if table is not None:
        f.mul_(_fcell(hkl, table, grid)[0].square_())
    torch.sum(f, 0, out=out)


def square_lattice_sum_nograd(q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None = None,
                              grid: Grid | None = None, rows: int = 1 << 14) -> Tensor:
    """I (M,) as in the module docstring for q (3, M), without autograd, ``rows`` rows of q at a time.

    grid: (lower, shape, strides, size) for :func:`grid_index` when ``table`` is given.
    """
    with torch.no_grad():
        comp = _component_rows(rot)
        whole_n = integer_cells(n_cells)
        out = torch.empty(q.shape[1], dtype=q.dtype, device=q.device)
        for start in range(0, q.shape[1], rows):
            _block_nograd(q[:, start:start + rows], comp, n_cells, table, grid, out[start:start + rows], whole_n)
        return out


class LatticeJacobians(NamedTuple):
    """Derivatives of I (module doc) for ``count`` rows of q from row ``start``; None where not needed.

    dh: (3K, count) dI/dh, rows component-major as :func:`_component_rows`; dq: (3, count) dI/dq,
    only when dh is not kept (else ``rows.T @ dh``: :func:`lattice_dq`);
    dn: (3, count) dI/dN; index, dtable: (K, count) table index of each term and dI/dtable[index].
    """

    start: int
    count: int
    dh: Tensor | None
    dq: Tensor | None
    dn: Tensor | None
    index: Tensor | None
    dtable: Tensor | None


class _Workspace:
    """Scratch buffers reused from block to block of one call.

    A fresh buffer of a few hundred kB costs its first-touch page faults on every block (measured:
    writing one took 3-5 times as long as the arithmetic), so the Jacobian pass takes its
    intermediates that do not outlive a block from here.
    """

    def __init__(self, like: Tensor) -> None:
        self.like = like
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """A contiguous buffer ``shape`` (contents undefined) that is reused by the next ``get(name, ...)``."""
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[name] = torch.empty(size, dtype=self.like.dtype, device=self.like.device)
        return buffer[:size].view(shape)


def _chebyshev_sincg_grad(c: Tensor, n: int, value: Tensor, slope: Tensor,
                          work: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
    """U_{n−1}(c) into ``value`` and dU_{n−1}/dc into ``slope`` (buffers shaped as c) for ``c = cos πu``.

    Whole n ≥ 1 (see :func:`_chebyshev_sincg`); the derivative by the differentiated recurrence
    ``U'_k = 2U_{k−1} + 2c·U'_{k−1} − U'_{k−2}`` (U'_0 = 0, U'_1 = 2), so that
    ``d sincg/du = −π sin(πu) · U'_{n−1}(cos πu)``, finite everywhere. The recurrence alternates
    between two buffers per quantity; the first is chosen so that the last step lands in the output.
    ``work``: three scratch buffers shaped as c (else fresh ones).
    """
    if n == 1:
        value.fill_(1.0)
        slope.zero_()
        return
    if n == 2:
        torch.mul(c, 2.0, out=value)
        slope.fill_(2.0)
        return
    two_c, spare_u, spare_d = work if work is not None else (torch.empty_like(c) for _ in range(3))
    torch.mul(c, 2.0, out=two_c)
    odd = (n - 3) % 2 == 1                                  # the step count; U_{n-1} ends in the first buffer if odd
    u_prev, u_cur = (value, spare_u) if odd else (spare_u, value)
    d_prev, d_cur = (slope, spare_d) if odd else (spare_d, slope)
    u_prev.copy_(two_c)                                     # U_1
    torch.mul(two_c, two_c, out=u_cur).sub_(1.0)            # U_2
    d_prev.fill_(2.0)                                       # U'_1
    torch.mul(two_c, 4.0, out=d_cur)                        # U'_2
    for _ in range(n - 3):
        d_prev.neg_().addcmul_(two_c, d_cur).add_(u_cur, alpha=2.0)    # U'_k into U'_{k-2}'s buffer
        u_prev.neg_().addcmul_(two_c, u_cur)
        u_prev, u_cur, d_prev, d_cur = u_cur, u_prev, d_cur, d_prev


def _block_jacobians(q: Tensor, rows: Tensor, n_cells: Tensor, table: Tensor | None, grid: Grid | None,
                     need: tuple[bool, bool, bool, bool], start: int, out: Tensor,
                     whole_n: tuple[int, int, int] | None = None,
                     work: _Workspace | None = None, keep: Keep | None = None) -> LatticeJacobians:
    """Value into ``out`` and the derivatives wanted by ``need`` (q, rot, n_cells, table) for one block.

    ``whole_n`` (and no derivative w.r.t. n_cells wanted): sincg and d sincg/du by the Chebyshev
    recurrences (:func:`_chebyshev_sincg_grad`: a sine and a cosine per component, no division).
    ``work``: scratch buffers shared with the other blocks (nothing returned lives in them).
    ``keep``: where the returned dh and dq are written on that path (else fresh tensors).
    """
    need_q, need_rot, need_n, need_table = need
    work = work if work is not None else _Workspace(q)
    shape = (3, rows.shape[0] // 3, q.shape[1])
    hkl = torch.mm(rows, q, out=work.get("hkl", (rows.shape[0], q.shape[1]))).view(shape)  # (3, K, M)
    fc = idx = None
    if table is not None:
        fc, idx = _fcell(hkl, table, grid)
    pu = torch.round(hkl, out=work.get("pu", shape))
    torch.sub(hkl, pu, out=pu).mul_(math.pi)               # π u
    n = n_cells.view(3, 1, 1)
    need_h = need_q or need_rot
    if whole_n is not None and not need_n:
        cos_pu = torch.cos(pu, out=hkl)                     # hkl is not needed any more
        f = work.get("f", shape)
        slope = torch.empty_like(pu) if keep is None else keep(shape, pu.dtype)  # becomes dh (kept)
        scratch = tuple(work.get(name, shape[1:]) for name in ("two_c", "spare_u", "spare_d"))
        for i in range(3):
            _chebyshev_sincg_grad(cos_pu[i], whole_n[i], f[i], slope[i], scratch)
        df_du = slope.mul_(pu.sin_()).mul_(-math.pi) if need_h else None  # dU/dc · dc/du (πu not needed after)
        df_dn = None
        nearest = None
    else:
        npu = pu * n
        s1, sn, cn = torch.sin(pu), torch.sin(npu), torch.cos(npu)
        df_dn = torch.mul(pu, cn).div_(s1) if need_n else None  # πu cos(Nπu) / sin(πu)
        f = sn.div_(s1)                                     # sincg; not finite where sin(πu) = 0 (fixed below)
        df_du = cn.mul_(n * math.pi).addcmul_(f, torch.cos(pu), value=-math.pi).div_(s1) if need_h else None
        apu = pu.abs()
        nearest = torch.minimum(apu[0], apu[1])
        torch.minimum(nearest, apu[2], out=nearest)         # (K, M) smallest |πu| of each term
    if nearest is not None and bool(nearest.amin() < math.pi * _SMALL_U):  # lattice.py's series branch
        at = torch.nonzero(nearest.view(-1) < math.pi * _SMALL_U).view(-1)  # the P terms concerned, flat (K·M)

        def pick(x: Tensor) -> Tensor:                       # (3, K, M) -> (3, P)
            return x.view(3, -1).index_select(1, at)

        p = pick(pu)
        small = p.abs() < math.pi * _SMALL_U
        nn = n.view(3, 1).expand_as(p)
        # the value: the ratio as without gradients, N at u = 0
        f.view(3, -1).index_copy_(1, at, torch.where(pick(s1) == 0, nn, pick(f)))
        if df_du is not None:
            df_du.view(3, -1).index_copy_(1, at, torch.where(small, -nn * (nn * nn - 1.0) * math.pi * p / 3.0,
                                                             pick(df_du)))
        if df_dn is not None:
            df_dn.view(3, -1).index_copy_(1, at, torch.where(small, 1.0 - (3.0 * nn * nn - 1.0) * p * p / 6.0,
                                                             pick(df_dn)))
    f0, f1, f2 = f.unbind(0)
    f01 = torch.mul(f0, f1, out=work.get("f01", shape[1:]))
    latt = torch.mul(f01, f2, out=work.get("latt", shape[1:]))  # F_latt (K, M)
    value = torch.mul(latt, latt, out=work.get("value", shape[1:]))
    weight = latt.mul_(2.0)                                 # d(F_latt²)/dF_latt (F_cell² below)
    dtable = None
    if table is not None:
        if need_table:
            dtable = value * fc.mul(2.0)                    # dI/dtable[idx] = 2 F_cell F_latt²
        fc2 = fc.square_()
        value.mul_(fc2)
        weight.mul_(fc2)
    torch.sum(value, 0, out=out)
    dh = dq = dn = None
    if need_h or need_n:
        # dI/du_i = dI/dF_latt · Π_{j≠i} f_j · df_i/du_i, in place on the derivatives of f
        f2w = torch.mul(f2, weight, out=work.get("f2w", shape[1:]))
        for d in (df_du, df_dn):
            if d is not None:
                d[0].mul_(f1).mul_(f2w)
                d[1].mul_(f0).mul_(f2w)
                d[2].mul_(f01).mul_(weight)
        if need_h:
            dh = df_du.view(-1, q.shape[1])                 # (3K, M)
            # dI/dq = Σ_k a_k dI/dh_k (3, M): from dh when dh is kept (SavedLatticeSum.backward)
            dq = rows.T @ dh if need_q and not need_rot else None
            dh = dh if need_rot else None
        if need_n:
            dn = df_dn.sum(1)                               # (3, M)
    return LatticeJacobians(start, q.shape[1], dh, dq, dn, idx if need_table else None, dtable)


def square_lattice_jacobians(q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None, grid: Grid | None,
                             need: tuple[bool, bool, bool, bool], rows: int = 1 << 14, keep: Keep | None = None
                             ) -> tuple[Tensor, list[LatticeJacobians]]:
    """I (M,) and its derivatives w.r.t. the inputs flagged in ``need`` = (q (3, M), rot, n_cells, table), without autograd.

    Blocks of ``rows // _JACOBIAN_BLOCK_DIVISOR`` rows of q (``rows`` as for the value alone); the
    derivatives are what :class:`SavedLatticeSum` needs. ``keep``: buffers for the largest of them
    (:func:`_block_jacobians`).
    """
    rows = max(1, rows // _JACOBIAN_BLOCK_DIVISOR)
    with torch.no_grad():
        comp = _component_rows(rot)
        whole_n = integer_cells(n_cells)
        out = torch.empty(q.shape[1], dtype=q.dtype, device=q.device)
        work = _Workspace(q)
        jac = [_block_jacobians(q[:, s:s + rows], comp, n_cells, table, grid, need, s, out[s:s + rows], whole_n,
                                work, keep) for s in range(0, q.shape[1], rows)]
        return out, jac


def lattice_dq(jac: LatticeJacobians, rows: Tensor) -> Tensor:
    """dI/dq (3, count) of one block: ``jac.dq``, else ``Σ_k a_k dI/dh_k`` from dh and the component-major rows (3K, 3)."""
    return jac.dq if jac.dq is not None else rows.T @ jac.dh


class SavedLatticeSum(torch.autograd.Function):
    """I (M,) with gradients w.r.t. q, rot, n_cells and the table from derivatives already computed.

    forward(q, rot, n_cells, table, value, jacobians) returns (a copy of) ``value``; ``jacobians``
    come from :func:`square_lattice_jacobians` for the same inputs and must hold every derivative
    that an input requiring grad needs.
    """

    @staticmethod
    def forward(ctx, q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None, value: Tensor,
                jacobians: list[LatticeJacobians]) -> Tensor:
        ctx.save_for_backward(q, rot)
        ctx.jacobians, ctx.k = jacobians, rot.shape[0]
        ctx.table_size = None if table is None else table.shape[0]
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        q, rot = ctx.saved_tensors
        rows = _component_rows(rot)
        need_q, need_rot, need_n, need_table = ctx.needs_input_grad[:4]
        grad_q = torch.empty_like(q) if need_q else None
        grad_rows = torch.zeros(3, 3 * ctx.k, dtype=q.dtype, device=q.device) if need_rot else None  # transposed
        grad_n = torch.zeros(3, dtype=q.dtype, device=q.device) if need_n else None
        grad_table = torch.zeros(ctx.table_size, dtype=q.dtype, device=q.device) if need_table else None
        for jac in ctx.jacobians:
            stop = jac.start + jac.count
            g = grad[jac.start:stop]
            if need_q:
                torch.mul(lattice_dq(jac, rows), g, out=grad_q[:, jac.start:stop])
            if need_rot:  # dL/da_k = Σ_m dL/dh_mk q_m
                grad_rows.addmm_(q[:, jac.start:stop] * g, jac.dh.T)
            if need_n:
                grad_n.addmv_(jac.dn, g)
            if need_table:
                grad_table.index_add_(0, jac.index.reshape(-1), (jac.dtable * g).reshape(-1))
        grad_rot = grad_rows.T.reshape(3, ctx.k, 3).transpose(0, 1) if need_rot else None
        return grad_q, grad_rot, grad_n, grad_table, None, None


def square_lattice_sum(q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None = None,
                       grid: Grid | None = None, rows: int = 1 << 14,
                       jacobians: list[LatticeJacobians] | None = None, value: Tensor | None = None,
                       keep: Keep | None = None) -> Tensor:
    """I (M,) = Σ_k F_cell² F_latt² (module doc) for q (3, M), rot (K, 3, 3), n_cells (3,).

    table: (G + 1,) flattened HKL grid then default_F, with grid = (lower, shape, strides, size) as in
    :func:`grid_index`, or None (F_cell = 1). Differentiable w.r.t. q, rot, n_cells and table; with
    ``value`` and ``jacobians`` from an earlier :func:`square_lattice_jacobians` call on the same
    inputs, nothing is recomputed. ``keep``: buffers for the Jacobians (:func:`_block_jacobians`).
    """
    inputs = (q, rot, n_cells, table)
    need = tuple(t is not None and t.requires_grad for t in inputs)
    if not (torch.is_grad_enabled() and any(need)):
        return value.clone() if value is not None else square_lattice_sum_nograd(q, rot, n_cells, table, grid, rows)
    if jacobians is None:
        value, jacobians = square_lattice_jacobians(q.detach(), rot.detach(), n_cells.detach(),
                                                    None if table is None else table.detach(), grid, need, rows,
                                                    keep)
    return SavedLatticeSum.apply(q, rot, n_cells, table, value, jacobians)
