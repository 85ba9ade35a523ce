"""Structure-factor lookup: nearest neighbour, default_F outside, tricubic Lagrange interpolation."""

import numpy as np
import torch

from equipoise.diffraction.structure_factors import StructureFactors


def _grid():
    rng = np.random.default_rng(3)
    vals = torch.tensor(rng.uniform(10, 100, size=(9, 10, 11)), dtype=torch.float64)
    return vals, (-4, -5, -5)


def test_nearest_and_default_outside():
    vals, lower = _grid()
    sf = StructureFactors(vals, lower, torch.tensor(7.0, dtype=torch.float64), interpolate=False)
    hkl = torch.tensor([[0.2, -0.4, 0.49], [-4.4, -5.3, 5.2], [4.6, 0, 0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    out = sf(hkl)
    assert out[0] == vals[4, 5, 5]
    assert out[1] == vals[0, 0, 10]
    assert out[2] == 7.0  # h0 = 5 is outside [-4, 4]
    assert out[3] == vals[4, 5, 5]  # nanoBragg rounds half down: ceil(0.5 - 0.5) = 0


def test_tricubic_reproduces_cubic_polynomials_and_grid_values():
    h, k, l = np.meshgrid(np.arange(-4, 5), np.arange(-5, 5), np.arange(-5, 6), indexing="ij")
    poly = lambda h, k, l: 3 + h - 2 * k * l + 0.5 * h ** 3 - 0.1 * (h * k * l) ** 1 + l ** 3 * k  # noqa: E731
    vals = torch.tensor(poly(h, k, l), dtype=torch.float64)
    sf = StructureFactors(vals, (-4, -5, -5), torch.tensor(0.0, dtype=torch.float64), interpolate=True)
    pts = torch.tensor([[0.3, -1.7, 2.2], [-1.5, 0.25, -2.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    expect = torch.tensor([poly(*p) for p in pts.tolist()], dtype=torch.float64)
    assert torch.allclose(sf(pts), expect, rtol=1e-12, atol=1e-10)
    # near the edge (h > h_max - 2) nanoBragg falls back to nearest neighbour
    edge = torch.tensor([[2.6, 0.0, 0.0]], dtype=torch.float64)
    assert sf(edge)[0] == vals[7, 5, 5]


def test_gradients_wrt_values_default_and_hkl():
    vals, lower = _grid()
    vals.requires_grad_(True)
    d = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    hkl = torch.tensor([[0.3, 0.2, -0.1], [10.0, 0, 0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, dd, x: StructureFactors(v, lower, dd, True)(x), (vals, d, hkl))
    assert torch.autograd.gradcheck(lambda v, dd: StructureFactors(v, lower, dd, False)(hkl.detach()), (vals, d))


def test_no_grid_gives_default_F():
    sf = StructureFactors(None, (0, 0, 0), torch.tensor(3.0), interpolate=True)
    assert torch.equal(sf(torch.zeros(4, 2, 3)), torch.full((4, 2), 3.0))
