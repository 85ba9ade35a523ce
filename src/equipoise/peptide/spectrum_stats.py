"""Annotation statistics of labelled spectra: how much of a spectrum its peptide explains.

For each spectrum with a ``SEQ=`` label, against the raw peaks (no preprocessing):

- ``fraction_present``: fraction of the theoretical b and y 1+ ions (all cleavage sites) with an
  observed peak within ``tol_ppm``;
- ``intensity_explained``: fraction of the total peak intensity in peaks matched to b/y 1+ ions;
- ``fragment_errors_ppm``: (observed - theoretical) / theoretical of each matched ion (the most
  intense peak in the window);
- ``precursor_error_ppm``: observed precursor m/z against the label's, after removing the nearest
  13C isotope offset (0 or 1), as instruments often pick the second isotope;
- ``family_shares``: fraction of the total intensity in peaks of each ion family of
  :data:`ION_FAMILIES`, each peak counted once, for the first family it matches (Papayannopoulos
  1995, Mass Spectrom Rev 14:49, for the families of peptide fragment ions).

These are the numbers the synthetic noise model is calibrated to (``equipoise.peptide.synth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from equipoise.peptide.fragments import SECONDARY_IONS, fragment_mz, immonium_mz, internal_fragments
from equipoise.peptide.io import Spectrum
from equipoise.peptide.vocab import (C13_SPACING, CO_MASS, DEFAULT_VOCABULARY, H2O_MASS, NH3_MASS, PROTON_MASS,
                                     Vocabulary, ppm_error)

#: ion families of :func:`family_masses`, in the order a peak is assigned to them; "other" is the rest
ION_FAMILIES = ("b/y 1+", "b/y 2+", "a and losses", "immonium", "internal", "precursor", "other")
#: longest internal fragment counted (residues)
INTERNAL_MAX_LENGTH = 7


@dataclass
class SpectrumStats:
    """Per-spectrum statistics (arrays of shape (n_spectra,)) and all matched fragment errors."""

    fraction_present: np.ndarray
    intensity_explained: np.ndarray
    precursor_error_ppm: np.ndarray
    fragment_errors_ppm: np.ndarray
    n_peaks: np.ndarray
    family_shares: dict[str, np.ndarray] | None = None

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
        for family, shares in (self.family_shares or {}).items():
            out[f"share_{family}_mean"] = float(shares.mean()) if shares.size else float("nan")
        e = self.fragment_errors_ppm
        out["fragment_error_sd_ppm"] = float(e.std()) if e.size else float("nan")
        out["fragment_error_mean_ppm"] = float(e.mean()) if e.size else float("nan")
        return out


def family_masses(tokens: Sequence[str], charge: int, vocabulary: Vocabulary = DEFAULT_VOCABULARY
                  ) -> dict[str, np.ndarray]:
    """Theoretical m/z (Th) of each family of :data:`ION_FAMILIES` but "other" for peptide
    ``tokens`` at precursor ``charge``: b/y at 1+ and 2+, a ions and H2O/NH3 losses (1+ and 2+),
    immonium ions (residue - CO + H+), b-type internal fragments of 2..:data:`INTERNAL_MAX_LENGTH`
    residues touching neither terminus with their -CO, -H2O and -NH3 forms, and the precursor
    [M + zH]z+ (z = 1..charge) with its H2O/NH3 losses."""
    residues = torch.tensor(vocabulary.residue_masses(tokens), dtype=torch.float64)
    masses = residues.numpy()

    def ladder(ions: tuple[str, ...], charges: tuple[int, ...]) -> np.ndarray:
        return fragment_mz(residues, ion_types=ions, charges=charges)[0].reshape(-1).numpy()

    internal = internal_fragments(masses, INTERNAL_MAX_LENGTH)[1]
    internal = (internal[:, None] - np.array([0.0, CO_MASS, H2O_MASS, NH3_MASS])).reshape(-1)
    neutral = float(masses.sum()) + H2O_MASS
    precursor = np.array([(neutral - loss + z * PROTON_MASS) / z for z in range(1, max(charge, 1) + 1)
                          for loss in (0.0, H2O_MASS, NH3_MASS)])
    return {"b/y 1+": ladder(("b", "y"), (1,)), "b/y 2+": ladder(("b", "y"), (2,)),
            "a and losses": ladder(SECONDARY_IONS, (1, 2)), "immonium": immonium_mz(masses),
            "internal": internal, "precursor": precursor}


def family_shares(spectrum: Spectrum, tol_ppm: float = 20.0, vocabulary: Vocabulary = DEFAULT_VOCABULARY
                  ) -> dict[str, float]:
    """Fraction of ``spectrum``'s total intensity per family of :data:`ION_FAMILIES` (labelled
    spectrum; peaks within ``tol_ppm`` of a family's m/z, each peak in the first family only)."""
    mz, intensity = spectrum.mz, spectrum.intensity
    total = float(intensity.sum())
    assigned = np.zeros(mz.size, dtype=bool)
    out: dict[str, float] = {}
    for family, theory in family_masses(spectrum.tokens or [], spectrum.charge, vocabulary).items():
        lo = np.searchsorted(mz, theory * (1 - tol_ppm * 1e-6), side="left")
        hi = np.searchsorted(mz, theory * (1 + tol_ppm * 1e-6), side="right")
        inside = np.zeros(mz.size + 1, dtype=np.int64)
        np.add.at(inside, lo, 1)
        np.add.at(inside, hi, -1)
        matched = (np.cumsum(inside)[:-1] > 0) & ~assigned
        out[family] = float(intensity[matched].sum()) / total if total > 0 else 0.0
        assigned |= matched
    out["other"] = float(intensity[~assigned].sum()) / total if total > 0 else 0.0
    return out


def spectrum_stats(spectra: Sequence[Spectrum], *, tol_ppm: float = 20.0,
                   vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> SpectrumStats:
    """Statistics of the labelled spectra in ``spectra`` (unlabelled ones are ignored)."""
    present, explained, precursor, errors, peaks = [], [], [], [], []
    shares: dict[str, list[float]] = {family: [] for family in ION_FAMILIES}
    for s in spectra:
        if not s.tokens:
            continue
        by_family = family_shares(s, tol_ppm, vocabulary)
        for family, share in by_family.items():
            shares[family].append(share)
        masses = torch.tensor(vocabulary.residue_masses(s.tokens), dtype=torch.float64)
        theory, _ = fragment_mz(masses, ion_types=("b", "y"), charges=(1,))
        theo = theory.reshape(-1).numpy()
        mz, inten = s.mz, s.intensity
        lo = np.searchsorted(mz, theo * (1 - tol_ppm * 1e-6), side="left")
        hi = np.searchsorted(mz, theo * (1 + tol_ppm * 1e-6), side="right")
        hit = hi > lo
        for k in np.flatnonzero(hit):
            best = lo[k] + int(np.argmax(inten[lo[k]:hi[k]]))
            errors.append(ppm_error(mz[best], theo[k]))
        present.append(hit.mean() if theo.size else 0.0)
        explained.append(by_family["b/y 1+"])  # the peaks within tol_ppm of a b/y 1+ ion, as a share
        calc = vocabulary.precursor_mz(s.tokens, s.charge)
        offsets = [ppm_error(s.precursor_mz - n * C13_SPACING / s.charge, calc) for n in (0, 1)]
        precursor.append(min(offsets, key=abs))
        peaks.append(mz.size)
    return SpectrumStats(np.array(present), np.array(explained), np.array(precursor),
                         np.array(errors), np.array(peaks), {f: np.array(v) for f, v in shares.items()})


def plot_comparison(synthetic: SpectrumStats, real: SpectrumStats, path: str | Path,
                    labels: tuple[str, str] = ("synthetic", "real")) -> Path:
    """Histograms (density) of the four statistics, synthetic over real, and the mean intensity
    share of each ion family (bars), in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("fraction_present", "b/y 1+ ions present (fraction)", np.linspace(0, 1, 21)),
              ("intensity_explained", "intensity explained by b/y 1+", np.linspace(0, 1, 21)),
              ("fragment_errors_ppm", "fragment m/z error (ppm)", np.linspace(-20, 20, 41)),
              ("precursor_error_ppm", "precursor m/z error (ppm)", np.linspace(-10, 10, 41)))
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.4))
    for ax, (name, title, bins) in zip(axes[:4], panels):
        for stats, label, style in ((synthetic, labels[0], "stepfilled"), (real, labels[1], "step")):
            values = getattr(stats, name)
            ax.hist(values, bins=bins, density=True, histtype=style, alpha=0.5 if style == "stepfilled" else 1.0,
                    linewidth=1.5, label=f"{label} (median {np.median(values):.3g})")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[4]
    x = np.arange(len(ION_FAMILIES))
    for offset, stats, label in ((-0.2, synthetic, labels[0]), (0.2, real, labels[1])):
        means = [float(np.mean((stats.family_shares or {}).get(f, np.zeros(1)))) for f in ION_FAMILIES]
        ax.bar(x + offset, means, width=0.4, label=label, alpha=0.6 if offset < 0 else 1.0)
    ax.set_xticks(x, ION_FAMILIES, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("mean share of intensity", fontsize=8)
    ax.set_title("intensity by ion family", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
