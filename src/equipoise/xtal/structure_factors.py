"""Structure factors of an atomic model in torch, differentiable in xyz, B and occupancy.

F(h) = sum_atoms sum_ops occ f0(s) T(h) exp(2 pi i h.(R x + t)), with f0 the International
Tables (vol. C, 6.1.1.4) four-Gaussian form factors of gemmi (``Element.it92``, coefficients
a1..a4, b1..b4, c) and T the Debye–Waller factor, exp(-B s^2/4) isotropic or
exp(-2 pi^2 s^T U s) anisotropic (s the reciprocal vector in Å^-1, U in Å^2 Cartesian).

Two paths compute the same numbers:

- ``direct_structure_factors``: the sum above, term by term (small cells, tests, gradcheck).
- ``FFTStructureFactors``: atoms of the asymmetric model spread on a P1 grid of the unit cell as
  Gaussians blurred by ``B_add`` (as gemmi's DensityCalculator and cctbx's ``fft`` do, Ten Eyck
  1977; Agarwal 1978), one real FFT (pruned to the reflections' index band), then for every
  symmetry operator the transform is read at R^T h with phase exp(2 pi i h.t) and un-blurred by
  exp(B_add s^2/4). The grid is float32 by default (``grid_dtype``; inputs and outputs keep their
  dtype). Spreading and FFT have their own backwards (``equipoise.xtal.spreading``). Accuracy
  against gemmi's StructureFactorCalculator: amplitude R ~2e-5 at the data resolution
  (``benchmarks/xtal_sf_accuracy.py``; tests/xtal).

Atoms with a non-zero ``u_aniso`` row use U (Å^2, order u11 u22 u33 u12 u13 u23) and ignore
their ``b_iso``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np
import torch

from equipoise.errors import InputError
from equipoise.xtal.spreading import BandFFT, single_axis, spread_blocked, spread_separable

TWO_PI = 2.0 * math.pi
FOUR_PI2 = 4.0 * math.pi ** 2


def form_factor_coefficients(elements: list[str], *, dtype: torch.dtype = torch.float64,
                             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (n, 5): f0(s) = sum_k a_k exp(-b_k s^2 / 4) (the constant c is a_5, b_5 = 0)."""
    table: dict[str, list[float]] = {}
    for name in set(elements):
        el = gemmi.Element(name)
        if el.atomic_number == 0:
            raise InputError(f"unknown scattering type {name!r}", field="element")
        c = el.it92.get_coefs()
        table[name] = c
    coefs = torch.tensor([table[e] for e in elements], dtype=dtype, device=device).reshape(-1, 9)
    zeros = torch.zeros(coefs.shape[0], 1, dtype=dtype, device=device)
    return torch.cat([coefs[:, 0:4], coefs[:, 8:9]], 1), torch.cat([coefs[:, 4:8], zeros], 1)


def symmetry_operators(spacegroup: gemmi.SpaceGroup, *, dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """All operators (centring included) as (rot (k, 3, 3), tran (k, 3)) in fractional coordinates."""
    rots, trans = [], []
    for op in spacegroup.operations():
        rots.append(np.array(op.rot, dtype=np.float64) / gemmi.Op.DEN)
        trans.append(np.array(op.tran, dtype=np.float64) / gemmi.Op.DEN)
    return (torch.tensor(np.array(rots), dtype=dtype, device=device),
            torch.tensor(np.array(trans), dtype=dtype, device=device))


def fractionalization_matrix(cell: gemmi.UnitCell, *, dtype: torch.dtype = torch.float64,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """(3, 3) matrix F with frac = F @ xyz (xyz in Å)."""
    return torch.tensor(np.array(cell.frac.mat.tolist()), dtype=dtype, device=device)


def reciprocal_vectors(hkl: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """(m, 3) Cartesian reciprocal vectors s = F^T h (Å^-1) for (m, 3) Miller indices."""
    return hkl.to(frac.dtype) @ frac


def _u_matrix(u6: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) symmetric U from (n, 6) (u11 u22 u33 u12 u13 u23)."""
    u11, u22, u33, u12, u13, u23 = u6.unbind(-1)
    return torch.stack([torch.stack([u11, u12, u13], -1), torch.stack([u12, u22, u23], -1),
                        torch.stack([u13, u23, u33], -1)], -2)


def direct_structure_factors(hkl: torch.Tensor, xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor,
                             elements: list[str], cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                             u_aniso: torch.Tensor | None = None, *, chunk: int = 2048) -> torch.Tensor:
    """Structure factors by direct summation over atoms and symmetry operators.

    hkl (m, 3) int; xyz (n, 3) Å; b_iso (n,) Å^2; occ (n,); u_aniso (n, 6) Å^2 or None.
    Returns (m,) complex (complex128 for float64 input). Cost O(m n k): small cells and tests.
    """
    dtype, device = xyz.dtype, xyz.device
    a, b = form_factor_coefficients(elements, dtype=dtype, device=device)
    rot, tran = symmetry_operators(spacegroup, dtype=dtype, device=device)
    fmat = fractionalization_matrix(cell, dtype=dtype, device=device)
    x_frac = xyz @ fmat.T
    aniso = None
    if u_aniso is not None:
        aniso = u_aniso.abs().sum(-1) > 0
        u_mat = _u_matrix(u_aniso)
    out = []
    hkl_f = hkl.to(dtype)
    for start in range(0, hkl.shape[0], chunk):
        h = hkl_f[start:start + chunk]
        s = reciprocal_vectors(h, fmat)
        s2 = (s * s).sum(-1)
        f0 = (a[None] * torch.exp(-b[None] * s2[:, None, None] / 4.0)).sum(-1)          # (c, n)
        iso_dw = torch.exp(-b_iso[None] * s2[:, None] / 4.0)                              # (c, n)
        total_re = torch.zeros(h.shape[0], dtype=dtype, device=device)
        total_im = torch.zeros(h.shape[0], dtype=dtype, device=device)
        for r, t in zip(rot, tran):
            hr = h @ r                                                                   # R^T h as rows
            dw = iso_dw
            if aniso is not None:
                sr = reciprocal_vectors(hr, fmat)
                an = torch.exp(-2.0 * math.pi ** 2 * torch.einsum("ci,nij,cj->cn", sr, u_mat, sr))
                dw = torch.where(aniso[None], an, iso_dw)
            phase = TWO_PI * (hr @ x_frac.T + (h @ t)[:, None])
            amp = occ[None] * f0 * dw
            total_re = total_re + (amp * torch.cos(phase)).sum(-1)
            total_im = total_im + (amp * torch.sin(phase)).sum(-1)
        out.append(torch.complex(total_re, total_im))
    return torch.cat(out)


def _smooth_size(n: int) -> int:
    """Smallest even integer >= n with no prime factor above 5 (fast FFT sizes)."""
    n = max(n, 2)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1 and n % 2 == 0:
            return n
        n += 1


@dataclass
class GridPlan:
    """Grid and blur chosen for one FFT evaluation (for the log and tests)."""

    shape: tuple[int, int, int]
    b_add: float
    radius: float
    n_offsets: int


class FFTStructureFactors:
    """Structure factors at fixed Miller indices by density spreading and FFT (see module doc).

    Built once per (hkl, cell, space group, elements); call with (xyz, b_iso, occ[, u_aniso]).
    rate: grid oversampling (grid spacing <= d_min / (2 rate)); tolerance: target relative error
    of the spreading cut-off and of aliasing (sets radius and blur; 5e-3 keeps amplitude R vs
    exact summation ~2e-5 and gradients within ~1e-3 of direct summation); chunk_points: grid
    points per spreading chunk (memory ~ 100 bytes each); grid_dtype: dtype of the density grid
    and FFT (float32: half the memory traffic, R unchanged at this tolerance).
    """

    def __init__(self, hkl: torch.Tensor, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                 elements: list[str], *, rate: float = 1.5, tolerance: float = 5e-3,
                 chunk_points: int = 1_000_000, dtype: torch.dtype = torch.float64,
                 grid_dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.dtype, self.device = dtype, torch.device(device)
        self.grid_dtype = grid_dtype
        self.cell, self.spacegroup, self.elements = cell, spacegroup, list(elements)
        self.hkl = hkl.to(self.device)
        self.rate, self.tolerance, self.chunk_points = rate, tolerance, chunk_points
        self.a, self.b = form_factor_coefficients(self.elements, dtype=dtype, device=self.device)
        self.frac = fractionalization_matrix(cell, dtype=dtype, device=self.device)
        rot, tran = symmetry_operators(spacegroup, dtype=dtype, device=self.device)
        h = self.hkl.to(dtype)
        s = reciprocal_vectors(h, self.frac)
        self.s2 = (s * s).sum(-1)
        d_min = float(1.0 / torch.sqrt(self.s2.max()))
        self.d_min = d_min
        rotated = torch.stack([h @ r for r in rot]).round().to(torch.int64)          # (k, m, 3)
        hmax = rotated.abs().amax(dim=(0, 1)).cpu().numpy()
        self.shape = tuple(_smooth_size(int(math.ceil(2 * rate * hm)) + 1) for hm in hmax)
        # index into rfftn output: l >= 0 read conj(F[h]), l < 0 read F[-h] (Friedel, real density)
        neg = rotated[..., 2] < 0
        sign = torch.where(neg, -1, 1)[..., None]
        idx = torch.remainder(rotated * sign, torch.tensor(self.shape, device=self.device))
        # BandFFT keeps |k_1| <= h_1 (columns 0..h_1, then the negative ones) and 0 <= k_2 <= h_2
        self.band = (int(hmax[1]), int(hmax[2]))
        n1, width = self.shape[1], 2 * self.band[0] + 1
        col = torch.where(idx[..., 1] <= self.band[0], idx[..., 1], idx[..., 1] - (n1 - width))
        self.read_index = (idx[..., 0] * width + col) * (self.band[1] + 1) + idx[..., 2]    # (k, m)
        self.read_conj = ~neg                                                                 # (k, m)
        phase = TWO_PI * (h @ tran.T).T                                                       # (k, m)
        self.op_phase = torch.polar(torch.ones_like(phase), phase)
        self.volume = cell.volume
        orth = torch.tensor(np.array(cell.orth.mat.tolist()), dtype=dtype, device=self.device)
        n_grid = torch.tensor(self.shape, dtype=dtype, device=self.device)
        self.orth_grid = orth / n_grid[None, :]                       # grid units -> Å
        self.recip_len = torch.linalg.norm(self.frac, dim=1) * n_grid  # grid points per Å along each axis
        gd = self.grid_dtype
        self._grid_tables = (self.a.to(gd), self.b.to(gd), self.orth_grid.to(gd), self.frac.to(gd))

    def plan(self, b_iso: torch.Tensor) -> GridPlan:
        """Blur B_add and the largest spreading radius (Å) for the current B values (Å^2)."""
        log_tol = math.log(1.0 / self.tolerance)
        # aliasing: the nearest alias of the highest reflection is at s ~ (2 rate - 1) / d_min
        alias = ((2 * self.rate - 1) ** 2 - 1) / self.d_min ** 2
        b_add = max(0.0, 4.0 * log_tol / alias - float(b_iso.detach().min()))
        radius = self._radius(b_iso, b_add, self._grid_tables[1]).max().item()
        return GridPlan(self.shape, b_add, radius, 0)

    def _radius(self, b_iso: torch.Tensor, b_add: float, b: torch.Tensor) -> torch.Tensor:
        """(n,) radius (Å) where each atom's broadest Gaussian falls to ``tolerance`` of its peak;
        b_iso (n,) Å^2, b (n, 5) the atoms' form-factor widths (Å^2)."""
        t_max = b.amax(-1) + b_iso.detach() + b_add
        return torch.sqrt(torch.clamp(t_max, min=1.0) * math.log(1.0 / self.tolerance)) / TWO_PI

    def _offsets(self, radius: float) -> torch.Tensor:
        axes = [torch.arange(-h, h + 2, device=self.device) for h in self._half(radius)]
        o = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        # keep nodes within radius of any point of the atom's home grid cell (centre + half diagonal)
        centre = (o.to(self.dtype) - 0.5) @ self.orth_grid.T
        slack = 0.5 * float(torch.linalg.norm(self.orth_grid.sum(1)))
        return o[(centre * centre).sum(-1).sqrt() <= radius + slack]

    def _half(self, radius: float) -> list[int]:
        return [int(math.ceil(radius * float(r))) for r in self.recip_len]

    @property
    def separable(self) -> bool:
        """True when the grid axes are orthogonal (spreading by outer products)."""
        off = self.orth_grid - torch.diag(torch.diagonal(self.orth_grid))
        return bool(off.abs().max() < 1e-9 * self.orth_grid.abs().max())

    def _spread_iso(self, xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor, a: torch.Tensor,
                    b: torch.Tensor, b_add: float) -> torch.Tensor:
        """Density of isotropic atoms, atoms grouped by spreading radius (0.5 Å steps)."""
        radius = torch.ceil(self._radius(b_iso, b_add, b) * 2.0) / 2.0
        unique = torch.unique(radius).tolist()
        if self.separable:
            spacing = torch.diagonal(self._grid_tables[2])
            node = torch.remainder(torch.floor(xyz.detach() / spacing).to(torch.int64),
                                   torch.tensor(self.shape, device=self.device))
            # atoms in memory order of their boxes: neighbouring boxes share cache lines
            order = torch.argsort((node[:, 0] * self.shape[1] + node[:, 1]) * self.shape[2] + node[:, 2])
            groups = [(order[radius[order] == r], self._half(r)) for r in unique]
            return spread_separable(xyz, b_iso, occ, a, b, groups, self.shape,
                                    torch.diagonal(self.orth_grid).tolist(), b_add, self.chunk_points)
        _, _, orth_grid, frac = self._grid_tables
        groups = [(torch.nonzero(radius == r).squeeze(1), self._half(r)) for r in unique]
        return spread_blocked(xyz, b_iso, occ, a, b, groups, self.shape, orth_grid, frac,
                              single_axis(self.orth_grid), b_add, self.chunk_points)

    def __call__(self, xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor,
                 u_aniso: torch.Tensor | None = None) -> torch.Tensor:
        """(m,) complex structure factors for xyz (n, 3) Å, b_iso (n,) Å^2, occ (n,)."""
        aniso = None
        b_eq = b_iso.detach()
        if u_aniso is not None and bool((u_aniso.detach().abs().sum(-1) > 0).any()):
            aniso = u_aniso.detach().abs().sum(-1) > 0
            u_max = torch.linalg.eigvalsh(_u_matrix(u_aniso.detach())).amax(-1)
            b_eq = torch.where(aniso, 8 * math.pi ** 2 * u_max, b_eq)
        plan = self.plan(b_eq)
        self.last_plan = plan
        gd = self.grid_dtype
        a, b, orth_grid, frac = self._grid_tables
        xyz, b_iso, occ = xyz.to(gd), b_iso.to(gd), occ.to(gd)
        if aniso is None:
            rho = self._spread_iso(xyz, b_iso, occ, a, b, plan.b_add)
        else:
            iso = ~aniso
            rho = _spread_aniso(xyz[aniso], u_aniso[aniso].to(gd), occ[aniso], a[aniso], b[aniso],
                                self._offsets(plan.radius), self.shape, orth_grid, frac, plan.b_add,
                                self.chunk_points)
            if bool(iso.any()):
                rho = rho + self._spread_iso(xyz[iso], b_iso[iso], occ[iso], a[iso], b[iso], plan.b_add)
        transform = BandFFT.apply(rho, *self.band).reshape(-1)
        values = transform[self.read_index].to(self.op_phase.dtype)                     # (k, m)
        values = torch.where(self.read_conj, values.conj(), values)
        f = (values * self.op_phase).sum(0)
        return f * (torch.exp(plan.b_add * self.s2 / 4.0) * (self.volume / float(np.prod(self.shape))))


def _spread_aniso(xyz, u6, occ, a, b, offsets, shape, orth_grid, frac_mat, b_add, chunk_points):
    """Anisotropic Gaussians on the grid by plain autograd (anisotropic atoms are usually few),
    ``chunk_points`` atom-node pairs at a time (memory ~100 bytes each).

    rho(p) = occ sum_k a_k (4 pi)^(3/2) det(M_k)^(-1/2) exp(-4 pi^2 r^T M_k^-1 r),
    M_k = (b_k + B_add) I + 8 pi^2 U.
    """
    n_grid = torch.tensor(shape, dtype=xyz.dtype, device=xyz.device)
    grid = torch.zeros(int(np.prod(shape)), dtype=xyz.dtype, device=xyz.device)
    eye = torch.eye(3, dtype=xyz.dtype, device=xyz.device)
    step = max(1, chunk_points // max(1, offsets.shape[0]))
    for s in range(0, xyz.shape[0], step):
        sl = slice(s, s + step)
        u = (xyz[sl] @ frac_mat.T) * n_grid
        node = torch.floor(u).detach()[:, None, :] + offsets[None].to(xyz.dtype)
        delta = (node - u[:, None, :]) @ orth_grid.T
        ijk = torch.remainder(node.to(torch.int64), torch.tensor(shape, device=xyz.device))
        idx = ((ijk[..., 0] * shape[1] + ijk[..., 1]) * shape[2] + ijk[..., 2]).reshape(-1)
        m = (b[sl, :, None, None] + b_add) * eye + 8 * math.pi ** 2 * _u_matrix(u6[sl])[:, None]   # (c, 5, 3, 3)
        minv = torch.linalg.inv(m)
        quad = torch.einsum("nki,nsij,nkj->nks", delta, minv, delta)                              # (c, K, 5)
        pre = a[sl] * (4 * math.pi) ** 1.5 / torch.sqrt(torch.linalg.det(m))                       # (c, 5)
        rho = occ[sl, None] * (pre[:, None, :] * torch.exp(-FOUR_PI2 * quad)).sum(-1)
        grid = grid.index_add(0, idx, rho.reshape(-1))
    return grid.reshape(shape)
