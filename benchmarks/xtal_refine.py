"""Refinement from a shaken model: equipoise vs servalcat ``refine_xtal_norefmac``, same run.

Synthetic case with known truth: the deposited model (default 5e5z) is the truth; F_obs are
simulated from it with bulk solvent and noise on the real data set's hkl and free flags
(``equipoise.xtal.synthetic``); the start is the truth shaken by ``--shake`` Å RMS. Both
programs refine the same start against the same MTZ; every output is scored by the same code
(our R-free, xtal-A's restraint statistics, RMSD to the truth over all atoms). servalcat is a
peer run as a separate program (``$EQUIPOISE_SERVALCAT``, e.g. a venv with ``pip install
servalcat``; not an equipoise dependency) with ``--ncycle 10``.

Usage: python benchmarks/xtal_refine.py [--model M --data D] [--shake 0.3] [--cycles 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import gemmi
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.monlib import find_monlib
from equipoise.xtal.refine import RefineOptions, refine
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.restraints import Restraints
from equipoise.xtal.synthetic import shake, simulated_reflections, write_mtz
from equipoise.xtal.xray import XrayModel

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xtal"


def score(path: Path, truth: AtomModel, mtz: Path, monlib: Path) -> dict:
    """R-work/R-free (ours, after scaling), bond/angle RMSD, RMSD to truth (Å) of a model file."""
    model = AtomModel.from_file(path)
    if model.n_atoms != truth.n_atoms:
        raise SystemExit(f"{path}: {model.n_atoms} atoms, truth has {truth.n_atoms}")
    xm = XrayModel(model, Reflections.from_file(mtz))
    xm.update_scales()
    stats = Restraints.build(model, monlib=monlib).statistics(model.xyz)
    r = xm.r_factors()
    rmsd = float(((model.xyz - truth.xyz) ** 2).sum(1).mean().sqrt())
    return {"r_work": r["r_work"], "r_free": r["r_free"], "bond": stats["bond"]["rmsd"],
            "angle": stats["angle"]["rmsd"], "rmsd_truth": rmsd}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DATA / "5e5z.pdb.gz"))
    ap.add_argument("--data", default=str(DATA / "5e5z.mtz.gz"))
    ap.add_argument("--shake", type=float, default=0.3)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--noise", type=float, default=0.03)
    args = ap.parse_args()
    torch.set_num_threads(1)
    monlib = find_monlib()
    servalcat = os.environ.get("EQUIPOISE_SERVALCAT", "servalcat")
    truth = AtomModel.from_file(args.model)
    real = Reflections.from_file(args.data)
    if truth.spacegroup is None:
        truth.with_symmetry(real.cell, real.spacegroup)
    st = truth.to_structure()
    st.setup_cell_images()
    synth = simulated_reflections(st, hkl=real.hkl.numpy(), noise=args.noise)
    synth.free = real.free.clone()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mtz = write_mtz(synth, tmp / "data.mtz")
        start_xyz = shake(truth.xyz, args.shake, seed=1)
        truth.write(tmp / "start.pdb", xyz=start_xyz)
        rows = {"start": score(tmp / "start.pdb", truth, mtz, monlib)}
        # ours
        t0 = time.perf_counter()
        model = AtomModel.from_file(tmp / "start.pdb")
        xray = XrayModel(model, Reflections.from_file(mtz))
        restraints = Restraints.build(model, monlib=monlib)
        result = refine(model, restraints, xray, options=RefineOptions(cycles=args.cycles), log=lambda _: None)
        t_ours = time.perf_counter() - t0
        model.write(tmp / "ours.pdb", xyz=result.xyz, b_iso=result.b_iso)
        rows["equipoise"] = score(tmp / "ours.pdb", truth, mtz, monlib)
        # servalcat
        t0 = time.perf_counter()
        proc = subprocess.run([servalcat, "refine_xtal_norefmac", "--model", str(tmp / "start.pdb"),
                               "--hklin", str(mtz), "--labin", "FP,SIGFP,FreeR_flag", "--free", "0",
                               "-s", "xray", "--ncycle", "10", "--monlib", str(monlib), "-o", str(tmp / "serv")],
                              capture_output=True, text=True, cwd=tmp, env={**os.environ, "OMP_NUM_THREADS": "1"})
        t_serv = time.perf_counter() - t0
        out = tmp / "serv.pdb" if (tmp / "serv.pdb").exists() else tmp / "serv.mmcif"
        if proc.returncode != 0 or not out.exists():
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            raise SystemExit("servalcat failed")
        rows["servalcat"] = score(out, truth, mtz, monlib)
    print(f"{'model':10} {'R-work':>7} {'R-free':>7} {'bonds Å':>8} {'angles°':>8} {'RMSD truth Å':>13}")
    for name, r in rows.items():
        print(f"{name:10} {r['r_work']:7.4f} {r['r_free']:7.4f} {r['bond']:8.4f} {r['angle']:8.3f} {r['rmsd_truth']:13.3f}")
    print(f"wall time: equipoise {t_ours:.1f} s, servalcat {t_serv:.1f} s, ratio {t_ours / t_serv:.2f} "
          f"(machine shared; {args.cycles} equipoise cycles, 10 servalcat cycles)")


if __name__ == "__main__":
    main()
