"""Scaling and bulk solvent recover known scales on synthetic data; real-data R vs cctbx (slow)."""

from __future__ import annotations

import pytest
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.synthetic import random_structure, simulated_reflections
from equipoise.xtal.targets import r_factor
from equipoise.xtal.xray import XrayModel
from tests.xtal.shared_data import data_file


def test_synthetic_scales_recovered():
    st = random_structure(14, (14, 15, 16, 90, 90, 90), "P 21 21 21", seed=5)
    refl = simulated_reflections(st, d_min=1.6, k_sol=0.35, b_sol=46.0, scale=2.5, noise=0.0)
    xm = XrayModel(AtomModel.from_structure(st), refl)
    scales = xm.update_scales()
    r = xm.r_factors()
    assert r["r_work"] < 0.01 and r["r_free"] < 0.01
    assert abs(scales.k_sol - 0.35) < 0.05
    # k_bin carries the overall scale (2.5) up to the isotropic part of B_aniso
    assert 1.5 < float(scales.k_bin.mean()) < 4.0
    # without solvent the same data fit clearly worse
    xm.scales.k_sol = 0.0
    assert xm.r_factors()["r_work"] > 0.02


def test_anisotropy_respects_point_group():
    st = random_structure(10, (10, 12, 14, 90, 90, 90), "P 21 21 21", seed=6)
    refl = simulated_reflections(st, d_min=1.8, noise=0.02)
    xm = XrayModel(AtomModel.from_structure(st), refl)
    b = xm.update_scales().b_aniso
    assert torch.allclose(b, b.T)
    assert float(b[0, 1].abs() + b[0, 2].abs() + b[1, 2].abs()) < 1e-8    # orthorhombic: diagonal


def test_r_factor_rescaled_uses_the_sets_own_scale():
    f_obs = torch.tensor([10.0, 20.0, 30.0, 40.0])
    f_c = 0.5 * f_obs * torch.tensor([1.1, 0.9, 1.0, 1.05])
    mask = torch.ones(4, dtype=torch.bool)
    k = float((f_obs * f_c).sum() / (f_c * f_c).sum())
    assert abs(r_factor(f_obs, f_c, mask) - 0.5) < 0.05                    # unscaled: off by the factor 2
    expected = float((f_obs - k * f_c).abs().sum() / f_obs.sum())
    assert abs(r_factor(f_obs, f_c, mask, rescale=True) - expected) < 1e-12
    assert r_factor(f_obs, f_c, mask, rescale=True) < 0.05


# cctbx mmtbx.f_model update_all_scales(remove_outliers=False) (like for like: we reject none), measured
# with benchmarks/cctbx_rfactor.py, cctbx-base 2025.11: R-work, R-free with the working-set scale
# ("r_free_all_wscale", our definition) and R-free rescaled by the free set's own scale (cctbx's r_free()).
CCTBX = {"1a0f": ("1a0f/1a0f_round0.pdb", "1a0f/1a0f_data.mtz", 0.2138, 0.2269, 0.2256),
         "1l2h": ("1l2h.cif.gz", "1l2h.mtz.gz", 0.2532, 0.2763, 0.2751),
         "5e5z": ("5e5z.pdb.gz", "5e5z.mtz.gz", 0.1731, 0.2443, 0.2049)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CCTBX))
def test_r_factors_agree_with_cctbx(name):
    torch.set_num_threads(1)
    model_name, data_name, r_work, r_free, r_free_rescaled = CCTBX[name]
    xm = XrayModel(AtomModel.from_file(data_file(model_name)), Reflections.from_file(data_file(data_name)))
    xm.update_scales()
    r = xm.r_factors()
    assert abs(r["r_work"] - r_work) < 0.005
    assert abs(r["r_free"] - r_free) < 0.005
    assert abs(r["r_free_rescaled"] - r_free_rescaled) < 0.005


def test_overall_b_moves_from_the_scales_to_the_atoms():
    """A model whose B are all 15 Å^2 too high: the scales absorb the fall-off (split between the
    bins and B_aniso); moving it into the atoms recovers the true B and keeps R, and a second
    move finds nothing left (so a refinement's mean B cannot drift along the scale)."""
    st = random_structure(40, (20, 22, 24, 90, 90, 90), "P 21 21 21", seed=8, b_iso=14.0)
    refl = simulated_reflections(st, d_min=1.5, scale=2.0, noise=0.0)
    model = AtomModel.from_structure(st)
    truth_b = model.b_iso.clone()
    model.b_iso = model.b_iso + 15.0
    xm = XrayModel(model, refl)
    xm.update_scales()
    r_before = xm.r_factors(xm.fcalc(model.xyz, model.b_iso, model.occ))["r_work"]
    new_b, delta = xm.overall_b_to_atoms(model.xyz, model.b_iso, model.occ, (2.0, 300.0))
    assert abs(delta + 15.0) < 1.0
    assert float((new_b - truth_b).abs().max()) < 1.0
    assert abs(float(torch.diagonal(xm.scales.b_aniso).sum())) < 1e-9          # B_aniso traceless
    r_after = xm.r_factors(xm.fcalc(model.xyz, new_b, model.occ))["r_work"]
    assert abs(r_after - r_before) < 2e-3
    xm.update_scales(model.xyz, new_b, model.occ)
    _, second = xm.overall_b_to_atoms(model.xyz, new_b, model.occ, (2.0, 300.0))
    assert abs(second) < 0.5


def test_scales_of_given_atoms_are_isotropic_and_those_as_read_use_u():
    """5e5z (46 of 47 atoms anisotropic): scales refitted at given xyz, B, occ (the refinement's
    isotropic atoms) are those of the isotropic F_calc that its target uses; without arguments
    (scoring the model as read) they fit the anisotropic F_calc."""
    model = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    assert model.u_aniso is not None
    xm = XrayModel(model, Reflections.from_file(data_file("5e5z.mtz.gz")))
    with torch.no_grad():
        fc_iso = xm.fcalc(model.xyz, model.b_iso, model.occ)
        iso = xm.update_scales(model.xyz, model.b_iso, model.occ).b_aniso.clone()
        r_iso = xm.r_factors(fc_iso)["r_work"]
        assert torch.allclose(xm.update_scales(fcalc=fc_iso).b_aniso, iso)
        as_read = xm.update_scales().b_aniso.clone()
        r_mixed = xm.r_factors(fc_iso)["r_work"]      # scales of the anisotropic F_calc on the isotropic one
    print(f"R-work of the isotropic F_calc: its own scales {r_iso:.4f}, the anisotropic one's {r_mixed:.4f}")
    assert not torch.allclose(iso, as_read, atol=0.05)
    assert r_iso < r_mixed


def test_small_data_set_gets_several_ml_bins():
    """5e5z (403 reflections, 18 free: one scale bin): the ML target's D and S get 4 bins of
    >= 100 reflections (from the working set), noted; the scales keep their one bin, and the
    per-bin table still has one row with D averaged over it. 1a0f keeps its own bins."""
    from equipoise.xtal.xray import ml_bins

    refl = Reflections.from_file(data_file("5e5z.mtz.gz"))
    assert refl.n_bins == 1
    index, n = ml_bins(refl)
    assert n == 4 and torch.bincount(index).min() >= 100
    xm = XrayModel(AtomModel.from_file(data_file("5e5z.pdb.gz")), refl)
    assert any("4 resolution bins" in note for note in xm.notes)
    xm.update_scales()
    assert xm.ml.d.shape == (4,) and len(xm.scales.k_bin) == 1
    rows = xm.shells(xm.fcalc(xm.model.xyz, xm.model.b_iso, xm.model.occ))
    assert len(rows) == 1 and 0 < rows[0]["D"] < 1.5
    big = Reflections.from_file(data_file("1a0f/1a0f_data.mtz"))
    assert ml_bins(big)[1] == big.n_bins
