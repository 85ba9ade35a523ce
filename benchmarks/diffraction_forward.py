"""Forward and forward+backward timings of the diffraction simulator against the nanoBragg C program.

Cases: simple_cubic (1024², one evaluation per pixel) and a 1000² × 10-domain mosaic case
(``-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 5 -distance 100 -detsize 100
-pixel 0.1 -mosaic 1.0 -mosaic_domains 10``), float32 and float64, eager and torch.compile.
The C figures are the wall times of TIMINGS.md (gcc -O3 -fopenmp, 2 threads, this machine kind);
they were not measured in this process, so the ratios carry the machines' noise.

Run: ``.venv/bin/python benchmarks/diffraction_forward.py [--no-compile] [--repeats N]``.
Backward is the gradient of the image sum w.r.t. (cell, distance_mm, mosaic_spread_deg).
"""

from __future__ import annotations

import argparse
import time

import torch

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.simulate import Simulator

C_WALL_S = {"simple_cubic": 0.12, "mosaic_1000": 0.53}  # TIMINGS.md, nanoBragg -O3 -fopenmp, 2 threads


def config(case: str) -> SimulationConfig:
    cfg = SimulationConfig(mode="nanobragg")
    cr, det = cfg.crystal, cfg.detector
    cr.cell, cr.default_F, cr.n_cells = (100.0, 100.0, 100.0, 90.0, 90.0, 90.0), 100.0, (5.0, 5.0, 5.0)
    cfg.beam.wavelength_A, det.distance_mm, det.pixel_mm = 6.2, 100.0, 0.1
    if case == "simple_cubic":
        det.fpixels = det.spixels = 1024
    else:
        det.detsize_f_mm = det.detsize_s_mm = 100.0
        cr.mosaic_spread_deg, cr.mosaic_domains = 1.0, 10
    return cfg


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-compile", action="store_true", help="only time eager evaluation")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"{'case':14s} {'dtype':8s} {'kernel':8s} {'fwd s':>8s} {'fwd+bwd s':>10s} {'bwd/fwd':>8s} "
          f"{'C wall s':>9s} {'fwd/C':>7s}")
    for case in ("simple_cubic", "mosaic_1000"):
        for dtype in (torch.float32, torch.float64):
            for compiled in ((False,) if args.no_compile else (False, True)):
                cfg = config(case)
                sim = Simulator(cfg, dtype=dtype, compile=compiled)

                def forward():
                    with torch.no_grad():
                        return sim()

                def forward_backward():
                    params = {"cell": torch.tensor(cfg.crystal.cell, dtype=dtype, requires_grad=True),
                              "distance_mm": torch.tensor(100.0, dtype=dtype, requires_grad=True),
                              "mosaic_spread_deg": torch.tensor(cfg.crystal.mosaic_spread_deg, dtype=dtype,
                                                                requires_grad=True)}
                    sim(params).sum().backward()

                try:
                    tf = best_time(forward, args.repeats)
                    tb = best_time(forward_backward, args.repeats)
                except Exception as err:  # report and go on (e.g. a compiler failure)
                    print(f"{case:14s} {str(dtype)[6:]:8s} {'compile' if compiled else 'eager':8s} failed: {err}")
                    continue
                c = C_WALL_S[case]
                print(f"{case:14s} {str(dtype)[6:]:8s} {'compile' if compiled else 'eager':8s} {tf:8.3f} "
                      f"{tb:10.3f} {tb / tf:8.2f} {c:9.2f} {tf / c:7.2f}", flush=True)


if __name__ == "__main__":
    main()
