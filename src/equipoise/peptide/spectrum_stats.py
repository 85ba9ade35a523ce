"""Annotation statistics of labelled spectra: how much of a spectrum its peptide explains.

For each spectrum with a ``SEQ=`` label, against the raw peaks (no preprocessing):

- ``fraction_present``: fraction of the theoretical b and y 1+ ions (all cleavage sites) with an
  observed peak within ``tol_ppm``;
- ``intensity_explained``: fraction of the total peak intensity in peaks matched to b/y 1+ ions;
- ``fragment_errors_ppm``: (observed - theoretical) / theoretical of each matched ion (the most
  intense peak in the window);
- ``precursor_error_ppm``: observed precursor m/z against the label's, after removing the nearest
  13C isotope offset (0 or 1), as instruments often pick the second isotope.

These are the numbers the synthetic noise model is calibrated to (``equipoise.peptide.synth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from equipoise.peptide.fragments import fragment_mz
from equipoise.peptide.io import Spectrum
from equipoise.peptide.vocab import C13_SPACING, DEFAULT_VOCABULARY, Vocabulary, ppm_error


@dataclass
class SpectrumStats:
    """Per-spectrum statistics (arrays of shape (n_spectra,)) and all matched fragment errors."""

    fraction_present: np.ndarray
    intensity_explained: np.ndarray
    precursor_error_ppm: np.ndarray
    fragment_errors_ppm: np.ndarray
    n_peaks: np.ndarray

    def summary_dict(self) -> dict[str, float]:
        """Medians, 5th/95th percentiles and the fragment-error standard deviation."""
        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) if a.size else float("nan")

        out: dict[str, float] = {}
        for name in ("fraction_present", "intensity_explained", "precursor_error_ppm", "n_peaks"):
            a = getattr(self, name)
            out[f"{name}_median"] = pct(a, 50)
            out[f"{name}_min"] = float(a.min()) if a.size else float("nan")
            out[f"{name}_p5"], out[f"{name}_p95"] = pct(a, 5), pct(a, 95)
            out[f"{name}_max"] = float(a.max()) if a.size else float("nan")
        e = self.fragment_errors_ppm
        out["fragment_error_sd_ppm"] = float(e.std()) if e.size else float("nan")
        out["fragment_error_mean_ppm"] = float(e.mean()) if e.size else float("nan")
        return out


def spectrum_stats(spectra: Sequence[Spectrum], *, tol_ppm: float = 20.0,
                   vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> SpectrumStats:
    """Statistics of the labelled spectra in ``spectra`` (unlabelled ones are ignored)."""
    present, explained, precursor, errors, peaks = [], [], [], [], []
    for s in spectra:
        if not s.tokens:
            continue
        masses = torch.tensor(vocabulary.residue_masses(s.tokens), dtype=torch.float64)
        theory, _ = fragment_mz(masses, ion_types=("b", "y"), charges=(1,))
        theo = theory.reshape(-1).numpy()
        mz, inten = s.mz, s.intensity
        lo = np.searchsorted(mz, theo * (1 - tol_ppm * 1e-6), side="left")
        hi = np.searchsorted(mz, theo * (1 + tol_ppm * 1e-6), side="right")
        hit = hi > lo
        matched_peaks = np.zeros(mz.size, dtype=bool)
        for k in np.flatnonzero(hit):
            window = np.arange(lo[k], hi[k])
            best = window[np.argmax(inten[window])]
            matched_peaks[window] = True
            errors.append(ppm_error(mz[best], theo[k]))
        present.append(hit.mean() if theo.size else 0.0)
        total = inten.sum()
        explained.append(inten[matched_peaks].sum() / total if total > 0 else 0.0)
        calc = vocabulary.precursor_mz(s.tokens, s.charge)
        offsets = [ppm_error(s.precursor_mz - n * C13_SPACING / s.charge, calc) for n in (0, 1)]
        precursor.append(min(offsets, key=abs))
        peaks.append(mz.size)
    return SpectrumStats(np.array(present), np.array(explained), np.array(precursor),
                         np.array(errors), np.array(peaks))


def plot_comparison(synthetic: SpectrumStats, real: SpectrumStats, path: str | Path,
                    labels: tuple[str, str] = ("synthetic", "real")) -> Path:
    """Histograms (density) of the four statistics, synthetic over real, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("fraction_present", "b/y 1+ ions present (fraction)", np.linspace(0, 1, 21)),
              ("intensity_explained", "intensity explained by b/y 1+", np.linspace(0, 1, 21)),
              ("fragment_errors_ppm", "fragment m/z error (ppm)", np.linspace(-20, 20, 41)),
              ("precursor_error_ppm", "precursor m/z error (ppm)", np.linspace(-10, 10, 41)))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (name, title, bins) in zip(axes, panels):
        for stats, label, style in ((synthetic, labels[0], "stepfilled"), (real, labels[1], "step")):
            values = getattr(stats, name)
            ax.hist(values, bins=bins, density=True, histtype=style, alpha=0.5 if style == "stepfilled" else 1.0,
                    linewidth=1.5, label=f"{label} (median {np.median(values):.3g})")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
