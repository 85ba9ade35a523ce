"""Benchmark of diffraction refinement (the demo), its robustness and its capture range.

    python benchmarks/diffraction_refine.py                # demo: iterations, wall time, ratio
    python benchmarks/diffraction_refine.py --robustness   # other mosaic seeds/domains, noise, quadrature
    python benchmarks/diffraction_refine.py --capture      # capture range in misset, mosaic, cell,
                                                           # with and without the orientation search

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

from equipoise.diffraction.demo import TRUTH, check_criteria, demo_configs, mismatch_case
from equipoise.diffraction.refine import ImageModel, refine, starting_config
from equipoise.diffraction.simulate import Simulator
from equipoise.errors import NonFiniteError


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


def observed_image() -> np.ndarray:
    """The demo's noise-free observed image."""
    truth, _ = demo_configs()
    with torch.no_grad():
        return Simulator(truth)().numpy()


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
    """Observed images from other mosaic draws, other domain counts, Poisson noise; model: the demo's
    start (5 nanoBragg domains, default seed) or a 10-domain quadrature. ``F`` = fluence."""
    seed25 = ["-mosaic_seed", "777", "-mosaic_domains", "25"]
    cases = [  # (label, extra truth flags, noise seed, fluence, quadrature model)
        ("same draws (demo)", [], None, "1e28", False),
        ("obs mosaic seed 777", ["-mosaic_seed", "777"], None, "1e28", False),
        ("obs 10 domains, seed 777", ["-mosaic_seed", "777", "-mosaic_domains", "10"], None, "1e28", False),
        ("obs 25 domains, seed 777", seed25, None, "1e28", False),
        ("obs 25 domains, seed 777; model quad 10", seed25, None, "1e28", True),
        ("demo + Poisson noise (F 1e28)", [], 1, "1e28", False),
        ("demo + Poisson noise (F 1e30)", [], 1, "1e30", False),
        ("obs 25 dom. s777 + noise (F 1e30)", seed25, 1, "1e30", False),
        ("obs 25 dom. s777 + noise (F 1e30); quad 10", seed25, 1, "1e30", True),
    ]
    print("floor: data loss of the observed image against the model at the true values (noise, other draws)")
    print(f"{'observed / model':44} {'steps':>5} {'evals':>5} {'loss0':>9} {'loss':>9} {'floor':>9} {'mosaic':>7} "
          f"{'misset':>24} {'wall s':>6} pass")
    for name, extra, noise, fluence, quadrature in cases:
        observed, model, floor = mismatch_case(extra, noise, fluence, quadrature)
        r = refine(observed, model, ("mosaic", "misset"), strategy="orient")
        criteria, _ = check_criteria(r, floor=floor)
        misset = ", ".join(f"{v:.3f}" for v in r.parameters["misset_deg"])
        print(f"{name:44} {r.iterations:5d} {r.evaluations:5d} {r.initial_loss:9.4g} {r.final_loss:9.4g} "
              f"{floor:9.4g} {r.parameters['mosaic_spread_deg']:7.3f} {misset:>24} {r.wall_s:6.1f} "
              f"{all(criteria.values())}", flush=True)


#: capture-range directions of the misset error (start = truth - d·direction)
DIRECTIONS = {"demo (5,3,-2)": (5.0, 3.0, -2.0), "y": (0.0, 1.0, 0.0), "(-1,1,1)": (-1.0, 1.0, 1.0),
              "(1,2,0)": (1.0, 2.0, 0.0), "(0,-1,1)": (0.0, -1.0, 1.0)}
#: the search used for the "with search" rows: radius 20 deg, 5 deg grid (broadened N = 3, 3 fine candidates)
SEARCH = (20.0, 5.0)


def _capture_row(label: str, observed, config, names, options: dict, label2: str) -> None:
    try:
        r = refine(observed, config, names, strategy="joint" if "cell" not in names else "orient", **options)
    except NonFiniteError as err:  # a line search that diverged: a failed start, not a benchmark error
        print(f"{label:>34} {label2:>14} failed: {err}", flush=True)
        return
    criteria, errors = check_criteria(r)
    cell = r.parameters.get("cell")
    cell_text = "" if cell is None else " cell " + "/".join(f"{v:.2f}" for v in cell[:3])
    found = "" if r.search is None else f" search best err {_misset_error(r.search['best_misset_deg']):.2f} deg"
    evals = f"{r.evaluations}" + ("" if r.search is None else f"+{r.search['evaluations']}")
    print(f"{label:>34} {label2:>14} {r.iterations:5d} {evals:>8} {r.wall_s:6.1f} "
          f"{r.parameters['mosaic_spread_deg']:7.3f} {max(errors['misset_deg']):8.3f} "
          f"{all(criteria.values())!s:5}{cell_text}{found}", flush=True)


def _misset_error(misset) -> float:
    return float(np.linalg.norm(np.asarray(misset) - np.asarray(TRUTH["misset_deg"])))


def bench_capture(distances: list[float], quick: bool, parts: str) -> None:
    """Misset starts at distance d along several directions, mosaic starts, cell starts; each with
    and without the orientation search (``refine(search=SEARCH)``). Strategy joint (cell: orient)."""
    observed = observed_image()
    _, start = demo_configs()
    truth_misset = np.array(TRUTH["misset_deg"])
    plain, searched = {}, {"search": SEARCH}
    print("capture range: starts at distance d (deg) from the truth; pass = demo criteria (misset within 1 deg)")
    print(f"search: radius {SEARCH[0]:g} deg, step {SEARCH[1]:g} deg, coarse model N = 3, 3 fine candidates")
    print(f"{'start':>34} {'method':>14} {'steps':>5} {'evals':>8} {'wall s':>6} {'mosaic':>7} {'misset err':>8} pass")
    directions = dict(list(DIRECTIONS.items())[:2]) if quick else DIRECTIONS
    for name, direction in (directions if "misset" in parts else {}).items():
        u = np.asarray(direction) / np.linalg.norm(direction)
        for d in distances:
            config = starting_config(start, misset_deg=tuple(truth_misset - d * u))
            for label2, options in (("plain", plain), ("search", searched)):
                _capture_row(f"misset {name} d = {d:g}", observed, config, ("mosaic", "misset"), options, label2)
    u = truth_misset / np.linalg.norm(truth_misset)
    for m in (0.05, 3.2) if "mosaic" in parts else ():
        config = starting_config(start, mosaic_spread_deg=m, misset_deg=tuple(truth_misset - 12.0 * u))
        for label2, options in (("plain", plain), ("search", searched)):
            _capture_row(f"mosaic {m} deg, misset d = 12", observed, config, ("mosaic", "misset"), options, label2)
    for c in (102.0, 104.0) if "cell" in parts else ():
        config = starting_config(start, cell=(c, c, c, 90.0, 90.0, 90.0))
        for label2, options in (("plain", plain), ("search", searched), ("cubic", {"cell_constraint": "cubic"}),
                                ("cubic+search", {"cell_constraint": "cubic", **searched})):
            _capture_row(f"cell {c:g} A, misset d = 6.16", observed, config, ("mosaic", "misset", "cell"),
                         options, label2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robustness", action="store_true")
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--distances", default="4,8,12,16,20", help="misset distances (deg) for --capture")
    parser.add_argument("--parts", default="misset,mosaic,cell", help="--capture: which starts to vary")
    parser.add_argument("--quick", action="store_true", help="--capture: two directions only")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine
    if args.robustness:
        bench_robustness()
    elif args.capture:
        bench_capture([float(d) for d in args.distances.split(",")], args.quick, args.parts)
    else:
        bench_demo(args.repeat)


if __name__ == "__main__":
    main()
