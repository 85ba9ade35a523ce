"""torch.autograd.gradcheck (float64) of the image w.r.t. every differentiable parameter.

Small images: an 8×8 region of interest over a spot of a 32×32 detector, oversample 1, two φ
steps, three mosaic domains, a misset crystal. Each check also asserts the gradient is non-zero.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equipoise.diffraction.config import HKLGrid, SimulationConfig
from equipoise.diffraction.simulate import Simulator
from equipoise.errors import InputError

F64 = torch.float64


def _config(with_grid: bool) -> SimulationConfig:
    cfg = SimulationConfig(mode="physical")
    cr, det = cfg.crystal, cfg.detector
    cr.cell, cr.misset_deg, cr.n_cells = (100.0, 95.0, 105.0, 88.0, 91.0, 93.0), (5.0, 10.0, 15.0), (5.0, 5.0, 4.0)
    cr.mosaic_spread_deg, cr.mosaic_domains = 0.3, 3
    cr.osc_deg, cr.phisteps = 0.2, 2
    cr.default_F = 50.0
    cfg.beam.wavelength_A, cfg.beam.polarization = 6.2, 0.5
    det.distance_mm, det.pixel_mm, det.fpixels, det.spixels, det.oversample = 100.0, 0.4, 32, 32, 1
    det.rot_deg, det.twotheta_deg = (1.0, -2.0, 0.5), 3.0
    if with_grid:
        rng = np.random.default_rng(0)
        cr.hkl = HKLGrid(lower=(-3, -3, -3), values=rng.uniform(20.0, 200.0, size=(7, 7, 7)))
    return cfg


def _window(cfg: SimulationConfig) -> tuple[int, int]:
    with torch.no_grad():
        img = Simulator(cfg, dtype=F64)().numpy()
    s, f = np.unravel_index(np.argmax(img), img.shape)
    return int(np.clip(s - 3, 0, 24)), int(np.clip(f - 3, 0, 24))


CASES = {
    "cell": torch.tensor([100.0, 95.0, 105.0, 88.0, 91.0, 93.0]),
    "misset_deg": torch.tensor([5.0, 10.0, 15.0]),
    "mosaic_spread_deg": torch.tensor(0.3),
    "n_cells": torch.tensor([5.0, 5.0, 4.0]),
    "wavelength_A": torch.tensor(6.2),
    "distance_mm": torch.tensor(100.0),
    "beam_center_mm": torch.tensor([6.6, 6.2]),
    "detector_rot_deg": torch.tensor([1.0, -2.0, 0.5]),
    "twotheta_deg": torch.tensor(3.0),
    "fluence": torch.tensor(1.2e29),
    "default_F": torch.tensor(50.0),
    "F": None,
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name):
    cfg = _config(with_grid=(name == "F"))
    s0, f0 = _window(cfg)
    cfg.detector.roi = (f0, f0 + 7, s0, s0 + 7)
    sim = Simulator(cfg, dtype=F64)
    value = torch.tensor(cfg.crystal.hkl.values) if name == "F" else CASES[name]
    x = value.to(F64).clone().requires_grad_(True)
    scale = 1e-29 if name == "fluence" else 1.0  # keep finite differences well conditioned

    def f(v):
        return sim({name: v / scale if name == "fluence" else v})[s0:s0 + 8, f0:f0 + 8]

    xs = (x * scale).detach().requires_grad_(True)
    out = f(xs)
    assert out.detach().max() > 1.0, "window must hold a spot"
    grad, = torch.autograd.grad(out.sum(), xs)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0, f"zero gradient for {name}"
    assert torch.autograd.gradcheck(f, (xs,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=name == "F")


def test_nanobragg_mode_gradients_too():
    cfg = _config(with_grid=False)
    cfg.mode = "nanobragg"
    s0, f0 = _window(cfg)
    cfg.detector.roi = (f0, f0 + 7, s0, s0 + 7)
    sim = Simulator(cfg, dtype=F64)
    x = torch.tensor([100.0, 95.0, 105.0, 88.0, 91.0, 93.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: sim({"cell": c})[s0:s0 + 8, f0:f0 + 8], (x,), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name,value,field", [("wavelength_A", 0.0, "lambda"), ("n_cells", [0.5, 5, 5], "n_cells"),
                                               ("cell", [100, 100, 100, 10, 10, 90], "cell")])
def test_bad_parameter_values_raise(name, value, field):
    sim = Simulator(_config(False), dtype=F64)
    with pytest.raises(InputError) as err:
        sim({name: torch.tensor(value, dtype=F64)})
    assert err.value.field == field
