"""Benchmark of diffraction refinement (the demo), its robustness and its capture range.

    python benchmarks/diffraction_refine.py                # demo: iterations, wall time, ratio
    python benchmarks/diffraction_refine.py --robustness   # other mosaic seeds/domains, noise, quadrature
    python benchmarks/diffraction_refine.py --capture      # capture range in misset, mosaic, cell

Timings are ratios against a reference measured in the same process: one forward + backward
pass of the demo's model (mosaic spread and misset requiring gradients). The machine is shared:
each timing is the best of ``--repeat`` runs. Criteria: the demo's (equipoise.diffraction.demo).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from equipoise.diffraction.demo import TRUTH, check_criteria, demo_configs
from equipoise.diffraction.noise import noise_image
from equipoise.diffraction.refine import ImageModel, refine, starting_config
from equipoise.diffraction.simulate import Simulator


def reference_seconds(dtype: torch.dtype, repeat: int) -> float:
    """Best time of one forward + backward of the demo's model at the start."""
    _, start = demo_configs()
    model = ImageModel(start, ("mosaic", "misset"), dtype=dtype)
    for v in model.variables.values():
        v.requires_grad_(True)
    best = math.inf
    for _ in range(repeat + 1):  # first call warms up
        t = time.perf_counter()
        image = model()
        torch.autograd.grad(image.sum(), list(model.variables.values()))
        best = min(best, time.perf_counter() - t)
    return best


def observed_image(extra_truth: list[str] | None = None, noise_seed: int | None = None) -> np.ndarray:
    truth, _ = demo_configs(extra_truth)
    with torch.no_grad():
        image = Simulator(truth)().numpy()
    if noise_seed is not None:
        image = noise_image(image, seed=noise_seed, adc=0.0).pixels.astype(np.float64)
    return image


def first_success_step(run_dir: str) -> int | None:
    """First logged step whose parameters meet the demo's mosaic and misset (0.1 deg) criteria."""
    with open(f"{run_dir}/record.jsonl") as handle:
        for line in handle:
            e = json.loads(line)
            p = e.get("params")
            if p and abs(p["mosaic_spread_deg"] - TRUTH["mosaic_spread_deg"]) <= 0.1 and \
                    max(abs(a - b) for a, b in zip(p["misset_deg"], TRUTH["misset_deg"])) <= 0.1:
                return e["step"]
    return None


def bench_demo(repeat: int) -> None:
    observed = observed_image()
    _, start = demo_configs()
    print("demo: refine mosaic + misset from (0.2 deg, 0/0/0) to (0.8 deg, 5/3/-2)")
    print(f"{'dtype':8} {'strategy':8} {'steps':>5} {'evals':>5} {'ok@step':>7} {'wall s':>7} {'ref s':>7} "
          f"{'wall/ref':>8} {'mosaic err':>10} {'misset max err':>14} pass")
    for dtype in (torch.float64, torch.float32):
        for strategy in ("orient", "joint"):
            ref = reference_seconds(dtype, repeat)
            best = None
            for _ in range(repeat):
                r = refine(observed, start, ("mosaic", "misset"), dtype=dtype, strategy=strategy,
                           out_dir="runs/bench_refine")
                best = r if best is None or r.wall_s < best.wall_s else best
            criteria, errors = check_criteria(best)
            print(f"{str(dtype)[6:]:8} {strategy:8} {best.iterations:5d} {best.evaluations:5d} "
                  f"{str(first_success_step('runs/bench_refine')):>7} {best.wall_s:7.2f} {ref:7.3f} "
                  f"{best.wall_s / ref:8.1f} {errors['mosaic_spread_deg']:10.2e} {max(errors['misset_deg']):14.2e} "
                  f"{all(criteria.values())}")


def bench_robustness() -> None:
    _, start = demo_configs()
    quad = starting_config(start, mosaic_sampling="quadrature", mosaic_domains=10)
    cases = [
        ("same draws (demo)", [], None, start),
        ("obs mosaic seed 777", ["-mosaic_seed", "777"], None, start),
        ("obs 10 domains, seed 777", ["-mosaic_seed", "777", "-mosaic_domains", "10"], None, start),
        ("obs 25 domains, seed 777", ["-mosaic_seed", "777", "-mosaic_domains", "25"], None, start),
        ("demo + Poisson noise", [], 1, start),
        ("obs 25 dom. s777 + noise", ["-mosaic_seed", "777", "-mosaic_domains", "25"], 1, start),
        ("obs 25 dom. s777; model quadrature 10", ["-mosaic_seed", "777", "-mosaic_domains", "25"], None, quad),
        ("obs 25 dom. s777 + noise; model quad 10", ["-mosaic_seed", "777", "-mosaic_domains", "25"], 1, quad),
    ]
    print(f"{'observed / model':42} {'steps':>5} {'evals':>5} {'loss0':>9} {'loss':>9} {'mosaic':>7} "
          f"{'misset':>24} {'wall s':>6} pass")
    for name, extra, noise, model in cases:
        r = refine(observed_image(extra, noise), model, ("mosaic", "misset"))
        criteria, _ = check_criteria(r)
        misset = ", ".join(f"{v:.3f}" for v in r.parameters["misset_deg"])
        print(f"{name:42} {r.iterations:5d} {r.evaluations:5d} {r.initial_loss:9.4g} {r.final_loss:9.4g} "
              f"{r.parameters['mosaic_spread_deg']:7.3f} {misset:>24} {r.wall_s:6.1f} {all(criteria.values())}",
              flush=True)


def bench_capture(strategies: list[str]) -> None:
    observed = observed_image()
    _, start = demo_configs()
    truth_misset = np.array(TRUTH["misset_deg"])
    direction = truth_misset / np.linalg.norm(truth_misset)
    print("capture range: starts at distance d from the truth; pass = demo criteria (misset within 1 deg)")
    print(f"{'varied':10} {'start':>26} {'strategy':>8} {'steps':>5} {'evals':>5} {'mosaic':>7} {'max misset err':>14} pass")
    runs = []
    for d in (6.16, 9.0, 12.0):  # misset distance (deg) along the demo's direction; mosaic 0.2
        runs.append(("misset", f"|d misset| = {d:.2f} deg", starting_config(
            start, misset_deg=tuple(truth_misset - d * direction)), ("mosaic", "misset")))
    for d in (3.0, 4.0):  # misset distance along another direction
        other = np.array([-1.0, 1.0, 1.0]) / math.sqrt(3.0)
        runs.append(("misset", f"|d misset| = {d:.2f} deg (-,+,+)", starting_config(
            start, misset_deg=tuple(truth_misset + d * other)), ("mosaic", "misset")))
    for m in (0.05, 2.0, 3.2):
        runs.append(("mosaic", f"mosaic {m} deg", starting_config(start, mosaic_spread_deg=m), ("mosaic", "misset")))
    for c in (101.0, 102.0, 104.0):
        runs.append(("cell", f"cell {c} A", starting_config(start, cell=(c, c, c, 90.0, 90.0, 90.0)),
                     ("mosaic", "misset", "cell")))
    for varied, label, config, names in runs:
        for strategy in strategies:
            r = refine(observed, config, names, strategy=strategy)
            criteria, errors = check_criteria(r)
            print(f"{varied:10} {label:>26} {strategy:>8} {r.iterations:5d} {r.evaluations:5d} "
                  f"{r.parameters['mosaic_spread_deg']:7.3f} {max(errors['misset_deg']):14.3f} "
                  f"{all(criteria.values())}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robustness", action="store_true")
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--strategies", default="orient,joint")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.robustness:
        bench_robustness()
    elif args.capture:
        bench_capture(args.strategies.split(","))
    else:
        bench_demo(args.repeat)


if __name__ == "__main__":
    main()
