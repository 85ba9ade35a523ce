"""The simulator's per-row geometry as autograd Functions whose backward passes keep little.

For every row of the per-pixel layout (pixel × subpixel × layer, component-major (3, ...) as in
simulate.py):

* :func:`unit_directions`: position P (3, ...) m → unit direction d̂ = P/|P| (3, ...) and 1/|P| (...)
  (PHYSICS.md §1.2: the diffracted beam's direction);
* :func:`scattering_vectors`: d̂ and the S sources' incident directions î_s (S, 3) and wavelengths
  λ_s (S,) m → q = (d̂ − î_s)/λ_s (3, ..., S) 1/m (PHYSICS.md §1.3).

The values are the same operations as the plain torch expressions, in the same order (bit for bit).
The backward passes are the analytic derivatives (with r = 1/|P|):
``∂L/∂P = r·(g_d − d̂·(d̂·g_d + r·g_r))``; ``∂L/∂d̂ = Σ_s g_q/λ_s``, ``∂L/∂î_s = −Σ g_q/λ_s``,
``∂L/∂λ_s = −Σ g_q·q/λ_s``. They keep d̂ and 1/|P| (4 values per row) and q (3 values per row and
source), which autograd would otherwise keep as P, 1/|P|, and q again in the lattice sum;
given ``keep`` (saved_buffers.SavedBuffers.take), the outputs are written into reusable buffers,
so that nothing needs copying there. Checked with torch.autograd.gradcheck
(tests/diffraction/test_pixel_rows.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Keep = Callable[[tuple[int, ...], torch.dtype], Tensor]


def _empty(keep: Keep | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device) if keep is None else keep(shape, like.dtype)


class _UnitDirections(torch.autograd.Function):
    # elementwise work on (3, rows) views: torch's CPU kernels are 2-3x slower on the simulator's
    # (3, n, O², T) shapes with their trailing axes of length 1 (measured, 2^17 rows float64)
    @staticmethod
    def forward(ctx, pos: Tensor, keep: Keep | None):
        ctx.set_materialize_grads(False)
        p = pos.reshape(3, -1)
        r2 = (p * p).sum(0)
        r_inv = torch.rsqrt(r2, out=_empty(keep, tuple(r2.shape), r2))
        d = torch.mul(p, r_inv, out=_empty(keep, tuple(p.shape), p))
        ctx.saved, ctx.pos_shape = (d, r_inv), tuple(pos.shape)  # plain tensors: no cycle through grad_fn
        return d.view(pos.shape), r_inv.view(pos.shape[1:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_d: Tensor | None, g_r: Tensor | None):
        d, r_inv = ctx.saved
        if g_d is None and g_r is None:
            return None, None
        if g_d is None:                                      # −r²·g_r·d̂
            return (d * (g_r.reshape(-1) * r_inv * r_inv)).neg_().view(ctx.pos_shape), None
        g = g_d.reshape(3, -1)
        s = (d * g).sum(0)                                   # d̂·g_d + r·g_r (rows,)
        if g_r is not None:
            s.addcmul_(g_r.reshape(-1), r_inv)
        return (g - d * s).mul_(r_inv).view(ctx.pos_shape), None


def unit_directions(pos: Tensor, keep: Keep | None = None) -> tuple[Tensor, Tensor]:
    """(d̂ (3, ...), 1/|P| (...)) for positions ``pos`` (3, ...) in m (module docstring)."""
    return _UnitDirections.apply(pos, keep)


class _ScatteringVectors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d: Tensor, incident: Tensor, wavelength: Tensor, keep: Keep | None):
        n_src = incident.shape[0]
        diff = d.reshape(3, -1, 1) - incident.T.reshape(3, 1, n_src)
        q = torch.div(diff, wavelength, out=_empty(keep, tuple(diff.shape), diff))  # (3, rows, S)
        ctx.q, ctx.d_shape = q, tuple(d.shape)
        ctx.save_for_backward(wavelength)
        return q.view(*d.shape, n_src)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_q: Tensor):
        wavelength, = ctx.saved_tensors
        q = ctx.q
        need_d, need_inc, need_lam = ctx.needs_input_grad[:3]
        g_q = g_q.reshape(q.shape)
        g_d = g_inc = g_lam = None
        if need_d or need_inc:
            g = g_q / wavelength                            # (3, rows, S)
            if need_d:
                g_d = (g[:, :, 0] if g.shape[2] == 1 else g.sum(-1)).reshape(ctx.d_shape)
            if need_inc:
                g_inc = -g.sum(1).T                         # (S, 3)
        if need_lam:
            g_lam = -(g_q * q).sum((0, 1)) / wavelength
        return g_d, g_inc, g_lam, None


def scattering_vectors(d: Tensor, incident: Tensor, wavelength: Tensor, keep: Keep | None = None) -> Tensor:
    """q = (d̂ − î_s)/λ_s (3, ..., S) in 1/m for d̂ (3, ...), incident (S, 3), wavelength (S,) m."""
    return _ScatteringVectors.apply(d, incident, wavelength, keep)
