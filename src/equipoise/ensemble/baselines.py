"""Baseline generators a learned ensemble model must beat.

- :func:`pca_gaussian`: a Gaussian over the leading principal components of the iteratively
  superposed Cartesian backbones (N, CA, C, O). Distribution-faithful by construction along the
  kept components, but every conformer is a linear mix of models, which bends bonds and angles.
- :func:`internal_gaussian`: a Gaussian over the backbone dihedrals (phi, psi, omega; circular
  mean, wrapped deviations, the sample covariance), rebuilt by NeRF (:func:`build_backbone`) with
  Engh & Huber bond lengths and angles. Geometry is ideal by construction; long-range structure
  drifts because small dihedral errors add up along the chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from equipoise.core.robust import angle_difference, wrap_angle
from equipoise.ensemble.geometry import backbone_dihedrals, ideal_geometry, place_atom
from equipoise.ensemble.io import Ensemble
from equipoise.ensemble.metrics import iterative_superposition, principal_components
from equipoise.errors import InputError

__all__ = ["KINDS", "build_backbone", "pca_gaussian", "internal_gaussian", "BaselineResult", "run_baseline"]

KINDS = ("pca", "internal")


def build_backbone(phi: Tensor, psi: Tensor, omega: Tensor, bonds: Tensor, angles: Tensor) -> Tensor:
    """N, CA, C ``(..., n_res, 3, 3)`` Å from internal coordinates by NeRF (Parsons et al. 2005).

    phi ``(..., n_res-1)`` of residues 1..n-1, psi and omega ``(..., n_res-1)`` of residues 0..n-2
    (the layout of :func:`~equipoise.ensemble.geometry.backbone_dihedrals`), radians.
    bonds ``(..., n_res, 4)`` Å and angles ``(..., n_res, 5)`` radians in the column layout of
    :func:`~equipoise.ensemble.geometry.bond_lengths` / ``bond_angles`` (columns N-CA, CA-C, C-N+1
    and N-CA-C, CA-C-N+1, C-N+1-CA+1 are used). Residue 0 sits at the origin in the xy plane.
    """
    batch = phi.shape[:-1]
    n_res = phi.shape[-1] + 1
    dtype, device = phi.dtype, phi.device
    bonds = bonds.expand(*batch, n_res, 4)
    angles = angles.expand(*batch, n_res, 5)
    zero = torch.zeros(*batch, 3, dtype=dtype, device=device)
    n0 = zero
    ca0 = zero.clone()
    ca0[..., 0] = bonds[..., 0, 0]
    theta = angles[..., 0, 0]
    c0 = ca0.clone()
    c0[..., 0] = ca0[..., 0] - bonds[..., 0, 1] * torch.cos(theta)
    c0[..., 1] = bonds[..., 0, 1] * torch.sin(theta)
    atoms = [n0, ca0, c0]
    for i in range(n_res - 1):
        n_prev, ca_prev, c_prev = atoms[-3], atoms[-2], atoms[-1]
        n_next = place_atom(n_prev, ca_prev, c_prev, bonds[..., i, 3], angles[..., i, 2], psi[..., i])
        ca_next = place_atom(ca_prev, c_prev, n_next, bonds[..., i + 1, 0], angles[..., i, 4], omega[..., i])
        c_next = place_atom(c_prev, n_next, ca_next, bonds[..., i + 1, 1], angles[..., i + 1, 0], phi[..., i])
        atoms += [n_next, ca_next, c_next]
    return torch.stack(atoms, dim=-2).reshape(*batch, n_res, 3, 3)


def _check(ensemble: Ensemble, n: int) -> None:
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}", field="--n")
    if ensemble.n_models < 2:
        raise InputError(f"a baseline needs >= 2 models, got {ensemble.n_models}", path=ensemble.source or None)
    if not bool(ensemble.mask[..., :3].all()):
        raise InputError("baselines need N, CA and C in every residue of every model", path=ensemble.source or None)


def pca_gaussian(ensemble: Ensemble, n: int, *, variance_kept: float = 0.95,
                 generator: torch.Generator | None = None) -> Ensemble:
    """``n`` conformers from a Gaussian on the leading principal components of the superposed
    backbones (components up to ``variance_kept`` of the variance). O atoms missing anywhere are
    rebuilt in the peptide plane before the fit."""
    _check(ensemble, n)
    if not 0 < variance_kept <= 1:
        raise InputError(f"variance_kept must be in (0, 1], got {variance_kept}", field="variance_kept")
    x = ensemble.coords.to(torch.float64)
    if not bool(ensemble.mask.all()):
        x = Ensemble.from_backbone(x[:, :, :3], ensemble.sequence).coords
    flat = x.reshape(x.shape[0], -1, 3)
    sup = iterative_superposition(flat)
    mean, axes, variances = principal_components(sup, k=min(sup.shape[0] - 1, sup.shape[1] * 3))
    share = torch.cumsum(variances, 0) / variances.sum().clamp_min(1e-12)
    k = int(torch.searchsorted(share, torch.tensor(variance_kept, dtype=share.dtype)).item()) + 1
    k = min(k, axes.shape[0])
    z = torch.randn(n, k, dtype=torch.float64, generator=generator) * variances[:k].sqrt()
    out = (mean + z @ axes[:k]).reshape(n, x.shape[1], 4, 3)
    return Ensemble(out, torch.ones(out.shape[:3], dtype=torch.bool), ensemble.sequence, ensemble.residue_names,
                    ensemble.residue_numbers, ensemble.chain_id, f"pca_gaussian({ensemble.source})")


def internal_gaussian(ensemble: Ensemble, n: int, *, generator: torch.Generator | None = None) -> Ensemble:
    """``n`` conformers from a Gaussian on (phi, psi, omega) of all residues (circular means, the
    sample covariance of the wrapped deviations), rebuilt with Engh & Huber bonds and angles."""
    _check(ensemble, n)
    x = ensemble.coords.to(torch.float64)
    phi, psi, omega = backbone_dihedrals(x)
    angles = torch.cat([phi, psi, omega], dim=-1)  # (M, 3 (n-1))
    mean = torch.atan2(torch.sin(angles).mean(0), torch.cos(angles).mean(0))
    dev = angle_difference(angles, mean)
    dev = dev - dev.mean(0)
    # a Gaussian with the sample covariance D^T D / (M - 1): mean + D^T g / sqrt(M - 1), g ~ N(0, I_M)
    g = torch.randn(n, dev.shape[0], dtype=torch.float64, generator=generator)
    draws = wrap_angle(mean + g @ dev / math.sqrt(dev.shape[0] - 1))
    m = phi.shape[-1]
    ideal = ideal_geometry(ensemble.sequence, ensemble.n_res, dtype=torch.float64)
    backbone = build_backbone(draws[:, :m], draws[:, m:2 * m], draws[:, 2 * m:], ideal["bond"], ideal["angle"])
    return Ensemble.from_backbone(backbone, ensemble.sequence, residue_names=ensemble.residue_names,
                                  residue_numbers=ensemble.residue_numbers, chain_id=ensemble.chain_id,
                                  source=f"internal_gaussian({ensemble.source})")


@dataclass
class BaselineResult:
    """A baseline's samples and what it was fitted on."""

    kind: str
    samples: Ensemble
    n_fit_models: int
    seed: int

    def summary(self) -> str:
        return (f"{self.kind} baseline: {self.samples.n_models} conformers of {self.samples.n_res} residues "
                f"from {self.n_fit_models} models (seed {self.seed})")


def run_baseline(ensemble: Ensemble, kind: str, n: int, seed: int = 1) -> BaselineResult:
    """Fit the ``kind`` baseline (``"pca"`` or ``"internal"``) to ``ensemble`` and draw ``n`` conformers."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}", field="--kind")
    generator = torch.Generator().manual_seed(seed)
    make = pca_gaussian if kind == "pca" else internal_gaussian
    return BaselineResult(kind, make(ensemble, n, generator=generator), ensemble.n_models, seed)
