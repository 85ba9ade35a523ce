"""Score models on real annotated spectra that are not in ``../shared`` (docs/peptide.md).

Casanovo's source distribution on PyPI (``casanovo==5.2.1``, Apache-2.0) ships
``sample_data/sample_preprocessed_spectra.mgf``: 128 annotated HCD spectra (mouse, MassIVE), of
which 64 are the ones in ``../shared/data/peptide/real_annotated_64.mgf``. This script fetches
the sdist with ``pip download`` (a package registry; nothing is committed to the repo), keeps the
spectra that are not in the shared file (same precursor m/z to 1e-4, charge and peptide) and
reports, on those, Casanovo's metrics of each model (rescored ``sequence`` default and best beam),
of the spectrum-graph baseline, and of each model at the baseline's coverage. The spectra are
never used for training or tuning.

Usage: python benchmarks/peptide_real_extra.py [--model M ...] [--out runs/peptide_real_extra] [--threads 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import torch

from equipoise.peptide.baseline import run_baseline
from equipoise.peptide.decoding import DecodingConfig, predict
from equipoise.peptide.io import Spectrum, read_spectra, write_mgf
from equipoise.peptide.metrics import evaluate_predictions, top_scored
from equipoise.peptide.model import load_model
from equipoise.peptide.rescoring import RescoringConfig
from equipoise.peptide.sequence_cli import DEFAULT_MODEL

PACKAGE = "casanovo==5.2.1"
MEMBER = "casanovo-5.2.1/sample_data/sample_preprocessed_spectra.mgf"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "peptide" / "real_annotated_64.mgf"


def fetch_sample(folder: Path) -> Path:
    """Casanovo's sample MGF, from its sdist (downloaded once into ``folder``)."""
    target = folder / "casanovo_sample.mgf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
                    "-d", str(folder)], check=True, capture_output=True)
    with tarfile.open(next(folder.glob("casanovo-*.tar.gz"))) as archive:
        target.write_bytes(archive.extractfile(MEMBER).read())
    return target


def _key(s: Spectrum) -> tuple:
    return round(s.precursor_mz, 4), s.charge, tuple(s.tokens or [])


def extra_spectra(sample: Path, shared: Sequence[Spectrum]) -> list[Spectrum]:
    """The labelled spectra of ``sample`` that are not among ``shared``."""
    known = {_key(s) for s in shared}
    return [s for s in read_spectra(sample).spectra if s.tokens and _key(s) not in known]


def row(name: str, m) -> str:
    return (f"{name:40s} AA prec {m.aa_precision:.3f}  AA rec {m.aa_recall:.3f}  pep rec {m.peptide_recall:.3f}  "
            f"AUC {m.auc:.3f}  ({m.n_predicted} predicted)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="*", default=[str(DEFAULT_MODEL)], help="model files (default: shipped)")
    parser.add_argument("--out", default="runs/peptide_real_extra")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    shared = read_spectra(SHARED).spectra if SHARED.is_file() else []
    spectra = extra_spectra(fetch_sample(out), shared)
    write_mgf(out / "real_extra.mgf", spectra)
    truth = [s.tokens for s in spectra]
    peptides = {tuple(s.tokens) for s in shared}
    print(f"{len(spectra)} real spectra not in {SHARED.name} ({sum(tuple(t) in peptides for t in truth)} of their "
          f"peptides also occur there); written to {out / 'real_extra.mgf'}")
    psms = run_baseline(spectra)
    base = evaluate_predictions(truth, [p.tokens for p in psms], [p.score for p in psms], by_length=False)
    print(row("spectrum-graph baseline", base))
    for path in args.model:
        model = load_model(path)
        print(f"--- {path}")
        for name, rescoring in (("rescored (sequence default)", RescoringConfig()), ("best beam", None)):
            found = predict(model, spectra, DecodingConfig(beams=5), rescoring=rescoring)
            predictions, scores = [p.tokens or None for p in found], [p.score for p in found]
            print(row(name, evaluate_predictions(truth, predictions, scores, by_length=False)))
            if rescoring is not None:
                print(row(f"{name}, its {base.n_predicted} best", evaluate_predictions(
                    truth, top_scored(predictions, scores, base.n_predicted), scores, by_length=False)))


if __name__ == "__main__":
    main()
