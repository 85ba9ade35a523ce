"""Synthetic spectra: peptide rules, sequence-dependent intensities, calibrated statistics, CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch

from equipoise.cli import main
from equipoise.peptide.fragments import fragment_mz
from equipoise.peptide.io import read_spectra
from equipoise.peptide.spectrum_stats import spectrum_stats
from equipoise.peptide.synth import SynthConfig, random_peptide, synthesize, synthesize_spectrum
from equipoise.peptide.vocab import DEFAULT_VOCABULARY

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "peptide" / "real_annotated_64.mgf"


def test_peptides_follow_the_rules() -> None:
    rng = np.random.default_rng(0)
    peptides = [random_peptide(rng) for _ in range(2000)]
    residues = [[t for t in p if not t.endswith("-")] for p in peptides]
    lengths = np.array([len(r) for r in residues])
    assert lengths.min() >= 6 and lengths.max() <= 20 and np.median(lengths) < 11
    assert all(r[-1] in ("K", "R") for r in residues)
    flat = [t for r in residues for t in r]
    assert "C" not in flat and "C[Carbamidomethyl]" in flat
    n_m = sum(t[0] == "M" for t in flat)
    assert 0.15 < sum(t == "M[Oxidation]" for t in flat) / n_m < 0.35
    assert 0.3 < sum(t in ("L", "I") for t in flat) / len(flat) / 0.16 < 1.3  # L+I ~ 16% of residues
    assert 0.01 < sum(p[0].endswith("-") for p in peptides) / len(peptides) < 0.06
    for p in peptides[:200]:
        DEFAULT_VOCABULARY.encode(p)  # every token is in the vocabulary


def test_same_seed_same_spectra_and_charges() -> None:
    a, b = synthesize(50, 3), synthesize(50, 3)
    assert all(x.tokens == y.tokens and np.array_equal(x.mz, y.mz) for x, y in zip(a, b))
    assert {s.charge for s in synthesize(200, 4)} == {2, 3}
    assert synthesize(5, 5)[0].tokens != synthesize(5, 6)[0].tokens


def test_intensities_y_over_b_and_proline_effect() -> None:
    rng = np.random.default_rng(1)
    tokens = list("GASVPTLEDK")
    masses = torch.tensor(DEFAULT_VOCABULARY.residue_masses(tokens), dtype=torch.float64)
    theory = fragment_mz(masses)[0].numpy()  # (2, 9): b, y
    quiet = SynthConfig(noise_peaks_mean=0.0, quality_a=50.0, quality_b=0.5, fragment_sd_ppm=0.1,
                        fragment_offset_sd_ppm=0.0, fragment_offset_ppm=0.0)
    totals = np.zeros((2, 9))
    for _ in range(300):
        s = synthesize_spectrum(rng, tokens, 2, config=quiet)
        for row in range(2):
            for site in range(9):
                near = np.abs(s.mz - theory[row, site]) < 0.01
                totals[row, site] += s.intensity[near].sum()
    assert totals[1].sum() > 1.5 * totals[0].sum()          # y > b
    proline_site = 3                                         # cleavage V|P (N-terminal to P)
    others = [k for k in range(1, 8) if k != proline_site]
    assert totals[1, proline_site] > 2.0 * totals[1, others].mean()
    assert totals[0, 0] < 0.2 * totals[0, 1:].mean()        # b1 weak


def test_noise_model_matches_real_statistics() -> None:
    stats = spectrum_stats(synthesize(400, 11)).summary_dict()
    # the real 64 spectra: median 0.57 present, ~0.22 intensity, fragment sd ~4.5 ppm, -3..+7 ppm
    assert 0.47 < stats["fraction_present_median"] < 0.67
    assert 0.15 < stats["intensity_explained_median"] < 0.29
    assert 3.0 < stats["fragment_error_sd_ppm"] < 6.0
    assert stats["precursor_error_ppm_min"] > -3.5 and stats["precursor_error_ppm_max"] < 7.5
    if REAL.is_file():
        real = spectrum_stats(read_spectra(REAL).spectra).summary_dict()
        assert abs(real["fraction_present_median"] - stats["fraction_present_median"]) < 0.1
        assert abs(real["intensity_explained_median"] - stats["intensity_explained_median"]) < 0.07
        for family in ("a and losses", "immonium", "internal", "other"):   # real 0.138, 0.046, 0.048, 0.479
            assert abs(real[f"share_{family}_mean"] - stats[f"share_{family}_mean"]) < 0.04, family


def test_cli_writes_labelled_mgf_and_record(tmp_path) -> None:
    out = tmp_path / "t.mgf"
    args = ["peptide", "synth", "--n", "30", "--seed", "2", "--out", str(out), "--quiet"]
    if REAL.is_file():
        args += ["--compare", str(REAL)]
    assert main(args) == 0
    spectra = read_spectra(out).spectra
    assert len(spectra) == 30 and all(s.tokens for s in spectra)
    assert spectra[0].tokens == synthesize(1, 2)[0].tokens
    assert (tmp_path / "t.json").is_file()
    if REAL.is_file():
        assert (tmp_path / "t_vs_real.png").stat().st_size > 1000
    log = (tmp_path / "t.log").read_text()
    assert "step 30/30" in log and "loss" not in log  # synthesis has no loss to show (it showed "loss nan")
    assert main(["peptide", "synth", "--n", "0", "--out", str(out)]) == 2


def test_structured_ions_can_be_switched_off() -> None:
    from equipoise.peptide.spectrum_stats import family_shares

    plain = [family_shares(s) for s in synthesize(60, 4, SynthConfig(immonium_scale=0.0, internal_scale=0.0))]
    rich = [family_shares(s) for s in synthesize(60, 4)]
    for family in ("immonium", "internal"):
        assert np.mean([r[family] for r in plain]) < 0.005
        assert np.mean([r[family] for r in rich]) > 0.02
    assert np.mean([r["b/y 1+"] for r in rich]) == pytest.approx(np.mean([r["b/y 1+"] for r in plain]), abs=0.05)
