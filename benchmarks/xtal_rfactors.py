"""R-work/R-free of deposited models: equipoise vs cctbx ``mmtbx.f_model.update_all_scales()``.

For each data set in ../shared/data/xtal (or your own, ``--model M --data D``): our ``XrayModel.update_scales`` + ``r_factors`` and the
peer (benchmarks/cctbx_rfactor.py, run by the Python named in $EQUIPOISE_CCTBX_PYTHON, a separate
environment with ``pip install cctbx-base``; cctbx is not an equipoise dependency). Prints both,
the differences (bar: 0.005) and the wall time ratio. cctbx's default rejects outliers; the
"all" columns are without rejection (like for like: we reject none).

Two definitions of R-free are compared, each like for like: "R-free" scores the free set with
the scales fitted to the working set (ours by default; cctbx's F_model with its working-set
scale k1_w); "rescaled" first rescales the free set by its own least-squares scale, which is
what cctbx's ``r_free()`` and phenix.refine report (k1_t). They differ visibly only on small
free sets (5e5z: 18 reflections).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.synthetic import write_mtz
from equipoise.xtal.xray import XrayModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "xtal"
CASES = {"1a0f": ("1a0f/1a0f_round0.pdb", "1a0f/1a0f_data.mtz"),
         "5e5z": ("5e5z.pdb.gz", "5e5z.mtz.gz"),
         "1l2h": ("1l2h.cif.gz", "1l2h.mtz.gz")}


def ours(model_path: Path, data_path: Path) -> tuple[dict, Reflections, float]:
    t0 = time.perf_counter()
    refl = Reflections.from_file(data_path)
    xm = XrayModel(AtomModel.from_file(model_path), refl)
    xm.update_scales()
    return xm.r_factors(), refl, time.perf_counter() - t0


def peer(python: str, model_path: Path, data_path: Path, refl: Reflections) -> dict:
    """cctbx's R-factors (``cctbx_rfactor.py`` reads MTZ only: other data, e.g. SF-mmCIF, go to
    it as the MTZ of the reflections we read, FP/SIGFP/FreeR_flag with 0 = free, so both score
    the same reflections)."""
    with tempfile.TemporaryDirectory() as tmp:
        obs, sig, flag = refl.labels
        free_value = "0" if "0 = free" in refl.free_convention else "1"
        if ".mtz" not in data_path.name.lower():
            data_path = write_mtz(refl, Path(tmp) / "data.mtz")
            obs, sig, flag, free_value = "FP", "SIGFP", "FreeR_flag", "0"
        out = subprocess.run([python, str(ROOT / "benchmarks" / "cctbx_rfactor.py"), str(model_path),
                              str(data_path), f"{obs},{sig}", flag, free_value], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="your own deposited model (with --data): scored instead of the shared cases")
    ap.add_argument("--data", help="its reflections (MTZ or SF-mmCIF)")
    args = ap.parse_args()
    if (args.model is None) != (args.data is None):
        ap.error("--model and --data go together")
    cases = ({Path(args.model).name: (Path(args.model).resolve(), Path(args.data).resolve())} if args.model else
             {name: (DATA / m, DATA / d) for name, (m, d) in CASES.items()})
    torch.set_num_threads(1)
    python = os.environ.get("EQUIPOISE_CCTBX_PYTHON")
    if not python:
        sys.exit("set EQUIPOISE_CCTBX_PYTHON to a Python with cctbx-base installed")
    print("R-work / R-free / R-free rescaled; cctbx without outlier rejection (like for like), then its default")
    print(f"{'data':6} {'ours':>24} {'cctbx (all refl.)':>24} {'ours - cctbx (all)':>26} "
          f"{'cctbx default':>24} {'time ours/cctbx':>16}")
    for name, (m, d) in cases.items():
        if not (m.exists() and d.exists()):
            print(f"{name}: data not found under {DATA}; skipped")
            continue
        r, refl, t_ours = ours(m, d)
        c = peer(python, m, d, refl)
        mine = (r["r_work"], r["r_free"], r["r_free_rescaled"])
        peer_all = (c["r_work_all"], c["r_free_all_wscale"], c["r_free_all"])
        peer_default = (c["r_work"], c["r_free_wscale"], c["r_free"])
        diff = tuple(a - b for a, b in zip(mine, peer_all))
        print(f"{name:6} {_triple(mine)} {_triple(peer_all)} {_triple(diff, signed=True)} "
              f"{_triple(peer_default)} {t_ours / c['seconds']:10.2f}   (n_free {r['n_free']}, "
              f"cctbx k1_t {c['k1_t']:.4f})")


def _triple(values: tuple[float, float, float], signed: bool = False) -> str:
    fmt = "+.4f" if signed else ".4f"
    return " / ".join(format(v, fmt) for v in values)


if __name__ == "__main__":
    main()
