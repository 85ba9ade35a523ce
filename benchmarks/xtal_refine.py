"""Refinement from a shaken model: equipoise vs servalcat ``refine_xtal_norefmac``, same run.

Cases (``--case``, several allowed):

- ``5e5z-synth``: truth = the deposited 5e5z peptide; F_obs simulated from it with bulk solvent
  and noise on the real hkl set and free flags (``equipoise.xtal.synthetic``).
- ``1a0f-real``: the real 2.0 Å 1A0F data (``1a0f_data.mtz``); start = ``1a0f_round0.pdb``
  shaken; scored by R-free against the real data (no truth; the RMSD column is to round0).
- ``1a0f-synth``: truth = ``1a0f_round0.pdb`` after servalcat's refinement against the real
  data (a model with library geometry, made by the *peer*, so any bias is in its favour; cached
  in ``--cache``); F_obs simulated from it on the real hkl set with the real free flags.

- ``real`` (with ``--model M --data D [--ligand X.cif ...] [--labin ...]``): your own deposited
  model and data (MTZ or SF-mmCIF, read by our reader and written as the MTZ both programs get);
  start = the model shaken; scored by R-free (the RMSD column is to the given model).
- ``model-synth`` (with ``--model M --synth DMIN [--ligand ...]``): truth = your model; F_obs
  simulated from it to DMIN Å (bulk solvent, noise, every 20th reflection free), for models
  without data (ligands, metals, other space groups); scored as the synthetic cases.

Each start is the truth (or round0, or the given model) shaken by ``--shake`` Å RMS (seed 1). Both programs refine
the same start against the same MTZ (FP, SIGFP, FreeR_flag, 0 = free), each as a child process
with ``OMP_NUM_THREADS=1``: equipoise as ``python -m equipoise xtal refine --plots none``, servalcat
as ``$EQUIPOISE_SERVALCAT refine_xtal_norefmac -s xray --ncycle 10`` (its defaults otherwise,
e.g. riding hydrogens; ``EQUIPOISE_SERVALCAT`` is the servalcat executable of a separate
environment, ``python -m venv peer && peer/bin/pip install servalcat``; servalcat is not an
equipoise dependency). Wall time and peak RSS are those of the child (GNU ``/usr/bin/time``). Every output
is scored by the same code: our R-work/R-free after scaling, our restraint statistics, RMSD to
the truth over all atoms matched by label. Printed: both rows per case and the ratios
(time, memory) and differences (R-free, RMSD) against the issue's bars.

Usage: python benchmarks/xtal_refine.py [--case 5e5z-synth 1a0f-real 1a0f-synth] [--shake 0.3]
    [--cycles 5] [--serval-cycles 10] [--cache build/xtal_refine] [--keep DIR]
    python benchmarks/xtal_refine.py --model MODEL --data DATA [--ligand X.cif ...] [--labin F,SIGF,FREE]
    python benchmarks/xtal_refine.py --model MODEL --synth DMIN [--ligand X.cif ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.monlib import find_monlib
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.restraints import Restraints
from equipoise.xtal.synthetic import shake, simulated_reflections, write_mtz
from equipoise.xtal.xray import XrayModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "xtal"
CASES = ("5e5z-synth", "1a0f-real", "1a0f-synth")
TIME = "/usr/bin/time"  # GNU time: peak RSS of the child (%M, KiB)
BARS = "bars: R-free diff <= 0, RMSD diff <= 0, bonds <= 0.02 Å, angles <= 2.5°, time ratio <= 2, peak <= 1 GB"


def run_child(cmd: list[str], cwd: Path, log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` (one thread); returns (exit status, wall s, peak RSS GB) of that child alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # Linux carries a forked child's RSS high-water mark (this process's size) across exec, so
    # the peak is read by /usr/bin/time, whose own child starts small.
    peak_file = log.with_suffix(".peak")
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M", "-o", str(peak_file), *cmd], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    peak_kib = float(peak_file.read_text().split()[-1])
    return proc.returncode, wall, peak_kib / 1024 ** 2


def servalcat_cmd(exe: str, start: Path, mtz: Path, monlib: Path, prefix: Path, cycles: int,
                  ligands: list[str] = ()) -> list[str]:
    """servalcat's x-ray refinement, its defaults except the free flag and cycle count."""
    return [exe, "refine_xtal_norefmac", "--model", str(start), "--hklin", str(mtz),
            "--labin", "FP,SIGFP,FreeR_flag", "--free", "0", "-s", "xray", "--ncycle", str(cycles),
            "--monlib", str(monlib), "-o", str(prefix), *(["--ligand", *ligands] if ligands else [])]


def equipoise_cmd(start: Path, mtz: Path, monlib: Path, out: Path, cycles: int, ligands: list[str] = ()) -> list[str]:
    """equipoise's refinement command line (defaults, no figures)."""
    return [sys.executable, "-m", "equipoise", "xtal", "refine", str(start), str(mtz), "--out", str(out),
            "--cycles", str(cycles), "--monlib", str(monlib), "--plots", "none", "--restart",
            *(["--ligand", *ligands] if ligands else [])]


def score(path: Path, truth: AtomModel, mtz: Path, monlib: Path, ligands: list[str] = ()) -> dict:
    """R-work/R-free (ours, after scaling), bond/angle RMSD, RMSD to ``truth`` (Å) of a model file.

    Atoms are matched to the truth by label (chain/residue/atom/altloc); every truth atom must be
    present (hydrogens are stripped on reading).
    """
    model = AtomModel.from_file(path)
    index = {lab: i for i, lab in enumerate(model.labels)}
    missing = [lab for lab in truth.labels if lab not in index]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} truth atoms missing, e.g. {missing[:3]}")
    order = torch.tensor([index[lab] for lab in truth.labels])
    refl = Reflections.from_file(mtz)
    if model.spacegroup is None:
        model.with_symmetry(refl.cell, refl.spacegroup)
    xm = XrayModel(model, refl)
    xm.update_scales()
    stats = Restraints.build(model, monlib=monlib, ligands=list(ligands)).statistics(model.xyz)
    r = xm.r_factors()
    rmsd = float(((model.xyz[order] - truth.xyz) ** 2).sum(1).mean().sqrt())
    return {"r_work": r["r_work"], "r_free": r["r_free"], "bond": stats["bond"]["rmsd"],
            "angle": stats["angle"]["rmsd"], "rmsd_truth": rmsd}


def load(model_path: Path, data_path: Path, labin: str | None = None) -> tuple[AtomModel, Reflections]:
    """Model (with the data's symmetry when it has none) and reflections."""
    model = AtomModel.from_file(model_path)
    refl = Reflections.from_file(data_path, labin=labin)
    if model.spacegroup is None:
        model.with_symmetry(refl.cell, refl.spacegroup)
    return model, refl


def synthetic_mtz(truth: AtomModel, real: Reflections, path: Path, noise: float) -> Path:
    """F_obs simulated from ``truth`` (bulk solvent, noise) on the real hkl set and free flags."""
    st = truth.to_structure()
    st.setup_cell_images()
    synth = simulated_reflections(st, hkl=real.hkl.numpy(), noise=noise)
    synth.free = real.free.clone()
    return write_mtz(synth, path)


def servalcat_truth(exe: str, monlib: Path, cache: Path) -> Path:
    """1a0f_round0 refined by servalcat against the real data (10 cycles), cached."""
    out = cache / "1a0f_truth_servalcat.pdb"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    model, refl = load(DATA / "1a0f" / "1a0f_round0.pdb", DATA / "1a0f" / "1a0f_data.mtz")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.write(tmp / "round0.pdb")
        mtz = write_mtz(refl, tmp / "real.mtz")
        rc, wall, _ = run_child(servalcat_cmd(exe, tmp / "round0.pdb", mtz, monlib, tmp / "serv", 10), tmp,
                                tmp / "serv.stdout")
        if rc != 0:
            raise SystemExit(f"servalcat failed making the 1a0f truth:\n{(tmp / 'serv.stdout').read_text()[-2000:]}")
        shutil.copy(tmp / "serv.pdb", out)
    print(f"made {out} (servalcat, {wall:.0f} s)", flush=True)
    return out


def prepare(case: str, tmp: Path, args, exe: str, monlib: Path) -> tuple[AtomModel, Path, Path]:
    """(truth, start.pdb, data.mtz) of a case in ``tmp``."""
    if case == "5e5z-synth":
        truth, real = load(DATA / "5e5z.pdb.gz", DATA / "5e5z.mtz.gz")
        mtz = synthetic_mtz(truth, real, tmp / "data.mtz", args.noise)
    elif case == "1a0f-real":
        truth, real = load(DATA / "1a0f" / "1a0f_round0.pdb", DATA / "1a0f" / "1a0f_data.mtz")
        mtz = write_mtz(real, tmp / "data.mtz")
    elif case == "real":
        truth, real = load(Path(args.model), Path(args.data), args.labin)
        mtz = write_mtz(real, tmp / "data.mtz")
    elif case == "model-synth":
        truth = AtomModel.from_file(args.model)
        if truth.spacegroup is None:
            raise SystemExit(f"{args.model}: no space group (CRYST1), needed to simulate its data")
        st = truth.to_structure()
        st.setup_cell_images()
        mtz = write_mtz(simulated_reflections(st, d_min=args.synth, noise=args.noise), tmp / "data.mtz")
    elif case == "1a0f-synth":
        truth, real = load(servalcat_truth(exe, monlib, Path(args.cache)), DATA / "1a0f" / "1a0f_data.mtz")
        mtz = synthetic_mtz(truth, real, tmp / "data.mtz", args.noise)
    else:
        raise SystemExit(f"unknown case {case!r}: one of {CASES}")
    truth.write(tmp / "start.pdb", xyz=shake(truth.xyz, args.shake, seed=1))
    return truth, tmp / "start.pdb", mtz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="servalcat: set EQUIPOISE_SERVALCAT to its executable (default: "
                                        "'servalcat' on PATH).")
    ap.add_argument("--case", nargs="+", choices=CASES,
                    help=f"built-in cases (default: all of {', '.join(CASES)}, or none with --model)")
    ap.add_argument("--model", help="case 'real': your deposited model (PDB/mmCIF), refined from a shaken copy")
    ap.add_argument("--data", help="case 'real': its reflections (MTZ or SF-mmCIF)")
    ap.add_argument("--synth", type=float, metavar="DMIN",
                    help="case 'model-synth': simulate the model's data to DMIN Å instead of --data")
    ap.add_argument("--labin", help="case 'real': columns F,SIGF[,FREE] when not detected")
    ap.add_argument("--ligand", nargs="+", default=[], metavar="CIF", help="case 'real': ligand dictionaries")
    ap.add_argument("--shake", type=float, default=0.3, help="RMS shift of the start, Å (default 0.3)")
    ap.add_argument("--cycles", type=int, default=5, help="equipoise macro-cycles (default 5)")
    ap.add_argument("--serval-cycles", type=int, default=10, help="servalcat --ncycle (default 10)")
    ap.add_argument("--noise", type=float, default=0.03, help="noise of synthetic F, fraction of <F>")
    ap.add_argument("--cache", default=str(ROOT / "build" / "xtal_refine"), help="where the 1a0f truth is kept")
    ap.add_argument("--keep", help="copy each case's files (start, data, outputs, logs) here")
    ap.add_argument("--json", help="write all rows as JSON here")
    args = ap.parse_args()
    if (args.model is None) != (args.data is None and args.synth is None) or (args.data and args.synth):
        ap.error("--model goes with one of --data or --synth")
    cases = args.case if args.case is not None else ([] if args.model else list(CASES))
    cases = cases + ([] if not args.model else ["real"] if args.data else ["model-synth"])
    torch.set_num_threads(1)
    monlib = find_monlib()
    exe = os.environ.get("EQUIPOISE_SERVALCAT", "servalcat")
    if not Path(TIME).is_file():
        raise SystemExit(f"{TIME} (GNU time) is needed for the peak memory: apt-get install time")
    if shutil.which(exe) is None:
        raise SystemExit(f"servalcat not found ({exe!r}): set EQUIPOISE_SERVALCAT to its executable")
    load_before = os.getloadavg()
    results = {}
    for case in cases:
        ligands = args.ligand if case in ("real", "model-synth") else []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            truth, start, mtz = prepare(case, tmp, args, exe, monlib)
            rows = {"start": score(start, truth, mtz, monlib, ligands)}
            rc, t_ours, m_ours = run_child(equipoise_cmd(start, mtz, monlib, tmp / "ours", args.cycles, ligands),
                                           tmp, tmp / "ours.stdout")
            if rc != 0:
                raise SystemExit(f"equipoise failed on {case}:\n{(tmp / 'ours.stdout').read_text()[-3000:]}")
            rows["equipoise"] = score(tmp / "ours" / "refined.pdb", truth, mtz, monlib, ligands)
            rc, t_serv, m_serv = run_child(servalcat_cmd(exe, start, mtz, monlib, tmp / "serv", args.serval_cycles,
                                                         ligands), tmp, tmp / "serv.stdout")
            if rc != 0 or not (tmp / "serv.pdb").exists():
                raise SystemExit(f"servalcat failed on {case}:\n{(tmp / 'serv.stdout').read_text()[-3000:]}")
            rows["servalcat"] = score(tmp / "serv.pdb", truth, mtz, monlib, ligands)
            rows["equipoise"].update(wall_s=t_ours, peak_gb=m_ours)
            rows["servalcat"].update(wall_s=t_serv, peak_gb=m_serv)
            if args.keep:
                dest = Path(args.keep) / case
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(tmp, dest)
        name = (f"real ({Path(args.model).name} vs {Path(args.data).name})" if case == "real" else
                f"model-synth ({Path(args.model).name}, {args.synth} Å)" if case == "model-synth" else case)
        results[name] = rows
        report(case, name, rows, args, os.getloadavg())
    print(f"load average at start {load_before[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} cores; both programs single-threaded)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(case: str, name: str, rows: dict, args, load: tuple[float, float, float]) -> None:
    """Both programs' rows, then ratios and differences against the bars."""
    real = case in ("1a0f-real", "real")
    truth_name = {"1a0f-real": "RMSD round0 Å", "real": "RMSD given Å"}.get(case, "RMSD truth Å")
    print(f"\n== {name}: shake {args.shake} Å, equipoise {args.cycles} cycles, servalcat "
          f"{args.serval_cycles} cycles; load average {load[0]:.2f}")
    print(f"{'model':10} {'R-work':>7} {'R-free':>7} {'bonds Å':>8} {'angles°':>8} {truth_name:>14} "
          f"{'wall s':>7} {'peak GB':>8}")
    for name, r in rows.items():
        extra = f"{r['wall_s']:7.1f} {r['peak_gb']:8.3f}" if "wall_s" in r else f"{'':7} {'':8}"
        print(f"{name:10} {r['r_work']:7.4f} {r['r_free']:7.4f} {r['bond']:8.4f} {r['angle']:8.3f} "
              f"{r['rmsd_truth']:14.3f} {extra}")
    o, s = rows["equipoise"], rows["servalcat"]
    parts = [f"R-free diff (ours - servalcat) {o['r_free'] - s['r_free']:+.4f}"]
    if not real:
        parts.append(f"RMSD diff {o['rmsd_truth'] - s['rmsd_truth']:+.3f} Å")
    parts += [f"time ratio {o['wall_s'] / s['wall_s']:.2f}", f"memory ratio {o['peak_gb'] / s['peak_gb']:.2f}"]
    print("ratios: " + ", ".join(parts))
    print(BARS)


if __name__ == "__main__":
    main()
