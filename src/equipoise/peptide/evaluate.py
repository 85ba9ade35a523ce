"""``evaluate``: Casanovo's metrics of an mzTab file against a labelled MGF, with plots.

Predictions are matched to labels by ``spectra_ref`` ``index=K`` (0-based position in the
labelled file). A labelled spectrum without a PSM row counts as not predicted. A prediction is
within the precursor tolerance when its calculated m/z is within ``precursor_tol_ppm`` of the
observed one after allowing 0 or 1 13C isotope (as Casanovo's beam search does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from equipoise.errors import InputError
from equipoise.peptide.io import read_spectra
from equipoise.peptide.metrics import SequencingMetrics, evaluate_predictions, precision_coverage, same_peptide
from equipoise.peptide.mztab import read_mztab
from equipoise.peptide.psm import PSM
from equipoise.peptide.vocab import C13_SPACING, DEFAULT_VOCABULARY, Vocabulary, ppm_error


def within_precursor_tolerance(psm: PSM, tol_ppm: float, isotopes: tuple[int, ...] = (0, 1)) -> bool:
    """|observed - calculated| <= tol_ppm for some isotope offset (observed minus n 13C / z)."""
    if psm.calc_mz is None or not psm.tokens:
        return False
    return any(abs(ppm_error(psm.exp_mz - n * C13_SPACING / psm.charge, psm.calc_mz)) <= tol_ppm
               for n in isotopes)


@dataclass
class EvaluationResult:
    """Metrics of one evaluation and the per-spectrum data behind the plots."""

    metrics: SequencingMetrics
    scores: np.ndarray
    correct: np.ndarray

    def summary(self) -> str:
        """The metrics table."""
        return self.metrics.summary()


def evaluate_psms(psms: list[PSM], truth: list[list[str]], *, precursor_tol_ppm: float = 20.0,
                  vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> EvaluationResult:
    """Metrics of ``psms`` (``spectrum_index`` = position in ``truth``)."""
    by_index: dict[int, PSM] = {}
    for p in psms:
        if not 0 <= p.spectrum_index < len(truth):
            raise InputError(f"PSM for spectrum index {p.spectrum_index}, but the labelled file has "
                             f"{len(truth)} spectra", field="spectra_ref")
        by_index[p.spectrum_index] = p
    preds = [by_index[i].tokens if i in by_index else None for i in range(len(truth))]
    scores = np.array([by_index[i].score if i in by_index and by_index[i].tokens else -np.inf
                       for i in range(len(truth))])
    ok = [i in by_index and within_precursor_tolerance(by_index[i], precursor_tol_ppm) for i in range(len(truth))]
    metrics = evaluate_predictions(truth, preds, scores, ok, vocabulary=vocabulary)
    correct = np.array([same_peptide(t, p, vocabulary) for t, p in zip(truth, preds)], dtype=bool)
    return EvaluationResult(metrics, scores, correct)


def evaluate_file(mztab: str | Path, truth_mgf: str | Path, *, precursor_tol_ppm: float = 20.0,
                  vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> EvaluationResult:
    """Read both files and evaluate; every spectrum of ``truth_mgf`` must carry ``SEQ=``."""
    spectra = read_spectra(truth_mgf, vocabulary=vocabulary).spectra
    unlabelled = [s.index for s in spectra if not s.tokens]
    if unlabelled:
        raise InputError(f"{len(unlabelled)} spectra have no SEQ= label (first: index {unlabelled[0]})",
                         path=truth_mgf, field="SEQ")
    return evaluate_psms(read_mztab(mztab, vocabulary), [s.tokens for s in spectra],
                         precursor_tol_ppm=precursor_tol_ppm, vocabulary=vocabulary)


def write_report(result: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """metrics.json, precision_coverage.png and by_length.png in ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder: {exc.strerror}", path=out) from None
    paths = [out / "metrics.json", out / "precision_coverage.png", out / "by_length.png"]
    paths[0].write_text(json.dumps(result.metrics.as_dict(), indent=2) + "\n")
    coverage, precision, area = precision_coverage(result.scores, result.correct)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(coverage, precision)
    ax.set(xlabel="coverage", ylabel="peptide precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-coverage, AUC {area:.3f}")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    lengths = sorted(result.metrics.by_length)
    bins = [result.metrics.by_length[k] for k in lengths]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(lengths))
    for offset, name in ((-0.27, "aa_precision"), (0.0, "aa_recall"), (0.27, "peptide_recall")):
        ax.bar(x + offset, [getattr(b, name) for b in bins], width=0.27, label=name.replace("_", " "))
    ax.set_xticks(x, [f"{k}\n(n={b.n_spectra})" for k, b in zip(lengths, bins)], fontsize=7)
    ax.set(xlabel="true peptide length", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return paths
