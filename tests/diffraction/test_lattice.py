"""Lattice transforms: values against the direct nanoBragg formulas, safe gradients at integer h."""

import math

import numpy as np
import pytest
import torch

from equipoise.diffraction.lattice import ROUND_SCALE, lattice_factor, sincg_offset


def _sincg_direct(x, n):
    return n if x == 0.0 else math.sin(n * x) / math.sin(x)


@pytest.mark.parametrize("n", [1.0, 2.0, 5.0, 10.0])
def test_square_matches_full_h_formula_squared(n):
    h = torch.linspace(-7.3, 7.3, 1001, dtype=torch.float64)
    hkl = torch.stack([h, 0.3 * h + 0.1, -0.7 * h], -1)
    nn = torch.tensor([n, n, n], dtype=torch.float64)
    mine = lattice_factor(hkl, nn, "square", 1.0) ** 2
    ref = torch.tensor([np.prod([_sincg_direct(math.pi * float(x), n) for x in row]) ** 2 for row in hkl])
    assert torch.allclose(mine, ref, rtol=1e-9, atol=1e-9 * n ** 6)


def test_sincg_limits_and_gradients_at_integers():
    u = torch.tensor([0.0, 1e-9, -1e-5, 1e-3, 0.2], dtype=torch.float64, requires_grad=True)
    n = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    f = sincg_offset(u, n)
    assert torch.allclose(f[:3].detach(), torch.full((3,), 5.0, dtype=torch.float64), rtol=1e-8)
    f.sum().backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(n.grad)
    assert abs(float(n.grad) - (1 + 1 + 1 + 0.0) - float(torch.autograd.grad(
        sincg_offset(torch.tensor([1e-3, 0.2], dtype=torch.float64), n).sum(), n)[0])) < 1e-6
    assert torch.autograd.gradcheck(lambda x, m: sincg_offset(x, m),
                                    (torch.tensor([0.0, 5e-4, 0.0011, 0.3], dtype=torch.float64,
                                                  requires_grad=True), n))


def test_round_gauss_tophat_peak_values():
    nn = torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64)
    at = torch.tensor([[3.0, -2.0, 1.0]], dtype=torch.float64)
    recip = torch.eye(3, dtype=torch.float64) * 0.01
    assert torch.allclose(lattice_factor(at, nn, "round", 1.0), torch.tensor([210 * ROUND_SCALE]).double())
    assert torch.allclose(lattice_factor(at, nn, "gauss", 1.0, recip), torch.tensor([210.0]).double())
    assert torch.allclose(lattice_factor(at, nn, "tophat", 1.0, recip), torch.tensor([210.0]).double())
    off = torch.tensor([[3.4, -2.0, 1.0]], dtype=torch.float64)
    # gauss: dr*^2 = (0.4*0.01)^2 * 210^2
    expect = 210 * math.exp(-((0.004 * 210) ** 2) / 0.63)
    assert torch.allclose(lattice_factor(off, nn, "gauss", 1.0, recip), torch.tensor([expect]).double())
    assert float(lattice_factor(off, nn, "tophat", 1.0, recip)) == 0.0
    x = math.pi * 0.4 * 5
    assert torch.allclose(lattice_factor(off, nn, "round", 1.0),
                          torch.tensor([210 * ROUND_SCALE * 3 * (math.sin(x) - x * math.cos(x)) / x ** 3]).double())


def test_round_gradient_is_finite_at_lattice_points():
    hkl = torch.tensor([[1.0, 2.0, 3.0], [1.0 + 1e-7, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    lattice_factor(hkl, torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64), "round", 1.0).sum().backward()
    assert torch.isfinite(hkl.grad).all()
