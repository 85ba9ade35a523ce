"""``equipoise ensemble ...``: protein backbone ensembles: validation, baselines, a generative model.

``validate SAMPLES [--reference ENSEMBLE] [--json report.json] [--plots DIR]``: geometry gate and,
with a reference, the distribution comparison (docs/ensemble.md, "Validation metrics").
``baseline ENSEMBLE --kind pca|internal --n 100 --out base.pdb``: a baseline ensemble.
``train`` and ``sample`` are registered by ``train_cli.register_train`` / ``sample_cli.register_sample``.

Registration imports nothing heavy (no torch, no gemmi), so ``equipoise --help`` stays fast; the
handlers import what they need.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

#: (module, registration function) of the model's commands, registered when the module exists
_EXTRA_COMMANDS = (("equipoise.ensemble.train_cli", "register_train"),
                   ("equipoise.ensemble.sample_cli", "register_sample"))

_VALIDATE_EPILOG = """\
Prints the geometry gate (bond and angle RMSD against Engh & Huber, Ramachandran outliers, clashes
per 1000 atoms, chain breaks) and, with --reference, the distribution comparison (mean pairwise
RMSD, RMSF Pearson r, precision and recall at 2 Å, CA-CA distance W1/JS, W1 on the reference's
PC1/PC2). --json writes every number; plots go to --plots (default: beside the JSON, in
<json stem>_plots). Exit status 0 when the gate passes, 1 when it fails, 2 for bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ensemble`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("ensemble", help="protein backbone ensembles: validation, baselines, a generative model", description="protein backbone ensembles: validation, baselines, a generative model")
    commands = parser.add_subparsers(dest="ensemble_command", metavar="COMMAND")
    commands.required = True
    val = commands.add_parser("validate", help="geometry gate and distribution comparison of an ensemble",
                              description="Validate a multi-model PDB/mmCIF ensemble.", epilog=_VALIDATE_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    val.add_argument("samples", metavar="SAMPLES", help="multi-model PDB or mmCIF file (.gz allowed)")
    val.add_argument("--reference", metavar="ENSEMBLE", help="reference ensemble (e.g. held-out models)")
    val.add_argument("--chain", default=None, help="chain to read in both files (default: the first)")
    val.add_argument("--json", metavar="FILE", help="write the report as JSON")
    val.add_argument("--plots", metavar="DIR", help="folder for the PNG figures")
    val.add_argument("--threshold", type=float, default=2.0, help="precision/recall RMSD threshold, Å (default 2)")
    val.add_argument("--quiet", action="store_true", help="no progress lines")
    val.set_defaults(handler=_validate)
    base = commands.add_parser("baseline", help="sample a baseline ensemble (PCA or internal-coordinate Gaussian)",
                               description="Fit a baseline generator to an ensemble and write samples.")
    base.add_argument("ensemble", metavar="ENSEMBLE", help="multi-model PDB or mmCIF file (.gz allowed)")
    base.add_argument("--kind", required=True, choices=("pca", "internal"), help="baseline kind")
    base.add_argument("--n", type=int, default=100, help="conformers to draw (default 100)")
    base.add_argument("--out", required=True, metavar="FILE", help="output multi-model .pdb or .cif")
    base.add_argument("--chain", default=None, help="chain to read (default: the first)")
    base.add_argument("--holdout", type=float, default=0.0,
                      help="fit on a seeded (1 - holdout) share of the models, the split of `ensemble train` "
                           "(default 0: all); the held-out models go to OUT's stem + _holdout")
    base.add_argument("--seed", type=int, default=1, help="seed of the split and the draws (default 1)")
    base.add_argument("--quiet", action="store_true", help="no progress lines")
    base.set_defaults(handler=_baseline)
    for module, function in _EXTRA_COMMANDS:
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), function)(commands)


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from equipoise.ensemble.io import read_ensemble
    from equipoise.ensemble.validation import validate, write_json, write_plots

    progress = _progress(args, 4)
    samples = read_ensemble(args.samples, chain=args.chain)
    progress.event(f"read {args.samples}: {samples.n_models} models x {samples.n_res} residues, chain {samples.chain_id}")
    reference = read_ensemble(args.reference, chain=args.chain) if args.reference else None
    if reference is not None:
        progress.event(f"read {args.reference}: {reference.n_models} models (reference)")
    report = validate(samples, reference, threshold=args.threshold)
    progress.event("geometry" + (" and distribution comparison" if reference is not None else "") + " done")
    print(report.summary())
    plots = args.plots
    if plots is None and args.json:
        json_path = Path(args.json)
        plots = json_path.with_name(json_path.stem + "_plots")
    if args.json:
        print(write_json(report, args.json))
    if plots is not None:
        for path in write_plots(report, plots):
            print(path)
    progress.close()
    return 0 if report.gate["passed"] else 1


def _progress(args: argparse.Namespace, total: int):
    """Progress lines on the console (core's Progress, events only: these commands are not fits)."""
    from equipoise.core.progress import Progress

    return Progress("quiet" if args.quiet else "plain", total=total, done=0, log_path=None)


def _baseline(args: argparse.Namespace) -> int:
    from pathlib import Path

    from equipoise.ensemble.baselines import run_baseline
    from equipoise.ensemble.io import read_ensemble, write_ensemble
    from equipoise.ensemble.train import split_models

    from equipoise.errors import InputError

    if not 0 <= args.holdout < 1:
        raise InputError(f"must be in [0, 1), got {args.holdout}", field="--holdout")
    progress = _progress(args, 2)
    ensemble = read_ensemble(args.ensemble, chain=args.chain)
    progress.event(f"read {args.ensemble}: {ensemble.n_models} models x {ensemble.n_res} residues")
    out = Path(args.out)
    fit_on = ensemble
    if args.holdout:
        train_idx, holdout_idx = split_models(ensemble.n_models, args.holdout, args.seed)
        fit_on = ensemble.select(train_idx)
        held = out.with_name(out.name.split(".")[0] + "_holdout" + "".join(out.suffixes))
        print(write_ensemble(ensemble.select(holdout_idx), held))
    result = run_baseline(fit_on, args.kind, args.n, args.seed)
    progress.event(result.summary())
    print(write_ensemble(result.samples, out))
    progress.close()
    return 0
