"""``equipoise xtal refine MODEL DATA --out DIR``: coordinates and B-factors against X-ray data.

Registration imports nothing heavy; the handler imports torch, gemmi and the refinement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from equipoise.xtal.geometry_cli import add_library_options

_EPILOG = """\
DIR gets refined.pdb and refined.cif (statistics in the header), maps.mtz (FWT/PHWT,
DELFWT/PHDELWT), summary.json ("start", "cycles", final r_work/r_free/bond_rmsd/angle_rmsd,
"twinning": L-test, <I^2>/<I>^2, twin laws with H-test/Britton fractions, verdict;
"twin_refinement" and each cycle's "twin" when a twin model is refined, --twin),
refine.log, plots/ (R per cycle, weights, geometry) and run/cycle_NN/{xyz,b}/ (the core's
record.jsonl, run.log, summary.json, plots of every stage). A killed run resumes with the same
command (--restart starts over). See docs/xtal.md.
"""


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--labin``, ``--free``, ``--resolution`` (reflection-file options)."""
    parser.add_argument("--labin", metavar="F,SIGF[,FREE]", help="columns to use (default: detected)")
    parser.add_argument("--free", type=int, metavar="N", help="flag value of the free set (default: detected)")
    parser.add_argument("--resolution", type=float, metavar="DMIN", help="high-resolution limit (Å)")


def _factors(text: str) -> tuple[float, ...]:
    """``--adp-screen`` value: comma-separated positive numbers."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,1,2, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"factors must be > 0, got {text!r}")
    return values


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``refine`` to the ``xtal`` sub-commands."""
    p = commands.add_parser("refine", help="refine coordinates and B-factors against X-ray data",
                            description="Refine MODEL against DATA (MTZ or SF-mmCIF): macro-cycles of "
                                        "scales/solvent, xyz (x-ray + geometry + non-bonded) and B "
                                        "(x-ray + ADP restraints), weights balanced per stage.",
                            epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="PDB or mmCIF model")
    p.add_argument("data", metavar="DATA", help="MTZ or SF-mmCIF reflections")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_data_options(p)
    add_library_options(p)
    p.add_argument("--cycles", type=int, default=5, help="macro-cycles (default 5)")
    p.add_argument("--xyz-steps", type=int, default=15, help="L-BFGS iterations of each xyz stage (default 15)")
    p.add_argument("--b-steps", type=int, default=10, help="L-BFGS iterations of each B stage (default 10)")
    p.add_argument("--no-b", action="store_true", help="refine coordinates only")
    p.add_argument("--adp-screen", type=_factors, default=None, metavar="F,F,...",
                   help="factors of the ADP restraint weight tried in the first cycle, the lowest R-free "
                        "kept (default 0.5,1,2; 1 turns the screen off)")
    p.add_argument("--occupancy", default="auto", choices=("auto", "off"),
                   help="auto (default): refine the occupancies of alternate conformers (each residue's "
                        "total kept) and of partially occupied residues, when the model has any; off: keep them")
    p.add_argument("--target", default="ml", choices=("ml", "ls"), help="x-ray target (default ml)")
    p.add_argument("--hydrogens", default="auto", choices=("auto", "strip", "keep", "riding", "add"),
                   help="auto (default): the model's hydrogens ride on their heavy atoms (removed, with a "
                        "note, when some cannot); strip: remove them; keep: refine them as atoms; riding: "
                        "as auto, but an error when some cannot ride; add: add riding hydrogens (no waters)")
    p.add_argument("--scheme", default="per-stage", choices=("per-stage", "joint-once"),
                   help="weights per stage (default) or the seed failure's joint-once scheme (comparison only)")
    p.add_argument("--twin", default="auto", choices=("auto", "on", "off"),
                   help="twin refinement: auto (default: when the statistics say twinned and a twin law "
                        "exists), on (every twin law), off (untwinned target; the twin fraction is only "
                        "fitted afterwards for the R-factors)")
    p.add_argument("--restart", action="store_true", help="ignore a previous run in DIR")
    p.add_argument("--plots", default="all", choices=("all", "cycles", "none"),
                   help="figures: per-cycle plots and the core's plots of every stage (all, default), "
                        "per-cycle plots only (cycles), or none")
    p.set_defaults(handler=_refine)


def _refine(args: argparse.Namespace) -> int:
    import torch

    from equipoise.core import plot_run
    from equipoise.errors import InputError
    from equipoise.xtal.refine import RefineOptions, refine, stats_line, write_outputs
    from equipoise.xtal.reflections import Reflections
    from equipoise.xtal.twinning import add_twin_model, choose_twin, twin_statistics

    out = Path(args.out)
    options = RefineOptions(cycles=args.cycles, xyz_steps=args.xyz_steps, b_steps=args.b_steps,
                            refine_b=not args.no_b, scheme=args.scheme, occupancy=args.occupancy,
                            **({} if args.adp_screen is None else {"adp_screen": args.adp_screen}))
    options.check()
    try:
        out.mkdir(parents=True, exist_ok=True)
        log_file = (out / "refine.log").open("a", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the output directory: {exc}", path=out, field="--out") from exc

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        log_file.flush()

    try:
        refl = Reflections.from_file(args.data, labin=args.labin, free=args.free, d_min=args.resolution)
        model, xray, restraints = _model_xray_restraints(args, refl, log)
        log(f"model {args.model}: {model.n_atoms} atoms")
        if model.u_aniso is not None:
            n_aniso = int((model.u_aniso.abs().sum(-1) > 0).sum())
            log(f"note: {n_aniso} anisotropic atoms (ANISOU) are refined isotropically, with their B; "
                "their U is rescaled by the refined B on output")
        log("data " + refl.describe())
        for note in [*refl.notes, *xray.notes]:
            log(f"note: {note}")
        twin = twin_statistics(refl)
        log(twin.summary())
        log(twin.verdict())
        choice = choose_twin(args.twin, twin, refl.cell, refl.spacegroup)
        if choice is not None:
            log(f"twin refinement ({choice.reason}): law(s) {', '.join(choice.laws)}, starting fraction(s) "
                f"{', '.join(f'{a:.3f}' for a in choice.alphas)}")
            for note in xray.set_twin(choice.laws, choice.rotations, choice.alphas):
                log(f"note: {note}")
        else:
            log(f"no twin refinement (--twin {args.twin})")
        if restraints.unrestrained:
            log("refined without restraints (--unrestrained): " + ", ".join(restraints.unrestrained))
        for note in restraints.notes:
            log(f"note: {note}")
        counts = ", ".join(f"{k} {restraints.count(k)}" for k in restraints.sets)
        log(f"restraints: {counts}")
        result = refine(model, restraints, xray, options=options, run_dir=out / "run", log=log,
                        progress="auto", resume=not args.restart)
        fit = None
        if choice is None:
            with torch.no_grad():
                fit = add_twin_model(twin, refl, xray.f_model(xray.fcalc(result.xyz, result.b_iso, result.occ)).abs())
        else:
            last = result.final.twin or {}
            result.twin_refinement = {"reason": choice.reason, "laws": choice.laws, "start": choice.alphas,
                                      "alphas": last.get("alphas"), "last_fit": last.get("reason"),
                                      "r_work": result.final.r_work, "r_free": result.final.r_free,
                                      "r_work_untwinned": last.get("r_work_untwinned"),
                                      "r_free_untwinned": last.get("r_free_untwinned"),
                                      "n_missing_mates": xray.twin.n_missing,
                                      "n_moved_from_work": xray.n_moved_from_work,
                                      "target": "least squares on twinned amplitudes (per-bin weights)"}
        result.twinning = twin.as_dict()
        paths = write_outputs(result, model, xray, out, write_maps=xray.write_maps, plots=args.plots != "none")
        if args.plots == "all":
            for stage_dir in sorted((out / "run").glob("cycle_*/*")):
                if (stage_dir / "record.jsonl").is_file():
                    plot_run(stage_dir)
        log(result.summary())
        if choice is not None:
            log("refined with a twin model: " + stats_line(result.final).split(": ", 1)[1])
        elif twin.twinned:
            log(twin.verdict())
        if fit is not None:
            log("refined model " + fit.summary())
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    finally:
        log_file.close()
    return 0


def _model_xray_restraints(args: argparse.Namespace, refl, log):
    """The model with its hydrogens as ``--hydrogens`` asks, its x-ray model and its restraints.

    ``auto`` (the default, as phenix.refine and REFMAC use the hydrogens a model has): the model's
    hydrogens ride on their parents; when some cannot (no bond to a heavy atom in the library,
    e.g. other names), all are removed and the log says why. ``riding``: the same, but an error.
    """
    import gemmi

    from equipoise.errors import InputError
    from equipoise.xtal.hydrogens import RidingHydrogens, add_hydrogens
    from equipoise.xtal.model import AtomModel
    from equipoise.xtal.restraints import Restraints
    from equipoise.xtal.xray import XrayModel

    def build(model: AtomModel):
        xray = XrayModel(model, refl, target=args.target)
        restraints = Restraints.build(model, monlib=args.monlib, ligands=args.ligand,
                                      unrestrained=args.unrestrained)
        if model.hydrogens == "riding" and bool(restraints.hydrogen.any()):
            RidingHydrogens.build(model, restraints)           # an error when some cannot ride
        return model, xray, restraints

    if args.hydrogens != "auto":
        model = AtomModel.from_file(args.model, hydrogens=args.hydrogens)
        if args.hydrogens == "add":
            model = add_hydrogens(model, monlib=args.monlib, ligands=args.ligand)
        model, xray, restraints = build(model)
    else:
        model = AtomModel.from_file(args.model, hydrogens="riding")
        try:
            model, xray, restraints = build(model)
        except InputError as exc:
            if not any(gemmi.Element(el).is_hydrogen for el in model.elements):
                raise
            log(f"note: {exc}; all hydrogens removed (--hydrogens auto; with the monomer library's "
                "names they would ride)")
            model, xray, restraints = build(AtomModel.from_file(args.model, hydrogens="strip"))
    n_h = int(restraints.hydrogen.sum())
    if n_h and model.hydrogens == "riding":
        log(f"{n_h} hydrogens ride on their heavy atoms (--hydrogens {args.hydrogens})")
    return model, xray, restraints
