"""Peak memory of chunked evaluation stays under ``config.memory_budget_bytes``, forward and backward.

Each measurement runs in a fresh subprocess: the peak resident set size (``ru_maxrss``) after a
small warm-up is the baseline, and the growth during forward (+backward) passes of the large image
must stay below the budget. The 1024×1024×10-domain case runs under ``-m slow``; the default suite
runs a 256×256×10-domain case with a proportionally smaller budget, three times over, so that heap
growth from allocator fragmentation across calls would show (the simulator sets no allocator
options; measured growth for 1024²×10 domains, forward+backward, after each of four calls:
35-50 MiB float32, 60-83 MiB float64).
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
