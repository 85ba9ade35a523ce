"""Forward and forward+backward timings of the diffraction simulator against the nanoBragg C program.

Cases: simple_cubic (1024², one evaluation per pixel) and a 1000² × 10-domain mosaic case
(``-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 5 -distance 100 -detsize 100
-pixel 0.1 -mosaic 1.0 -mosaic_domains 10``), float32 and float64, eager (and torch.compile with
``--compile``). The C figures are the wall times of TIMINGS.md (gcc -O3 -fopenmp, 2 threads, this
machine kind); they were not measured in this process, so those ratios carry the machines' noise.
The ratio measured in this process is fwd+bwd / fwd: the median over rounds of each round's
ratio (the two calls of a round run back to back, so that slow drifts of the load cancel).
Timings are medians of ``--repeats`` rounds, each round running every configuration once
(interleaved, so that load from other jobs hits all of them alike), after one warm-up call each
(which includes any compilation). The 1-minute load
average is printed before and after: on a shared 2-core machine a second intra-op thread that is
descheduled stalls every operation, so compare ``--threads 1`` and ``--threads 2``.

Allocator note: the fwd+bwd keeps what its backward pass needs in buffers that the simulator
reuses from call to call (simulate.py, saved_buffers.py). Before, the float64 fwd+bwd freed a few
hundred MB that glibc returned to the kernel, so in the interleaved rounds each call paid its page
faults again (fb/fwd ~3.3-3.7 rather than ~2.3-2.5, docs/diffraction.md, Speed).

Run: ``.venv/bin/python benchmarks/diffraction_forward.py [--compile] [--repeats N] [--threads T]``.
Backward is the gradient of the image sum w.r.t. (cell, distance_mm, mosaic_spread_deg).

``--pilatus``: the whole ``equipoise diffraction simulate`` process at Pilatus 6M size (2463 × 2527
pixels of 0.172 mm, 10 mosaic domains, writing the float and int images, ``-nonoise -nopgm``),
``--repeats`` runs, against the C program's time for the same 62 M inner evaluations.

The C program side by side: set ``NANOBRAGG_C`` to a nanoBragg executable (built from the public
nanoBragg.c with ``gcc -O3 -fopenmp``, outside this repository) and every C time is measured in
this process, the same command line with ``OMP_NUM_THREADS`` = ``--threads``, interleaved with
ours (the whole C process, writing its float image: ``-nonoise -nopgm -floatfile``). Without it
the C times are TIMINGS.md's (above) and, for ``--pilatus``, extrapolated from its 10 M-evaluation
mosaic case (0.53 s wall with 2 threads: 0.53 × 6.22 = 3.3 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.simulate import Simulator

C_WALL_S = {"simple_cubic": 0.12, "mosaic_1000": 0.53}  # TIMINGS.md, nanoBragg -O3 -fopenmp, 2 threads
#: the same cases as nanoBragg command lines (for the C program run side by side)
C_FLAGS = {"simple_cubic": "-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 5 -distance 100 -pixel 0.1 "
                           "-detpixels 1024".split(),
           "mosaic_1000": "-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 5 -distance 100 -detsize 100 "
                          "-pixel 0.1 -mosaic 1.0 -mosaic_domains 10".split()}


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


def runners(case: str, dtype: torch.dtype, compiled: bool):
    """(forward, forward_backward) callables for one configuration."""
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

    return forward, forward_backward


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


#: Pilatus 6M, 10 domains (nanoBragg flags)
PILATUS = ("-cell 100 100 100 90 90 90 -default_F 100 -lambda 1 -N 5 -distance 200 -pixel 0.172 "
           "-detpixels_f 2463 -detpixels_s 2527 -mosaic 1.0 -mosaic_domains 10 -oversample 1 -nonoise -nopgm").split()
PILATUS_EVALS = 2463 * 2527 * 10
C_PILATUS_WALL_S = C_WALL_S["mosaic_1000"] * PILATUS_EVALS / 10_000_000  # extrapolated (module docstring)


def c_program() -> str | None:
    """Path of the nanoBragg executable named by ``NANOBRAGG_C`` (None when unset); an error if it is not one."""
    path = os.environ.get("NANOBRAGG_C")
    if path and not os.access(path, os.X_OK):
        raise SystemExit(f"NANOBRAGG_C={path}: not an executable file")
    return path or None


def c_run(program: str, flags: list[str], threads: int, folder: str) -> float:
    """Wall time (s) of one whole C process with ``flags`` (float image only) in ``folder``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([program, *flags, "-nonoise", "-nopgm", "-floatfile", "c.bin"], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pilatus(repeats: int, threads: int) -> None:
    """Whole-process simulate at Pilatus 6M size against the C program (side by side when NANOBRAGG_C is set)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    program = c_program()
    walls, c_walls = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "equipoise.cli", "diffraction", "simulate", *PILATUS, "--quiet",
                            "-floatfile", "f.bin", "-intfile", "i.img"], cwd=folder, env=env, check=True)
            walls.append(time.perf_counter() - t0)
            if program:
                c_walls.append(c_run(program, [f for f in PILATUS if f not in ("-nonoise", "-nopgm")]
                                     + ["-intfile", "ci.img"], threads, folder))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, equipoise.diffraction.simulate"], env=env, check=True)
        startup = time.perf_counter() - t0
    wall = statistics.median(walls)
    c_wall = statistics.median(c_walls) if program else C_PILATUS_WALL_S
    source = f"C measured side by side (runs {[round(w, 2) for w in c_walls]})" if program else "C extrapolated"
    print(f"pilatus 6M x 10 domains, {threads} threads: whole process {wall:.2f} s (runs {[round(w, 2) for w in walls]}), "
          f"of which ~{startup:.2f} s import; {source} {c_wall:.2f} s; process/C {wall / c_wall:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="also time compile=True (first call compiles)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (at most 2 here)")
    ap.add_argument("--pilatus", action="store_true", help="whole-process simulate at Pilatus 6M size only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.pilatus:
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        pilatus(args.repeats, args.threads)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        return
    keys = [(case, dtype, compiled) for case in ("simple_cubic", "mosaic_1000")
            for dtype in (torch.float32, torch.float64)
            for compiled in ((False, True) if args.compile else (False,))]
    print(f"threads {args.threads}, load average before: {os.getloadavg()[0]:.1f}")
    fns, first = {}, {}
    for key in keys:
        fns[key] = runners(*key)
        first[key] = (timed(fns[key][0]), timed(fns[key][1]))  # warm-up (and compilation)
    times = {key: ([], []) for key in keys}
    program = c_program()
    c_times: dict[str, list[float]] = {case: [] for case in C_FLAGS}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for key in keys:
                for i in (0, 1):
                    times[key][i].append(timed(fns[key][i]))
            for case in C_FLAGS if program else ():
                c_times[case].append(c_run(program, C_FLAGS[case], args.threads, folder))
    c_wall = {case: statistics.median(c_times[case]) if program else C_WALL_S[case] for case in C_FLAGS}
    print(f"C times: {'measured side by side, whole process, ' + program if program else 'TIMINGS.md (not measured here)'}")
    print(f"{'case':13s} {'dtype':8s} {'kernel':8s} {'fwd s':>7s} {'fwd+bwd s':>9s} {'fb/fwd':>7s} "
          f"{'C wall s':>8s} {'fwd/C':>6s} {'fb/C':>6s} {'1st fwd s':>9s}")
    for key in keys:
        case, dtype, compiled = key
        tf, tb = (statistics.median(t) for t in times[key])
        ratio = statistics.median(b / f for f, b in zip(*times[key]))
        c = c_wall[case]
        print(f"{case:13s} {str(dtype)[6:]:8s} {'compile' if compiled else 'eager':8s} {tf:7.3f} {tb:9.3f} "
              f"{ratio:7.2f} {c:8.2f} {tf / c:6.2f} {tb / c:6.2f} {first[key][0]:9.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
