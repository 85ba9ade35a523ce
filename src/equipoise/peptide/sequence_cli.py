"""``equipoise peptide sequence SPECTRA.mgf|.mzML [--model M] [--beams 5] [--precursor-tol 20ppm]
--out results.mztab [--csv]``: de novo sequencing with the shipped (or a given) model.

Thin layer over :func:`equipoise.peptide.decoding.predict`; registration imports nothing heavy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: the shipped default model (package data), trained by the recipe in recipes/default.toml
DEFAULT_MODEL = Path(__file__).with_name("models") / "default.pt"


def register_sequence(commands: argparse._SubParsersAction) -> None:
    """Add the ``sequence`` action to the ``peptide`` sub-parser ``commands``."""
    parser = commands.add_parser(
        "sequence", help="de novo sequencing of MS/MS spectra to mzTab",
        description="Predict the peptide of each spectrum with the transformer model and a precursor-mass-"
                    "constrained beam search; writes one PSM per spectrum to mzTab 1.0 (and CSV).")
    parser.add_argument("spectra", metavar="SPECTRA.mgf|.mzML")
    parser.add_argument("--out", required=True, metavar="RESULTS.mztab", help="mzTab file to write")
    parser.add_argument("--model", metavar="MODEL.pt", help="model file (default: the shipped model)")
    parser.add_argument("--beams", type=int, default=5, help="beam width (default 5)")
    parser.add_argument("--precursor-tol", default="20ppm", help="precursor tolerance, e.g. 20ppm (default)")
    parser.add_argument("--no-rescore", action="store_true",
                        help="report the best beam instead of rescoring beam and spectrum-graph candidates with "
                             "their fragment-ion evidence")
    parser.add_argument("--csv", nargs="?", const="", metavar="OUT.csv",
                        help="also write a CSV (default: RESULTS.csv beside the mzTab)")
    parser.add_argument("--batch-size", type=int, default=64, help="spectra per batch (default 64)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: all cores)")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed spectra with a warning")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_sequence)


def _sequence(args: argparse.Namespace) -> int:
    import os
    import time

    import torch

    from equipoise.errors import InputError
    from equipoise.peptide.cli import parse_tolerance_ppm
    from equipoise.peptide.decoding import DecodingConfig, predict
    from equipoise.peptide.io import read_spectra
    from equipoise.peptide.model import load_model
    from equipoise.peptide.mztab import write_csv, write_mztab
    from equipoise.peptide.rescoring import FEATURES, RescoringConfig

    tol = parse_tolerance_ppm(args.precursor_tol)
    if args.batch_size < 1:
        raise InputError(f"must be >= 1, got {args.batch_size}", field="--batch-size")
    config = DecodingConfig(beams=args.beams, precursor_tol_ppm=tol)
    rescoring = None if args.no_rescore else RescoringConfig()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    model = load_model(model_path)
    loaded = read_spectra(args.spectra, skip_bad=args.skip_bad, vocabulary=model.vocab)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError("the output folder does not exist", path=out.parent)
    spectra = loaded.spectra
    started = time.perf_counter()
    with _Bar(len(spectra), args.quiet) as bar:
        psms = predict(model, spectra, config, args.batch_size, progress=bar.update, rescoring=rescoring)
    elapsed = time.perf_counter() - started
    settings = {"model": str(model_path), "beams": config.beams, "precursor_tol_ppm": tol,
                "isotopes": list(config.isotopes), "rescoring": "off" if rescoring is None else
                ", ".join(f"{name} {w:g}" for name, w in zip(FEATURES, rescoring.weights))}
    write_mztab(out, psms, ms_run=args.spectra, config=settings)
    written = [out]
    if args.csv is not None:
        written.append(write_csv(Path(args.csv) if args.csv else out.with_suffix(".csv"), psms))
    within = sum(1 for p in psms if p.tokens and p.score >= 0)
    print(f"{len(psms)} spectra in {elapsed:.1f} s ({len(psms) / max(elapsed, 1e-9):.1f} spectra/s), "
          f"{within} within {tol:g} ppm; {len(loaded.skipped)} skipped; wrote {', '.join(map(str, written))}")
    return 0


class _Bar:
    """A rich progress bar with spectra per second (silent when ``quiet`` or not a terminal)."""

    def __init__(self, total: int, quiet: bool) -> None:
        import sys

        self.total, self.bar = total, None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, \
                TimeRemainingColumn

            self.bar = Progress(TextColumn("sequence"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                TextColumn("{task.fields[rate]}"),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("sequence", total=total, rate="")
        self.started = None

    def __enter__(self) -> "_Bar":
        import time

        self.started = time.perf_counter()
        if self.bar is not None:
            self.bar.start()
        return self

    def update(self, done: int) -> None:
        import time

        if self.bar is not None:
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, completed=done, rate=f"{rate:.1f} spectra/s")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
