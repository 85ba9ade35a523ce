"""Cell → vectors, misset, φ and mosaic rotations, checked against the golden run.log listings."""

import numpy as np
import pytest
import torch

from equipoise.diffraction import crystal as xtal
from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.rng import mosaic_draws
from equipoise.errors import InputError

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))


def _vectors(cell, misset=None):
    cfg = SimulationConfig()
    cfg.crystal.cell, cfg.crystal.misset_deg = cell, misset
    return xtal.crystal_vectors(cfg, None, torch.tensor(1.0, dtype=torch.float64), **F64)


def test_triclinic_matches_nanobragg_listing():
    # golden triclinic_P1/run.log, real-space columns a, b, c (Å) and reciprocal (Å^-1)
    v = _vectors((70, 80, 90, 75, 85, 95), (-89.968546, -31.328953, 177.753396))
    real = np.array([[-55.23913782, -40.96052569, -3.50238268], [-3.91763340, -19.10427436, -89.93181603],
                     [42.81693358, -66.00956019, 0.04220398]])
    recip = np.array([[-0.01232259, -0.00799159, 0.00223446], [0.00048342, 0.00030641, -0.01120794],
                      [0.00750655, -0.01028210, 0.00185723]])
    assert np.allclose(v.real.T.numpy() * 1e10, real, atol=2e-8)
    assert np.allclose(v.recip_A.T.numpy(), recip, atol=2e-8)
    assert np.allclose(v.real.norm(dim=1).numpy() * 1e10, [70, 80, 90])


def test_misset_orthorhombic_matches_listing():
    v = _vectors((70, 80, 90, 90, 90, 90), (4, 8, 12))
    real = np.array([[67.80398349, -15.83273213, 13.52730698], [14.41218160, 78.22266686, -3.54302088],
                     [-9.74211707, 5.52620868, 88.90702429]])
    assert np.allclose(v.real.T.numpy() * 1e10, real, atol=2e-8)


@pytest.mark.parametrize("cell", [(0, 80, 90, 90, 90, 90), (70, -1, 90, 90, 90, 90),
                                  (70, 80, 90, 30, 30, 90), (70, 80, 90, 120, 120, 150)])
def test_impossible_cells_raise(cell):
    with pytest.raises(InputError) as err:
        _vectors(cell)
    assert err.value.field == "cell"


def test_phi_step_resolution():
    cfg = SimulationConfig()
    assert xtal.phi_steps(cfg) == (0.0, 0.0, 1)
    cfg.crystal.osc_deg, cfg.crystal.phisteps = 0.5, 5
    assert xtal.phi_steps(cfg) == (0.0, 0.1, 5)
    cfg.crystal.phisteps = None
    assert xtal.phi_steps(cfg) == (0.0, 0.25, 2)


def test_phi0_reuse_and_mosaic_composition():
    real = torch.eye(3, dtype=torch.float64)
    spindle = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    umats = xtal.mosaic_matrices(torch.tensor(0.0, dtype=torch.float64), torch.tensor([[1.0, 0, 0]]),
                                 torch.tensor([0.0]))
    phys = xtal.rotated_real_vectors(real, spindle, [0.0, 90.0], umats.double(), reuse_phi0=False)
    quirk = xtal.rotated_real_vectors(real, spindle, [0.0, 90.0], umats.double(), reuse_phi0=True)
    assert torch.allclose(phys[0], real)
    assert torch.allclose(quirk[0], quirk[1]) and torch.allclose(quirk[1][0], torch.tensor([0.0, 1, 0]).double(),
                                                                  atol=1e-15)


def test_mosaic_matrices_are_rotations_with_the_drawn_angles():
    axes, fracs = (torch.as_tensor(x) for x in mosaic_draws(10, -12345678))
    spread = torch.tensor(2.0, dtype=torch.float64)
    u = xtal.mosaic_matrices(spread, axes, fracs)
    eye = torch.eye(3, dtype=torch.float64).expand(10, 3, 3)
    assert torch.allclose(u @ u.transpose(1, 2), eye, atol=1e-12)
    angle = torch.rad2deg(torch.arccos(((u.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert torch.allclose(angle, spread * fracs, atol=1e-6)


def test_quadrature_is_deterministic_and_covers_the_sphere():
    axes, fracs = xtal.mosaic_quadrature(200)
    assert np.allclose(np.linalg.norm(axes, axis=1), 1)
    assert np.abs(axes.mean(0)).max() < 0.02
    # mean of (1-r^2)^(1/3) for r ~ U[-1,1] is 3*sqrt(pi)*Gamma(4/3)/(2*Gamma(11/6)) ~ 0.8413
    assert abs(fracs.mean() - 0.8413) < 0.005
    a2, f2 = xtal.mosaic_quadrature(200)
    assert np.array_equal(axes, a2) and np.array_equal(fracs, f2)
