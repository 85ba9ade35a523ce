"""Baselines: NeRF round trip, PCA and internal-coordinate Gaussians."""

from __future__ import annotations

import pytest
import torch

from tests.ensemble.backbones import ideal_ensemble, need_2k39
from equipoise.ensemble import geometry as g
from equipoise.ensemble.baselines import build_backbone, internal_gaussian, pca_gaussian, run_baseline
from equipoise.ensemble.io import read_ensemble
from equipoise.ensemble.metrics import kabsch_rmsd
from equipoise.errors import InputError


def _round_trip(x: torch.Tensor) -> torch.Tensor:
    phi, psi, omega = g.backbone_dihedrals(x)
    rebuilt = build_backbone(phi, psi, omega, g.bond_lengths(x), g.bond_angles(x))
    return kabsch_rmsd(rebuilt.reshape(x.shape[0], -1, 3), x[:, :, :3].reshape(x.shape[0], -1, 3))


def test_nerf_round_trip_of_real_models():
    x = read_ensemble(need_2k39()).coords[:3]
    assert float(_round_trip(x).max()) < 1e-9


def test_nerf_round_trip_of_built_chains():
    assert float(_round_trip(ideal_ensemble(3, 15, spread_deg=30.0).coords).max()) < 1e-9


def test_pca_baseline_is_seeded_and_keeps_the_sequence():
    ens = ideal_ensemble(8, 10, spread_deg=10.0)
    a = run_baseline(ens, "pca", 5, seed=3).samples
    b = run_baseline(ens, "pca", 5, seed=3).samples
    c = run_baseline(ens, "pca", 5, seed=4).samples
    assert a.coords.shape == (5, 10, 4, 3) and a.sequence == ens.sequence
    assert torch.equal(a.coords, b.coords) and not torch.equal(a.coords, c.coords)
    # a linear mix of models: bonds no longer ideal
    assert g.geometry_summary(a.coords)["bond_rmsd_A"] > 1e-3


def test_internal_baseline_has_ideal_bonds_and_the_ensemble_dihedrals():
    ens = ideal_ensemble(30, 8, spread_deg=10.0)
    out = internal_gaussian(ens, 200, generator=torch.Generator().manual_seed(0))
    s = g.geometry_summary(out.coords, out.mask, out.sequence)
    assert s["bond_rmsd_A"] < 1e-9
    phi_ref = g.backbone_dihedrals(ens.coords)[0]
    phi = g.backbone_dihedrals(out.coords)[0]
    assert float((phi.mean(0) - phi_ref.mean(0)).abs().max()) < 0.06  # rad, ~3 deg
    assert float(phi.std(0).mean()) == pytest.approx(float(phi_ref.std(0).mean()), rel=0.25)


def test_bad_baseline_arguments():
    ens = ideal_ensemble(4, 6)
    with pytest.raises(InputError, match="kind"):
        run_baseline(ens, "vae", 3)
    with pytest.raises(InputError, match="--n"):
        pca_gaussian(ens, 0)
