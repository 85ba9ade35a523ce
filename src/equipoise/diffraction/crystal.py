"""Crystal lattice vectors: cell → real/reciprocal vectors, misset, spindle (φ) and mosaic rotations.

Everything follows PHYSICS.md §1.10 (nanoBragg.c's cell setup):

* ``-cell a b c α β γ`` (Å, deg) gives the reciprocal lengths and angles and nanoBragg's default
  orientation ``a* = (a*,0,0)``, ``b* = (b* cosγ*, b* sinγ*, 0)``,
  ``c* = (c* cosβ*, c*(cosα* − cosβ* cosγ*)/sinγ*, c* V/(abc sinγ*))`` (Å⁻¹);
  ``-mat`` instead gives the MOSFLM A matrix (columns a*, b*, c* in Å⁻¹·λ), divided by λ.
* the misset ``Rz(rz)·Ry(ry)·Rx(rx)`` (X applied first, active, right-handed) rotates a*, b*, c*;
* real vectors ``a = V (b*×c*)`` … (Å, then m); reciprocal vectors are regenerated from them;
* the spindle rotation ``R_û(φ)`` (Rodrigues, active) and the mosaic domain matrices ``U_i``
  give ``a = U_i · R_û(φ) · a0``.

All functions are differentiable (autograd) in the cell, misset angles, wavelength and mosaic
spread; shapes are documented per function. Rows of a (3, 3) "vectors" tensor are a, b, c.

Mosaic sampling
---------------
``mosaic_sampling = "nanobragg"`` uses nanoBragg's random domains (``rng.mosaic_draws``: the
identity first, then ran1 spherical-cap draws). ``"quadrature"`` uses a deterministic, seed-free
set of ``n`` equally weighted domains (:func:`mosaic_quadrature`): axes on a Fibonacci sphere and
angle fractions at the stratified quantiles of nanoBragg's angle law ``(1 − r²)^(1/3)``,
``r ∈ U[−1, 1]``, so that the image is a smooth, reproducible function of the spread that
converges to the same mosaic average as ``n`` grows (there is no forced identity domain).
In both samplings the domain matrices are ``Rodrigues(axis_i, spread_rad · frac_i)``, with the
draws fixed, hence differentiable w.r.t. the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from equipoise.errors import InputError

from .config import SimulationConfig
from .rng import mosaic_draws, random_misset_umat
from .params import param_tensor
from .rotations import rotation_about_axis, rotation_xyz

DEG = math.pi / 180.0


def _t(x, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)


def check_cell(cell: Tensor, field: str = "cell") -> None:
    """Raise InputError if a cell (6,) (Å, deg) has non-positive lengths or angles that do not close."""
    c = [float(v) for v in cell.detach().cpu().tolist()]
    if any(not math.isfinite(v) for v in c):
        raise InputError(f"cell must be finite, got {c}", field=field)
    if min(c[:3]) <= 0.0:
        raise InputError(f"cell lengths must be > 0 Å, got a, b, c = {c[:3]}", field=field)
    al, be, ga = (v * DEG for v in c[3:])
    if min(c[3:]) <= 0.0 or max(c[3:]) >= 180.0:
        raise InputError(f"cell angles must lie in (0, 180) deg, got {c[3:]}", field=field)
    disc = 1 - math.cos(al) ** 2 - math.cos(be) ** 2 - math.cos(ga) ** 2 + 2 * math.cos(al) * math.cos(be) * math.cos(ga)
    if disc <= 1e-12:
        raise InputError(f"cell angles α, β, γ = {c[3:]} deg do not close (each must be smaller than the sum of "
                         "the other two, and the three must sum to less than 360)", field=field)


def cell_volume(cell: Tensor) -> Tensor:
    """Cell volume (Å³) of a cell (6,): abc·sqrt(1 − cos²α − cos²β − cos²γ + 2 cosα cosβ cosγ).

    Equal to PHYSICS.md §1.10's ``2abc·sqrt(|sin s sin(s−α) sin(s−β) sin(s−γ)|)`` for a closing cell.
    """
    ca, cb, cg = torch.cos(cell[3] * DEG), torch.cos(cell[4] * DEG), torch.cos(cell[5] * DEG)
    return cell[0] * cell[1] * cell[2] * torch.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)


def reciprocal_default_orientation(cell: Tensor) -> Tensor:
    """nanoBragg's default reciprocal vectors (rows a*, b*, c*; Å⁻¹) of a cell (6,) = (a, b, c [Å], α, β, γ [deg])."""
    a, b, c = cell[0], cell[1], cell[2]
    al, be, ga = cell[3] * DEG, cell[4] * DEG, cell[5] * DEG
    ca, cb, cg = torch.cos(al), torch.cos(be), torch.cos(ga)
    sa, sb, sg = torch.sin(al), torch.sin(be), torch.sin(ga)
    vol = cell_volume(cell)
    a_s, b_s, c_s = b * c * sa / vol, c * a * sb / vol, a * b * sg / vol
    cas = (cb * cg - ca) / (sb * sg)
    cbs = (cg * ca - cb) / (sg * sa)
    cgs = (ca * cb - cg) / (sa * sb)
    sgs = c * vol.reciprocal() / (a_s * b_s)  # sin γ* = c V* / (a* b*)
    zero = torch.zeros_like(a)
    return torch.stack([
        torch.stack([a_s, zero, zero]),
        torch.stack([b_s * cgs, b_s * sgs, zero]),
        torch.stack([c_s * cbs, c_s * (cas - cbs * cgs) / sgs, c_s * vol / (a * b * c * sgs)]),
    ])


@dataclass
class CrystalVectors:
    """Static (φ = 0, no mosaic) crystal vectors after the misset.

    real: (3, 3) rows a, b, c in metres. recip_A: (3, 3) rows a*, b*, c* in Å⁻¹ (used by the GAUSS
    and TOPHAT lattice shapes, which nanoBragg does not rotate by φ or mosaic).
    """

    real: Tensor
    recip_A: Tensor


def crystal_vectors(config: SimulationConfig, params, wavelength_A: Tensor, *,
                    dtype: torch.dtype, device: torch.device) -> CrystalVectors:
    """Real and reciprocal vectors of the crystal from ``-cell`` or ``-mat``, ``-misset`` (PHYSICS.md §1.10).

    params may override "cell" (6,) and "misset_deg" (3,); ``wavelength_A`` () scales ``-mat``.
    """
    cr = config.crystal
    params = params or {}
    cell = None
    if cr.a_matrix is not None and "cell" not in params:
        amat = _t(cr.a_matrix, dtype, device)
        recip = amat.T / wavelength_A  # rows a*, b*, c* in Å⁻¹ (A matrix columns divided by λ)
    else:
        if "cell" not in params and cr.cell is None:
            raise InputError("no unit cell: give -cell a b c alpha beta gamma or -mat", field="cell")
        cell = param_tensor(params, "cell", cr.cell, dtype=dtype, device=device)
        check_cell(cell)
        recip = reciprocal_default_orientation(cell)
    if cr.misset_random:
        seed = cr.misset_seed if cr.misset_seed is not None else (config.output.seed or 0)
        recip = recip @ _t(random_misset_umat(seed), dtype, device).T
    if "misset_deg" in params or cr.misset_deg is not None:
        mis = param_tensor(params, "misset_deg", cr.misset_deg, dtype=dtype, device=device)
        recip = recip @ rotation_xyz(mis * DEG).T
    a_s, b_s, c_s = recip.unbind(0)
    crosses = torch.stack([torch.linalg.cross(b_s, c_s), torch.linalg.cross(c_s, a_s), torch.linalg.cross(a_s, b_s)])
    if cell is None:
        v_star = torch.dot(a_s, crosses[0])
        real = crosses / v_star  # a = V (b* × c*) ... in Å
    else:
        # nanoBragg forces the requested lengths: the cross products are rescaled to |a|, |b|, |c|
        # and V* = 1/V(cell). (Its default c* orientation is not exactly consistent for triclinic
        # cells, so the resulting angles differ slightly from the requested ones, e.g. 75.0391°
        # for 75°, as its run.log prints; reproduced here.)
        real = crosses / crosses.norm(dim=1, keepdim=True) * cell[:3].unsqueeze(1)
        v_star = cell_volume(cell).reciprocal()
    a, b, c = real.unbind(0)
    recip = torch.stack([torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)]) * v_star
    return CrystalVectors(real=real * 1e-10, recip_A=recip)


def n_cells(config: SimulationConfig, real: Tensor | None = None) -> tuple[float, float, float]:
    """Unit cells per axis (Na, Nb, Nc) from -N/-Na/-Nb/-Nc or -xtalsize (``ceil(size/|a|)``), clamped ≥ 1."""
    cr = config.crystal
    n = list(cr.n_cells) if cr.n_cells is not None else [1.0, 1.0, 1.0]
    if cr.size_mm is not None and real is not None:
        lengths = real.detach().norm(dim=1).cpu().tolist()
        for i, size in enumerate(cr.size_mm):
            if size is not None and size > 0:
                n[i] = math.ceil(size * 1e-3 / lengths[i])
    for i, v in enumerate(n):
        if not (v >= 1.0):
            raise InputError(f"number of unit cells must be >= 1, got N{'abc'[i]} = {v}", field="n_cells")
    return (float(n[0]), float(n[1]), float(n[2]))


def phi_steps(config: SimulationConfig) -> tuple[float, float, int]:
    """(phi0, phistep, phisteps) in degrees as nanoBragg resolves -phi/-osc/-phistep/-phisteps (§1.10)."""
    cr = config.crystal
    osc = cr.osc_deg if cr.osc_deg is not None else -1.0
    step = cr.phistep_deg if cr.phistep_deg is not None else -1.0
    n = cr.phisteps if cr.phisteps is not None else -1
    if n < 0:
        if osc < 0:
            if step <= 0:
                n, osc, step = 1, 0.0, 0.0
            else:
                osc, n = step, 2
        elif step <= 0:
            n, step = 2, osc / 2.0
        else:
            n = math.ceil(osc / step)
    else:
        n = max(n, 1)
        if osc < 0:
            if step <= 0:
                osc = 1.0
                step = osc / n
            else:
                osc, n = step, 2
        elif step <= 0:
            step = osc / n
    return float(cr.phi0_deg), float(step), int(n)


def mosaic_quadrature(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic mosaic domains: axes (n, 3) on a Fibonacci sphere and angle fractions (n,).

    Fractions are ``(1 − r_j²)^(1/3)`` at the stratified midpoints ``r_j = −1 + (2j+1)/n`` of
    nanoBragg's angle law, paired with the axes through a golden-ratio permutation so that the
    large and small angles are spread over all axis directions. Equal weights 1/n.
    """
    j = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * j + 1.0) / n
    rho = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    theta = j * math.pi * (3.0 - math.sqrt(5.0))
    axes = np.stack([rho * np.cos(theta), rho * np.sin(theta), z], axis=1)
    r = -1.0 + (2.0 * j + 1.0) / n
    frac_sorted = np.cbrt(1.0 - r * r)
    perm = np.argsort(np.mod(j * (math.sqrt(5.0) - 1.0) / 2.0, 1.0))
    return axes, frac_sorted[perm]


#: quadrature domains per (spot width)² of the disc a mosaic spread smears a spot over, below which
#: the domains' sub-spots stay apart. Empirical, from one case (capture table 512², spread 1.33°, fitted
#: pixels out to |q| 0.20 Å⁻¹, about 17 width² of disc): the deviance stays above 1.5x its noise
#: expectation with 30, 60 and 90 domains (1.66, 1.62, 1.87x) and falls to 1.30x with 120 and 1.32x
#: with 240 (docs/refinement.md).
DOMAINS_PER_SPOT_AREA = 7.5


def mosaic_domains_needed(spread_deg: float, q_max_per_A: float, config: SimulationConfig) -> int | None:
    """Mosaic domains needed for a smooth spot profile out to ``q_max_per_A`` (1/d, Å⁻¹).

    A spread s (rad) moves a reciprocal-lattice point at |q| over a disc of radius s·|q|; the point's
    own width is 1/(N·a) (first zero of the lattice function, largest N·a of the three axes). D
    equally weighted domains fill that disc with sub-spots that merge when D ≥ DOMAINS_PER_SPOT_AREA
    · π (s·|q|·N·a)². None when ``config`` gives no cell or no -N (the width is not known).
    """
    cr = config.crystal
    if cr.cell is None or cr.n_cells is None:
        return None
    width = 1.0 / max(n * a for n, a in zip(cr.n_cells, cr.cell[:3]))
    radius = math.radians(spread_deg) * q_max_per_A
    return max(1, math.ceil(DOMAINS_PER_SPOT_AREA * math.pi * (radius / width) ** 2))


def mosaic_domain_count(config: SimulationConfig) -> int:
    """nanoBragg's number of domains: 1 without spread, -mosaic_domains, or 10 when only -mosaic is given."""
    cr = config.crystal
    if cr.mosaic_spread_deg < 0:
        raise InputError(f"mosaic spread must be >= 0 deg, got {cr.mosaic_spread_deg}", field="mosaic_spread_deg")
    if cr.mosaic_spread_deg == 0.0:
        return 1
    if cr.mosaic_domains is None or cr.mosaic_domains <= 0:
        return 10
    return int(cr.mosaic_domains)


def mosaic_samples(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fixed draws (axes (n, 3), fractions (n,)) for the configured mosaic sampling."""
    n = mosaic_domain_count(config)
    if config.crystal.mosaic_sampling == "quadrature" and n > 1:
        return mosaic_quadrature(n)
    return mosaic_draws(n, config.crystal.mosaic_seed)


def mosaic_matrices(spread_deg: Tensor, axes: Tensor, fracs: Tensor) -> Tensor:
    """Domain rotation matrices (n, 3, 3) = Rodrigues(axes[i], spread_rad · fracs[i]); differentiable in the spread."""
    return rotation_about_axis(axes, spread_deg * DEG * fracs)


def rotated_real_vectors(real: Tensor, spindle: Tensor, phi_deg: list[float], umats: Tensor, *,
                         reuse_phi0: bool) -> Tensor:
    """Real vectors for every (φ step, mosaic domain): (n_phi · n_mos, 3, 3), rows a, b, c, φ-major.

    ``a = U_i · R_û(φ) · a0`` (PHYSICS.md §1.10). ``reuse_phi0`` reproduces C-PARITY-001: a step
    with φ == 0 is not rotated and reuses the previously rotated vectors, which (except for the
    very first evaluation of each OpenMP thread, where they are a0) are those of the last φ step
    of the previous subpixel; with no non-zero step anywhere they stay a0.
    """
    angles = [p * DEG for p in phi_deg]
    if reuse_phi0 and any(p != 0.0 for p in phi_deg):
        last = angles[-1]
        angles = [last if p == 0.0 else a for p, a in zip(phi_deg, angles)]
    ang = torch.tensor(angles, dtype=real.dtype, device=real.device)
    rphi = rotation_about_axis(spindle.expand(len(angles), 3), ang)           # (P, 3, 3)
    rot = umats.unsqueeze(0) @ rphi.unsqueeze(1)                              # (P, M, 3, 3)
    return (real.unsqueeze(0).unsqueeze(0) @ rot.transpose(-1, -2)).reshape(-1, 3, 3)
