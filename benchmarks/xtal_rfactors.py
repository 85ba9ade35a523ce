"""R-work/R-free of deposited models: equipoise vs cctbx ``mmtbx.f_model.update_all_scales()``.

For each data set in ../shared/data/xtal: our ``XrayModel.update_scales`` + ``r_factors`` and the
peer (benchmarks/cctbx_rfactor.py, run by the Python named in $EQUIPOISE_CCTBX_PYTHON, a separate
environment with ``pip install cctbx-base``; cctbx is not an equipoise dependency). Prints both,
the differences (bar: 0.005) and the wall time ratio. cctbx's default rejects outliers; the
"all" columns are without rejection (like for like: we reject none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.reflections import Reflections
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
    obs, sig, flag = refl.labels
    free_value = "0" if "0 = free" in refl.free_convention else "1"
    out = subprocess.run([python, str(ROOT / "benchmarks" / "cctbx_rfactor.py"), str(model_path), str(data_path),
                          f"{obs},{sig}", flag, free_value], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    torch.set_num_threads(1)
    python = os.environ.get("EQUIPOISE_CCTBX_PYTHON")
    if not python:
        sys.exit("set EQUIPOISE_CCTBX_PYTHON to a Python with cctbx-base installed")
    print(f"{'data':6} {'ours R-work/R-free':>20} {'cctbx':>16} {'cctbx (all refl.)':>18} "
          f"{'diff':>16} {'diff (all)':>16} {'time ours/cctbx':>16}")
    for name, (model_name, data_name) in CASES.items():
        m, d = DATA / model_name, DATA / data_name
        if not (m.exists() and d.exists()):
            print(f"{name}: data not found under {DATA}; skipped")
            continue
        r, refl, t_ours = ours(m, d)
        c = peer(python, m, d, refl)
        print(f"{name:6} {r['r_work']:9.4f} /{r['r_free']:7.4f} {c['r_work']:7.4f} /{c['r_free']:7.4f} "
              f"{c['r_work_all']:8.4f} /{c['r_free_all']:7.4f} "
              f"{r['r_work'] - c['r_work']:+7.4f} /{r['r_free'] - c['r_free']:+7.4f} "
              f"{r['r_work'] - c['r_work_all']:+7.4f} /{r['r_free'] - c['r_free_all']:+7.4f} "
              f"{t_ours / c['seconds']:10.2f}   (n_free {r['n_free']})")


if __name__ == "__main__":
    main()
