"""Ion-family intensity shares of labelled spectra (the synthetic noise model's calibration)."""

import numpy as np
import pytest

from equipoise.peptide.io import Spectrum
from equipoise.peptide.spectrum_stats import ION_FAMILIES, family_masses, family_shares
from equipoise.peptide.vocab import CO_MASS, DEFAULT_VOCABULARY, PROTON_MASS

PEPTIDE = list("PEPTIDEK")


def _spectrum(peaks: dict[float, float]) -> Spectrum:
    mz = np.array(sorted(peaks))
    return Spectrum(0, DEFAULT_VOCABULARY.precursor_mz(PEPTIDE, 2), 2, mz, np.array([peaks[m] for m in mz]),
                    tokens=PEPTIDE)


def test_each_family_is_found_once_and_the_rest_is_other() -> None:
    masses = family_masses(PEPTIDE, 2)
    isoleucine_immonium = 113.08406 - CO_MASS + PROTON_MASS
    assert np.min(np.abs(masses["immonium"] - isoleucine_immonium)) < 1e-4
    # internal fragment "TI" (residues 4-5) and its a-type form, away from both termini
    ti = DEFAULT_VOCABULARY.residue_masses(["T", "I"])
    assert np.min(np.abs(masses["internal"] - (sum(ti) + PROTON_MASS))) < 1e-9
    b2 = sum(DEFAULT_VOCABULARY.residue_masses(["P", "E"])) + PROTON_MASS
    peaks = {b2: 4.0, isoleucine_immonium: 1.0, sum(ti) + PROTON_MASS: 2.0, 500.0: 3.0}
    shares = family_shares(_spectrum(peaks))
    assert set(shares) == set(ION_FAMILIES)
    assert shares["b/y 1+"] == pytest.approx(0.4) and shares["immonium"] == pytest.approx(0.1)
    assert shares["internal"] == pytest.approx(0.2) and shares["other"] == pytest.approx(0.3)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_a_peak_counts_for_its_first_family_only() -> None:
    b2 = sum(DEFAULT_VOCABULARY.residue_masses(["P", "E"])) + PROTON_MASS
    shares = family_shares(_spectrum({b2: 1.0, b2 * (1 + 5e-6): 1.0}))  # both within 20 ppm of b2
    assert shares["b/y 1+"] == pytest.approx(1.0) and shares["other"] == 0.0
