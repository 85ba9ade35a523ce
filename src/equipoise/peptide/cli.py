"""``equipoise peptide ...``: de novo peptide sequencing from MS/MS spectra.

Sub-commands here: ``synth`` (labelled synthetic spectra, optional comparison with real ones),
``evaluate`` (Casanovo's metrics of an mzTab against a labelled MGF, with plots) and ``baseline``
(no-learning spectrum-graph sequencing to mzTab). ``sequence`` and ``train`` register from their
own modules (``register_sequence(commands)``, ``register_train(commands)``).

Registration imports nothing heavy (no torch), so ``equipoise --help`` stays fast; the handlers
import what they need.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``peptide`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("peptide", help="de novo peptide sequencing from MS/MS spectra",
                                   description="de novo peptide sequencing from MS/MS spectra")
    commands = parser.add_subparsers(dest="peptide_command", metavar="COMMAND")
    commands.required = True

    synth = commands.add_parser("synth", help="write labelled synthetic spectra (MGF with SEQ=)",
                                description="Random tryptic-like peptides (never from a proteome) and "
                                "spectra from the calibrated noise model; see docs/peptide.md.")
    synth.add_argument("--n", type=int, required=True, help="number of spectra")
    synth.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    synth.add_argument("--out", required=True, metavar="OUT.mgf", help="output MGF")
    synth.add_argument("--compare", metavar="REAL.mgf", help="labelled real spectra: write OUT_vs_real.png "
                       "and both files' annotation statistics")
    synth.add_argument("--quiet", action="store_true", help="no progress output")
    synth.set_defaults(handler=_synth)

    evaluate = commands.add_parser("evaluate", help="Casanovo's metrics of an mzTab against labelled spectra",
                                   description="Amino-acid precision/recall, peptide recall (I = L), "
                                   "precision-coverage AUC, fraction within the precursor tolerance, by "
                                   "peptide length; writes metrics.json and plots.")
    evaluate.add_argument("mztab", metavar="RESULTS.mztab")
    evaluate.add_argument("--truth", required=True, metavar="LABELLED.mgf", help="the spectra with SEQ= labels")
    evaluate.add_argument("--out", metavar="DIR", help="report folder (default RESULTS_eval beside the mzTab)")
    evaluate.add_argument("--precursor-tol", default="20ppm", help="precursor tolerance, e.g. 20ppm (default)")
    evaluate.set_defaults(handler=_evaluate)

    baseline = commands.add_parser("baseline", help="no-learning spectrum-graph de novo sequencing",
                                   description="Longest path through the spectrum graph (peaks as b or y "
                                   "ions, edges of one or two residues within 0.02 Da).")
    baseline.add_argument("spectra", metavar="SPECTRA.mgf|.mzML")
    baseline.add_argument("--out", required=True, metavar="OUT.mztab")
    baseline.add_argument("--csv", metavar="OUT.csv", help="also write the CSV table")
    baseline.add_argument("--skip-bad", action="store_true", help="skip malformed spectra with a warning")
    baseline.add_argument("--quiet", action="store_true", help="no progress output")
    baseline.set_defaults(handler=_baseline)

    from equipoise.peptide.sequence_cli import register_sequence
    from equipoise.peptide.train_cli import register_train

    register_sequence(commands)
    register_train(commands)


def _progress(total: int, quiet: bool, log_path: Path) -> Any:
    """core's Progress: a bar (or plain lines) on the console and a readable log at ``log_path``."""
    from equipoise.core.progress import Progress

    return Progress("quiet" if quiet else "auto", total, 0, log_path)


def _write_json(path: Path, value: dict) -> None:
    from equipoise.core.record import dumps
    from equipoise.errors import InputError

    try:
        path.write_text(dumps(value) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror}", path=path) from None


def parse_tolerance_ppm(text: str) -> float:
    """'20ppm' or '20' -> 20.0 (ppm); InputError otherwise."""
    from equipoise.errors import InputError

    value = text.strip().lower().removesuffix("ppm")
    try:
        tol = float(value)
    except ValueError:
        raise InputError(f"precursor tolerance {text!r}: expected ppm, e.g. 20ppm", field="--precursor-tol") from None
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"precursor tolerance {text!r} must be positive", field="--precursor-tol")
    return tol


def _synth(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from equipoise.errors import InputError
    from equipoise.peptide.io import read_spectra, write_mgf
    from equipoise.peptide.spectrum_stats import ION_FAMILIES, plot_comparison, spectrum_stats
    from equipoise.peptide.synth import SynthConfig, synthesize

    if args.n < 1:
        raise InputError(f"--n {args.n}: expected at least 1 spectrum", field="--n")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError("the output folder does not exist", path=out.parent, field="--out")
    real = read_spectra(args.compare).spectra if args.compare else None
    config = SynthConfig()
    progress = _progress(args.n, args.quiet, out.with_suffix(".log"))
    progress.event(f"synth: {args.n} spectra, seed {args.seed}, -> {out}")
    start = time.perf_counter()
    try:
        spectra = synthesize(args.n, args.seed, config,
                             progress=lambda done: progress.step(done, "synth", done - 1, args.n))
        generate_s = time.perf_counter() - start
        write_mgf(out, spectra)
        progress.event(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    finally:
        progress.close()
    record: dict[str, Any] = {"n": args.n, "seed": args.seed, "out": str(out), "config": asdict(config),
                              "generate_s": generate_s, "spectra_per_s": args.n / generate_s,
                              "total_s": time.perf_counter() - start}
    if real is not None:
        syn_stats, real_stats = spectrum_stats(spectra[:5000]), spectrum_stats(real)
        figure = plot_comparison(syn_stats, real_stats, out.with_name(out.stem + "_vs_real.png"))
        record |= {"synthetic_stats": syn_stats.summary_dict(), "real_stats": real_stats.summary_dict(),
                   "real": str(args.compare), "figure": str(figure)}
        if not args.quiet:
            print(f"{'statistic':34s} {'synthetic':>10s} {'real':>10s}")
            shares = [f"share_{family}_mean" for family in ION_FAMILIES]
            for key in ("fraction_present_median", "intensity_explained_median", "fragment_error_sd_ppm",
                        "precursor_error_ppm_min", "precursor_error_ppm_max", *shares):
                print(f"{key:34s} {record['synthetic_stats'][key]:10.3f} {record['real_stats'][key]:10.3f}")
    _write_json(out.with_suffix(".json"), record)
    if not args.quiet:
        print(f"wrote {out} ({args.n} spectra, {record['spectra_per_s']:.0f} spectra/s) and {out.with_suffix('.json')}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from equipoise.peptide.evaluate import evaluate_file, write_report

    tol = parse_tolerance_ppm(args.precursor_tol)
    result = evaluate_file(args.mztab, args.truth, precursor_tol_ppm=tol)
    out = Path(args.out) if args.out else Path(args.mztab).with_name(Path(args.mztab).stem + "_eval")
    paths = write_report(result, out)
    print(result.summary())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from equipoise.errors import InputError
    from equipoise.peptide.baseline import BaselineConfig, run_baseline
    from equipoise.peptide.io import read_spectra
    from equipoise.peptide.mztab import write_csv, write_mztab

    loaded = read_spectra(args.spectra, skip_bad=args.skip_bad)
    config = BaselineConfig()
    n = len(loaded.spectra)
    out = Path(args.out)
    for path, flag in ((out, "--out"), (Path(args.csv) if args.csv else out, "--csv")):
        if not path.parent.is_dir():
            raise InputError("the output folder does not exist", path=path.parent, field=flag)
    progress = _progress(n, args.quiet, out.with_suffix(".log"))
    progress.event(f"baseline: {n} spectra from {args.spectra} ({len(loaded.skipped)} skipped)")
    for skipped in loaded.skipped:
        progress.event(f"skipped spectrum {skipped.index}: {skipped.reason}")
    start = time.perf_counter()
    try:
        psms = run_baseline(loaded.spectra, config=config,
                            progress=lambda done: progress.step(done, "baseline", done - 1, n))
        progress.event(f"{sum(1 for p in psms if p.tokens)} of {n} spectra sequenced")
    finally:
        progress.close()
    elapsed = time.perf_counter() - start
    settings = {"method": "spectrum-graph baseline", **asdict(config)}
    write_mztab(args.out, psms, ms_run=args.spectra, config=settings)
    if args.csv:
        write_csv(args.csv, psms)
    _write_json(out.with_suffix(".json"), {
        "spectra": str(args.spectra), "out": str(out), "config": settings, "n_spectra": n,
        "n_predicted": sum(1 for p in psms if p.tokens), "seconds": elapsed, "spectra_per_s": n / elapsed,
        "skipped": [{"index": s.index, "title": s.title, "reason": s.reason} for s in loaded.skipped]})
    if not args.quiet:
        print(f"wrote {out}: {n} spectra, {sum(1 for p in psms if p.tokens)} sequenced, "
              f"{len(loaded.skipped)} skipped, {n / elapsed:.1f} spectra/s")
    return 0
