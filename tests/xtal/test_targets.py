"""ML target: normalised densities, sigmaA estimation, R and CC."""

from __future__ import annotations

import math

import torch

from equipoise.xtal.targets import correlation, estimate_ml_params, least_squares, ml_nll, r_factor


def _integral(centric: bool, fc: float, d: float, s: float) -> float:
    fo = torch.linspace(1e-6, 60.0, 200001, dtype=torch.float64)
    n = fo.shape[0]
    p = torch.exp(-ml_nll(fo, torch.zeros(n, dtype=torch.float64), torch.full((n,), fc, dtype=torch.float64),
                          torch.full((n,), centric), torch.ones(n, dtype=torch.float64),
                          torch.full((n,), d, dtype=torch.float64), torch.full((n,), s, dtype=torch.float64)))
    return float(torch.trapezoid(p, fo))


def test_rice_and_centric_densities_normalised():
    for centric in (False, True):
        for fc, d, s in ((10.0, 0.9, 20.0), (3.0, 0.5, 50.0), (15.0, 1.0, 4.0)):
            assert abs(_integral(centric, fc, d, s) - 1.0) < 1e-4


def test_sigma_a_parameters_recovered():
    g = torch.Generator().manual_seed(0)
    m = 20000
    fc_complex = torch.complex(torch.randn(m, generator=g, dtype=torch.float64),
                               torch.randn(m, generator=g, dtype=torch.float64)) * 10
    d_true, s_true = 0.8, 30.0
    err = torch.complex(torch.randn(m, generator=g, dtype=torch.float64),
                        torch.randn(m, generator=g, dtype=torch.float64)) * math.sqrt(s_true / 2)
    fo = (d_true * fc_complex + err).abs()
    bins = torch.zeros(m, dtype=torch.int64)
    free = torch.arange(m) % 5 == 0
    params = estimate_ml_params(fo, torch.full((m,), 1e-3, dtype=torch.float64), fc_complex.abs(),
                                torch.zeros(m, dtype=torch.bool), torch.ones(m, dtype=torch.float64), bins, 1, free)
    assert abs(float(params.d[0]) - d_true) < 0.05
    assert abs(float(params.s[0]) - s_true) / s_true < 0.1


def test_r_cc_ls():
    fo = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    fc = torch.tensor([11.0, 18.0, 30.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True])
    assert abs(r_factor(fo, fc, mask) - 3.0 / 60.0) < 1e-12
    assert correlation(fo, fc, mask) > 0.98
    assert abs(float(least_squares(fo, fc, mask)) - 5.0 / 1400.0) < 1e-12
    assert math.isnan(r_factor(fo, fc, torch.zeros(3, dtype=torch.bool)))
