"""Issue 10's bars on real ensembles, the learned model against the baselines in the same run.

For each ensemble: ``equipoise ensemble train`` (a whole process, ``--minutes`` budget, 80/20
seeded split), ``equipoise ensemble sample`` of as many conformers as the held-out models and of
100 (whole processes, timed), and the PCA and internal-coordinate baselines fitted on the same
training models (the references, in this process); every sample set is judged by the gate against
the held-out models, which no step has seen. Prints one table per ensemble, the sampling time
against the 10 s bar, and the gate verdicts.

Ensembles: 2K39 (ubiquitin NMR, ``../shared``), and ensembles that are not in ``../shared``:
AdK (adenylate kinase, 214 residues, 98 frames of a closed-to-open MD transition; ``adk_dims.dcd``
with ``adk.psf`` from the MDAnalysisTests package, ``pip install MDAnalysisTests``), plus any
``--ensemble FILE`` (multi-model PDB/mmCIF) or ``--trajectory TOPOLOGY TRAJECTORY`` (trained from
the trajectory with ``--topology``). A completed run in ``--work`` is reused (the train command
resumes a finished run at once).

Usage: python benchmarks/ensemble_gate.py [--minutes 20] [--work DIR] [--only 2k39,adk]
       [--ensemble FILE ...] [--trajectory TOP TRAJ] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from equipoise.ensemble.baselines import run_baseline
from equipoise.ensemble.io import Ensemble, read_ensemble, read_trajectory
from equipoise.ensemble.validation import validate

ROOT = Path(__file__).resolve().parents[1]
SHARED_2K39 = ROOT.parent / "shared" / "data" / "ensembles" / "2k39_ubiquitin_116models.pdb.gz"
ROWS = (("bond_rmsd_A", "bond RMSD (Å)", "{:.4f}"), ("angle_rmsd_deg", "angle RMSD (deg)", "{:.2f}"),
        ("rama_outliers", "Rama outliers", "{:.2%}"), ("clashes_per_1000_atoms", "clashes / 1000 atoms", "{:.2f}"),
        ("chain_breaks", "chain breaks", "{:.0f}"), ("pairwise_rmsd_rel_error", "pairwise RMSD rel. error", "{:.3f}"),
        ("rmsf_pearson", "RMSF Pearson r", "{:.3f}"), ("precision", "precision (2 Å)", "{:.2f}"),
        ("recall", "recall (2 Å)", "{:.2f}"))


def _adk() -> tuple[str, str] | None:
    try:
        from MDAnalysisTests.datafiles import DCD, PSF
    except ImportError:
        return None
    return PSF, DCD


def _command(args: list[str], threads: int) -> float:
    """Run ``equipoise ARGS`` as a separate process; its wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "equipoise", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"equipoise {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def _judge(samples: Ensemble, held: Ensemble) -> dict:
    report = validate(samples, held)
    checks = report.gate["checks"]
    return {"values": {name: checks[name]["value"] for name in checks}, "passed": report.gate["passed"],
            "geometry_passed": report.gate["geometry_passed"],
            "distribution_passed": report.gate["distribution_passed"],
            "limits": {name: checks[name]["limit"] for name in checks}}


def bench(name: str, inputs: list[str], ensemble: Ensemble, work: Path, minutes: float, threads: int) -> dict:
    """Train, sample, baselines and gates of one ensemble: ``inputs`` are the train command's
    input arguments (a file, or a trajectory with ``--topology``), ``ensemble`` what they read."""
    run = work / name
    train_s = _command(["ensemble", "train", *inputs, "--minutes", str(minutes), "--out", str(run), "--quiet"],
                       threads)
    held = read_ensemble(run / "holdout.pdb", min_models=1)
    split = json.loads((run / "split.json").read_text())["proteins"][0]
    fit_on = ensemble.select(split["train"])
    trained = json.loads((run / "train.json").read_text())
    sets: dict[str, dict] = {}
    for n in (held.n_models, 100):
        out = run / f"samples_{n}.pdb"
        seconds = _command(["ensemble", "sample", str(run), "--n", str(n), "--seed", "1", "--out", str(out)], threads)
        internal = json.loads(out.with_name(out.name + ".json").read_text())
        sets[f"learned, {n}"] = {**_judge(read_ensemble(out), held), "command_s": seconds,
                                 "sample_s": internal["decode_seconds"] + internal["refine_seconds"]}
        for kind in ("pca", "internal"):
            sets[f"{kind}, {n}"] = _judge(run_baseline(fit_on, kind, n, seed=1).samples, held)
    return {"name": name, "n_models": ensemble.n_models, "n_res": ensemble.n_res, "n_train": len(split["train"]),
            "n_holdout": held.n_models, "train_command_s": train_s, "train_steps": trained["steps"],
            "collapse": trained["collapse"], "flags": [f["kind"] for f in trained["flags"]], "sets": sets}


def print_table(result: dict) -> None:
    print(f"\n== {result['name']}: {result['n_models']} models x {result['n_res']} residues; trained on "
          f"{result['n_train']}, judged against {result['n_holdout']} held-out models; training command "
          f"{result['train_command_s']:.0f} s, {result['train_steps']} steps; global latent "
          f"{result['collapse'].get('active_units', 0):.0f}/{result['collapse'].get('latent_dims', 0):.0f} active units; "
          f"flags: {', '.join(sorted(set(result['flags']))) or 'none'}")
    sets = result["sets"]
    names = list(sets)
    print(f"| {'check':26s} | " + " | ".join(f"{n:>14s}" for n in names) + " | limit |")
    any_set = sets[names[0]]
    for key, label, fmt in ROWS:
        if key not in any_set["values"]:
            continue
        cells = [fmt.format(sets[n]["values"][key]) for n in names]
        limit = any_set["limits"][key]
        print(f"| {label:26s} | " + " | ".join(f"{c:>14s}" for c in cells) + f" | {limit:.4g} |")
    print(f"| {'gate':26s} | " + " | ".join(f"{'passes' if sets[n]['passed'] else 'FAILS':>14s}" for n in names) + " | |")
    for n in names:
        if "sample_s" in sets[n]:
            print(f"{n}: sampling {sets[n]['sample_s']:.1f} s in the process, {sets[n]['command_s']:.1f} s for the "
                  f"whole command (bar 10 s for 100: ratio {sets[n]['sample_s'] / 10.0:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ensemble_gate")
    parser.add_argument("--only", default="2k39,adk", help="built-in ensembles to run (comma list; '' for none)")
    parser.add_argument("--ensemble", type=Path, action="append", default=[], help="more multi-model PDB/mmCIF files")
    parser.add_argument("--trajectory", nargs=2, action="append", default=[], metavar=("TOPOLOGY", "TRAJECTORY"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    args.work.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[str, list[str], Ensemble]] = []
    only = {s for s in args.only.split(",") if s}
    if "2k39" in only:
        if SHARED_2K39.is_file():
            sources.append(("2k39", [str(SHARED_2K39)], read_ensemble(SHARED_2K39)))
        else:
            print(f"skipped 2k39: {SHARED_2K39} not found")
    trajectories = [("", *t) for t in args.trajectory]
    if "adk" in only:
        adk = _adk()
        if adk is None:
            print("skipped adk: pip install MDAnalysisTests")
        else:
            trajectories.insert(0, ("adk", *adk))
    for name, topology, trajectory in trajectories:
        sources.append((name or Path(trajectory).name.split(".")[0], [str(trajectory), "--topology", str(topology)],
                        read_trajectory(topology, trajectory)))
    sources += [(p.name.split(".")[0], [str(p)], read_ensemble(p)) for p in args.ensemble]
    results = []
    for name, inputs, ensemble in sources:
        results.append(bench(name, inputs, ensemble, args.work, args.minutes, args.threads))
        print_table(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
