"""Scaling and bulk solvent: F_model = k_bin * exp(-s^T B_aniso s / 4) * (F_calc + k_mask F_mask).

k_mask = k_sol exp(-B_sol s^2 / 4) is the flat bulk-solvent model (Fokine & Urzhumtsev 2002,
as in cctbx ``mmtbx.f_model``); B_aniso (Å^2, Cartesian, constrained by the point group) is the
overall anisotropic scale and k_bin one scale per resolution bin. ``update_scales`` fits them
to the working set by least squares on amplitudes: a grid search over (k_sol, B_sol) with the
bin scales in closed form, a linear fit of B_aniso to ln(F_obs / |F_model|), repeated, then a
joint L-BFGS polish of all of them (Afonine et al. 2013, Acta D69, 625, use the same split).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

K_SOL_GRID = tuple(np.round(np.arange(0.0, 0.61, 0.05), 3).tolist())
B_SOL_GRID = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0)
#: elements of the (reflections x grid points) temporaries of one block of the grid search: the
#: whole 104-point grid at once took ~400 MB for 72k reflections (1A0F at 1.5 A)
GRID_BLOCK_ELEMENTS = 1_000_000


@dataclass
class Scales:
    """Fitted scales. k_bin (n_bins,); b_aniso (3, 3) Å^2; k_sol (e/Å^3-relative); b_sol Å^2."""

    k_sol: float
    b_sol: float
    b_aniso: torch.Tensor
    k_bin: torch.Tensor
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-friendly values."""
        b = self.b_aniso.detach().cpu().tolist()
        return {"k_sol": self.k_sol, "b_sol": self.b_sol,
                "b_aniso": {"B11": b[0][0], "B22": b[1][1], "B33": b[2][2], "B12": b[0][1], "B13": b[0][2],
                            "B23": b[1][2]},
                "k_bin": [float(k) for k in self.k_bin.detach().cpu()]}


def symmetry_projector(rotations_cart: torch.Tensor) -> torch.Tensor:
    """(6, 6) linear map that averages a symmetric B (as 6-vector B11 B22 B33 B12 B13 B23) over
    the point group: B -> mean_R R B R^T; rotations_cart (k, 3, 3) Cartesian rotations."""
    basis = torch.zeros(6, 3, 3, dtype=rotations_cart.dtype, device=rotations_cart.device)
    for n, (i, j) in enumerate(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))):
        basis[n, i, j] = 1.0
        basis[n, j, i] = 1.0
    out = torch.einsum("rab,nbc,rdc->nad", rotations_cart, basis, rotations_cart) / rotations_cart.shape[0]
    return torch.stack([_to6(m) for m in out], 1)


def _to6(m: torch.Tensor) -> torch.Tensor:
    return torch.stack([m[0, 0], m[1, 1], m[2, 2], m[0, 1], m[0, 2], m[1, 2]])


def _to33(v: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([v[0], v[3], v[4]]), torch.stack([v[3], v[1], v[5]]),
                        torch.stack([v[4], v[5], v[2]])])


def _quad6(s: torch.Tensor) -> torch.Tensor:
    """(m, 6) features so that s^T B s = features @ B6."""
    x, y, z = s.unbind(-1)
    return torch.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z], -1)


def model_amplitudes(f_calc: torch.Tensor, f_mask: torch.Tensor, s: torch.Tensor, bin_index: torch.Tensor,
                     scales: Scales) -> torch.Tensor:
    """(m,) complex F_model for F_calc, F_mask (m,) complex, s (m, 3) Å^-1 reciprocal vectors."""
    s2 = (s * s).sum(-1)
    k_mask = scales.k_sol * torch.exp(-scales.b_sol * s2 / 4.0)
    aniso = torch.exp(-(_quad6(s) @ _to6(scales.b_aniso)) / 4.0)
    k = scales.k_bin.to(s.dtype)[bin_index] * aniso
    return k * (f_calc + k_mask * f_mask)


def bin_scale(f_obs, f_abs, bin_index, n_bins, work):
    """Closed-form LS scale per bin, (n_bins,) or (n_bins, g): sum Fo |F| / sum |F|^2 over
    working reflections; f_obs (m,), f_abs (m,) or (m, g), bin_index (m,), work (m,) bool."""
    num = torch.zeros(n_bins, *f_abs.shape[1:], dtype=f_abs.dtype, device=f_abs.device)
    den = torch.zeros_like(num)
    w = work.to(f_abs.dtype)
    fo = f_obs.reshape(-1, *([1] * (f_abs.dim() - 1)))
    ww = w.reshape(fo.shape)
    num.index_add_(0, bin_index, ww * fo * f_abs)
    den.index_add_(0, bin_index, ww * f_abs * f_abs)
    return num / den.clamp_min(1e-30)


def update_scales(f_obs: torch.Tensor, f_calc: torch.Tensor, f_mask: torch.Tensor, s: torch.Tensor,
                  bin_index: torch.Tensor, n_bins: int, work: torch.Tensor, projector: torch.Tensor,
                  *, rounds: int = 3, polish_steps: int = 30,
                  combine: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Scales:
    """Fit k_sol, B_sol, B_aniso and k_bin to the working set (see module doc).

    f_obs (m,); f_calc, f_mask (m,) complex (detached); s (m, 3) Å^-1; bin_index (m,) int64;
    work (m,) bool; projector (6, 6) from ``symmetry_projector``. ``combine`` maps the
    unscaled amplitudes k_aniso |F_calc + k_mask F_mask| ((m,) or (m, g)) to what the data
    measure before the bin scale, e.g. twinned amplitudes (``TwinOperators.amplitudes``); the
    anisotropic fit then divides them by the reflection's own anisotropic factor (exact when
    the twin law leaves B_aniso unchanged, as for merohedral laws in uniaxial point groups).
    Returns ``Scales``.
    """
    f_calc, f_mask = f_calc.detach(), f_mask.detach()
    dtype, device = f_obs.dtype, f_obs.device
    s2 = (s * s).sum(-1)
    q6 = _quad6(s)
    b6 = torch.zeros(6, dtype=dtype, device=device)
    k_sol_grid = torch.tensor(K_SOL_GRID, dtype=dtype, device=device)
    b_sol_grid = torch.tensor(B_SOL_GRID, dtype=dtype, device=device)
    kk, bb = torch.meshgrid(k_sol_grid, b_sol_grid, indexing="ij")
    kk, bb = kk.reshape(-1), bb.reshape(-1)
    wsum = f_obs[work].sum()
    k_sol, b_sol = 0.35, 46.0
    # grid points per block: (m, block) complex temporaries stay near GRID_BLOCK_ELEMENTS
    block = max(1, GRID_BLOCK_ELEMENTS // max(len(f_obs), 1))

    def grid_amplitudes(k_sols, b_sols, aniso):
        k_mask = k_sols[None] * torch.exp(-b_sols[None] * s2[:, None] / 4.0)     # (m, g)
        f_abs = (f_calc[:, None] + k_mask * f_mask[:, None]).abs() * aniso[:, None]
        return f_abs if combine is None else combine(f_abs)

    for _ in range(rounds):
        aniso = torch.exp(-(q6 @ b6) / 4.0)
        ks, rs = [], []
        for lo in range(0, len(kk), block):
            f_abs = grid_amplitudes(kk[lo:lo + block], bb[lo:lo + block], aniso)
            k = bin_scale(f_obs, f_abs, bin_index, n_bins, work)                 # (n_bins, g)
            ks.append(k)
            rs.append(((f_obs[:, None] - k[bin_index] * f_abs).abs() * work[:, None]).sum(0) / wsum)
        best = int(torch.argmin(torch.cat(rs)))
        k_sol, b_sol = float(kk[best]), float(bb[best])
        f_abs1 = grid_amplitudes(kk[best:best + 1], bb[best:best + 1], aniso)[:, 0] / aniso
        kb = torch.cat(ks, dim=1)[:, best]
        # linear LS for B_aniso: ln(Fo / (k |F|)) = -s^T B s / 4, weighted by Fo^2
        ok = work & (f_obs > 0) & (f_abs1 > 0)
        y = torch.log(f_obs[ok] / (kb[bin_index[ok]] * f_abs1[ok]))
        x = -(q6[ok] @ projector) / 4.0
        w = f_obs[ok] ** 2 / (f_obs[ok] ** 2).mean()
        a_mat = (x * w[:, None]).T @ x + 1e-6 * torch.eye(6, dtype=dtype, device=device)
        b6 = projector @ torch.linalg.solve(a_mat, (x * w[:, None]).T @ y)
    scales = _polish(f_obs, f_calc, f_mask, s, bin_index, n_bins, work, projector, k_sol, b_sol, b6, polish_steps,
                     combine or (lambda f: f))
    return scales


def _polish(f_obs, f_calc, f_mask, s, bin_index, n_bins, work, projector, k_sol, b_sol, b6, steps,
            combine) -> Scales:
    """Joint L-BFGS of all scales on the working-set amplitude least squares."""
    dtype = f_obs.dtype
    s2 = (s * s).sum(-1)
    q6 = _quad6(s)
    aniso0 = torch.exp(-(q6 @ b6) / 4.0)
    f_abs0 = combine((f_calc + k_sol * torch.exp(-b_sol * s2 / 4.0) * f_mask).abs() * aniso0)
    k0 = bin_scale(f_obs, f_abs0, bin_index, n_bins, work).clamp_min(1e-12)
    p_ksol = torch.tensor(k_sol, dtype=dtype, requires_grad=True)
    p_bsol = torch.tensor(b_sol, dtype=dtype, requires_grad=True)
    p_b6 = b6.clone().requires_grad_(True)
    p_logk = torch.log(k0).clone().requires_grad_(True)
    params = [p_ksol, p_bsol, p_b6, p_logk]
    norm = (f_obs[work] ** 2).sum()

    def loss_fn():
        fm = torch.exp(p_logk)[bin_index] * combine(torch.exp(-(q6 @ (projector @ p_b6)) / 4.0) *
                                                    (f_calc + p_ksol * torch.exp(-p_bsol * s2 / 4.0) * f_mask).abs())
        return (((f_obs - fm) ** 2) * work).sum() / norm

    start = float(loss_fn())
    if steps > 0:
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = loss_fn()
            value.backward()
            return value

        opt.step(closure)
    end = float(loss_fn())
    ok = math.isfinite(end) and end <= start and 0.0 <= float(p_ksol) <= 1.5 and 0.0 <= float(p_bsol) <= 300.0
    notes = []
    if not ok:
        notes.append(f"scale polish rejected (LS {start:.5g} -> {end:.5g}, k_sol {float(p_ksol):.3g}, "
                     f"B_sol {float(p_bsol):.3g}); grid-search values kept")
        return Scales(k_sol, b_sol, _to33(projector @ b6), k0, notes)
    return Scales(float(p_ksol), float(p_bsol), _to33((projector @ p_b6).detach()), torch.exp(p_logk).detach(), notes)
