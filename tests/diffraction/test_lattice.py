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


def _lattice_inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    q = (torch.rand(3, 5000, generator=gen, dtype=dtype) - 0.5) * 2e10          # 1/m
    rot = torch.eye(3, dtype=dtype) * 1e-8 + torch.rand(4, 3, 3, generator=gen, dtype=dtype) * 2e-10
    q[:, :3] = 0.0  # exact lattice points (h = 0): sin(πu) = 0 in the ratio form
    return q, rot


@pytest.mark.parametrize("n", [(1, 1, 1), (2, 3, 5), (5, 5, 5), (12, 7, 4)])
def test_chebyshev_lattice_sum_matches_the_sine_ratio(n):
    """Whole N <= 12 take U_{N-1}(cos πu); it must equal the two-sine path (value and Jacobians)."""
    from equipoise.diffraction import lattice_sum as ls

    q, rot = _lattice_inputs()
    cells = torch.tensor(n, dtype=torch.float64)
    assert ls.integer_cells(cells) == n
    assert ls.integer_cells(cells + 0.5) is None and ls.integer_cells(torch.tensor([13.0, 5, 5])) is None
    comp = ls._component_rows(rot)
    fast, ratio = torch.empty(q.shape[1], dtype=q.dtype), torch.empty(q.shape[1], dtype=q.dtype)
    ls._block_nograd(q, comp, cells, None, None, fast, n)
    ls._block_nograd(q, comp, cells, None, None, ratio, None)
    assert torch.allclose(fast, ratio, rtol=1e-12, atol=1e-12 * float(ratio.max()))
    need = (True, True, False, False)
    out_c, out_r = torch.empty_like(fast), torch.empty_like(fast)
    jc = ls._block_jacobians(q, comp, cells, None, None, need, 0, out_c, n)
    jr = ls._block_jacobians(q, comp, cells, None, None, need, 0, out_r, None)
    assert torch.allclose(out_c, ratio, rtol=1e-12, atol=1e-12 * float(ratio.max()))
    # the sine path takes d sincg/du from a series below |u| = 1e-3, good to ~(Nπu)²/10 relative
    # (2e-5 at N = 5); the recurrence is exact there (1e-16 against mpmath at u = -9.5e-4)
    for a, b in ((jc.dh, jr.dh), (ls.lattice_dq(jc, comp), ls.lattice_dq(jr, comp))):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-12)


def test_chebyshev_recurrence_accuracy():
    """U_{N-1}(cos πu) against sin(Nπu)/sin(πu) on a fine grid: within a few ulp of N (float64)."""
    from equipoise.diffraction.lattice_sum import _chebyshev_sincg, _chebyshev_sincg_grad

    u = torch.linspace(-0.5, 0.5, 20001, dtype=torch.float64)
    c = torch.cos(math.pi * u)
    for n in range(1, 13):
        ref = torch.where(u == 0, torch.full_like(u, float(n)),
                          torch.sin(n * math.pi * u) / torch.sin(math.pi * torch.where(u == 0, 1.0, u)))
        assert float((_chebyshev_sincg(c.clone(), n) - ref).abs().max()) < 1e-14 * n
        value, slope = torch.empty_like(u), torch.empty_like(u)
        _chebyshev_sincg_grad(c, n, value, slope)
        step = 1e-6
        numeric = (_chebyshev_sincg(c + step, n) - _chebyshev_sincg(c - step, n)) / (2 * step)
        assert float((value - ref).abs().max()) < 1e-14 * n
        assert float((slope - numeric).abs().max()) < 1e-8 * n ** 3
