"""Peak memory of chunked evaluation stays under ``config.memory_budget_bytes``, forward and backward.

Each measurement runs in a fresh subprocess: the peak resident set size (``ru_maxrss``) after a
small warm-up is the baseline, and the growth during forward (+backward) passes of the large image
must stay below the budget. The 1024×1024×10-domain case runs under ``-m slow``; the default suite
runs a 256×256×10-domain case with a proportionally smaller budget, three times over, so that heap
growth from allocator fragmentation across calls would show (the simulator sets no allocator
options). The forward pass keeps what it can for the backward pass within part of the budget
(simulate.py): measured growth for 1024²×10 domains, 33 MiB (float32) and 58 MiB (float64)
forward only, about 175-195 MiB and 530-575 MiB forward+backward (autograd graph and lattice
Jacobians kept); 256²×10 domains under a 64 MiB budget, three calls: 17-26 and 33-41 MiB.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys, torch
from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.simulate import Simulator
torch.set_num_threads(2)
pixels, budget, dtype, backward = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3]), sys.argv[4] == "1"
calls = int(sys.argv[5])

def config(n):
    cfg = SimulationConfig(mode="nanobragg", memory_budget_bytes=budget)
    cr, det = cfg.crystal, cfg.detector
    cr.cell, cr.default_F, cr.n_cells = (100.0, 100.0, 100.0, 90.0, 90.0, 90.0), 100.0, (5.0, 5.0, 5.0)
    cr.mosaic_spread_deg, cr.mosaic_domains = 1.0, 10
    cfg.beam.wavelength_A, det.distance_mm = 6.2, 100.0
    det.pixel_mm, det.fpixels, det.spixels, det.oversample = 102.4 / n, n, n, 1
    return cfg

def run(n):
    sim = Simulator(config(n), dtype=dtype)
    cell = torch.tensor([100.0, 100, 100, 90, 90, 90], dtype=dtype, requires_grad=backward)
    spread = torch.tensor(1.0, dtype=dtype, requires_grad=backward)
    img = sim({"cell": cell, "mosaic_spread_deg": spread}) if backward else sim()
    if backward:
        img.sum().backward()
    return float(img.detach().sum())

run(16)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for _ in range(calls):
    total = run(pixels)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - base, "sum": total}))
"""


def _growth(pixels: int, budget: int, dtype: str, backward: bool, calls: int = 1) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(pixels), str(budget), dtype, "1" if backward else "0",
                          str(calls)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sum"] > 0
    return int(result["growth"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_case_under_proportional_budget(dtype):
    budget = (1 << 30) // 16  # 256² is 1/16 of 1024²
    growth = _growth(256, budget, dtype, backward=True, calls=3)
    assert growth < budget, f"peak growth {growth / 2**20:.0f} MiB over budget {budget / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backward", [False, True])
def test_megapixel_ten_domains_under_one_gigabyte(dtype, backward):
    budget = 1 << 30
    growth = _growth(1024, budget, dtype, backward)
    assert growth < budget, f"peak growth {growth / 2**20:.0f} MiB over 1 GiB"


def test_backward_plans_agree():
    """Gradients are the same whichever data the forward pass keeps for the backward pass.

    simulate.py keeps the geometry's autograd graph and the lattice Jacobians ("graph"), the
    Jacobians alone ("tape") or nothing ("recompute"), as the memory budget allows: all twelve
    parameters, physical mode, HKL grid, oversampling, φ steps and mosaic domains, several chunks.
    """
    import numpy as np
    import torch

    from equipoise.diffraction.config import HKLGrid, SimulationConfig
    from equipoise.diffraction.simulate import Simulator

    cfg = SimulationConfig(mode="physical")
    cr, det = cfg.crystal, cfg.detector
    cr.cell, cr.misset_deg, cr.n_cells = (100.0, 95.0, 105.0, 88.0, 91.0, 93.0), (5.0, 10.0, 15.0), (5.0, 5.0, 4.0)
    cr.mosaic_spread_deg, cr.mosaic_domains, cr.osc_deg, cr.phisteps = 0.3, 3, 0.2, 2
    # a grid that misses negative indices, so that default_F counts too
    cr.hkl = HKLGrid(lower=(0, 0, 0), values=np.random.default_rng(0).uniform(20.0, 200.0, size=(2, 2, 2)))
    cfg.beam.wavelength_A, cfg.beam.polarization = 6.2, 0.5
    det.distance_mm, det.pixel_mm, det.fpixels, det.spixels, det.oversample = 100.0, 0.4, 32, 32, 2
    det.rot_deg, det.twotheta_deg = (1.0, -2.0, 0.5), 3.0
    values = {"cell": cr.cell, "misset_deg": cr.misset_deg, "mosaic_spread_deg": 0.3, "n_cells": cr.n_cells,
              "wavelength_A": 6.2, "distance_mm": 100.0, "beam_center_mm": (6.6, 6.2),
              "detector_rot_deg": det.rot_deg, "twotheta_deg": 3.0, "fluence": 1.2e29, "default_F": 50.0,
              "F": cr.hkl.values}
    grads = {}
    for budget in (1 << 30, 4 << 20, 1 << 20):
        cfg.memory_budget_bytes = budget
        sim = Simulator(cfg, dtype=torch.float64)
        plan = sim._backward_plan(True, (True,) * 15)[0]
        params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
        weight = torch.linspace(0.5, 1.5, 32 * 32, dtype=torch.float64).reshape(32, 32)
        (sim(params) * weight).sum().backward()
        grads[plan] = {k: p.grad for k, p in params.items()}
    assert set(grads) == {"graph", "tape", "recompute"}
    for plan in ("tape", "recompute"):
        for name, ref in grads["graph"].items():
            assert ref.abs().max() > 0, name
            err = float((grads[plan][name] - ref).abs().max() / ref.abs().max())
            assert err < 1e-10, f"{plan}: gradient of {name} differs by {err:.1e}"
