"""Casanovo's amino-acid and peptide metrics, precision-coverage and length bins."""

import numpy as np
import pytest

from equipoise.peptide.metrics import aa_matches, evaluate_predictions, precision_coverage, same_peptide, top_scored


def t(s: str) -> list[str]:
    return list(s)


def test_aa_matches_cases() -> None:
    assert aa_matches(t("PEPTIDEK"), t("PEPTIDEK")).all()
    assert aa_matches(t("PEPTIDEK"), t("PEPTLDEK")).all()  # I/L one mass
    # one substitution in the middle: the prefix pass stops there, the suffix pass finds the rest
    assert aa_matches(t("PEPTIDEK"), t("PEPTGDEK")).tolist() == [True] * 4 + [False] + [True] * 3
    # GG and N have the same mass: aligned (frame kept), not matched
    assert aa_matches(t("GGK"), t("NK")).tolist() == [False, False, True]
    # swapped pair: cumulative masses re-align after two residues
    assert aa_matches(t("AGK"), t("GAK")).tolist() == [False, False, True]
    assert aa_matches(t("PEPK"), None).tolist() == [False] * 4
    # N-terminal modification is a token with its mass: missing it costs one residue
    assert aa_matches(["[Acetyl]-", "A", "K"], ["A", "K"]).tolist() == [False, True, True]


def test_same_peptide_is_exact_with_i_equal_l() -> None:
    assert same_peptide(t("PEPTIDEK"), t("PEPTLDEK"))
    assert not same_peptide(t("PEPTIDEK"), t("PEPTDIEK"))
    assert not same_peptide(t("PEPK"), None)


def test_evaluate_predictions_totals_and_lengths() -> None:
    truths = [t("PEPTIDEK"), t("AGK"), t("ACDK"), t("WWWWK")]
    preds = [t("PEPTLDEK"), t("GAK"), None, t("WWWWR")]
    m = evaluate_predictions(truths, preds, scores=[0.9, 0.8, 0.0, 0.1], precursor_ok=[True, True, False, False])
    # matched residues: 8 + 1 + 0 + 4 ; predicted 8 + 3 + 0 + 5 ; true 8 + 3 + 4 + 5
    assert m.aa_precision == pytest.approx(13 / 16) and m.aa_recall == pytest.approx(13 / 20)
    assert m.peptide_recall == pytest.approx(1 / 4) and m.peptide_precision == pytest.approx(1 / 3)
    assert m.n_predicted == 3 and m.precursor_fraction == pytest.approx(2 / 3)
    assert set(m.by_length) == {3, 4, 5, 8}
    assert m.by_length[8].peptide_recall == 1.0 and m.by_length[4].n_predicted == 0
    assert "AA precision" in m.summary() and m.as_dict()["by_length"]["8"]["aa_recall"] == 1.0


def test_precision_coverage_ranks_by_score() -> None:
    cov, prec, area = precision_coverage(np.array([0.9, 0.1, 0.5, -np.inf]), np.array([True, False, True, False]))
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert prec.tolist() == [1.0, 1.0, pytest.approx(2 / 3), 0.5]
    perfect = precision_coverage(np.array([1.0, 0.5]), np.array([True, True]))[2]
    assert perfect == pytest.approx(1.0) and area < perfect
    with pytest.raises(ValueError):
        evaluate_predictions([t("AK")], [])


def test_evaluate_psms_missing_rows_and_precursor_tolerance() -> None:
    from equipoise.errors import InputError
    from equipoise.peptide.evaluate import evaluate_psms, within_precursor_tolerance
    from equipoise.peptide.psm import PSM
    from equipoise.peptide.vocab import C13_SPACING, DEFAULT_VOCABULARY as v

    truth = [t("PEPTIDEK"), t("AGHK"), t("MMK")]
    exact = v.precursor_mz(truth[0], 2)
    psms = [PSM(0, t("PEPTLDEK"), 0.9, [0.9] * 8, 2, exact * (1 + 5e-6)),
            PSM(1, t("AGHR"), 0.2, [0.2] * 4, 2, v.precursor_mz(t("AGHK"), 2))]
    r = evaluate_psms(psms, truth, precursor_tol_ppm=10)
    assert r.metrics.n_spectra == 3 and r.metrics.n_predicted == 2
    assert r.metrics.peptide_recall == 1 / 3 and r.metrics.precursor_fraction == 0.5  # AGHR is 28 Da off
    iso = PSM(0, truth[0], 1.0, [1.0] * 8, 2, exact + C13_SPACING / 2)
    assert within_precursor_tolerance(iso, 10) and not within_precursor_tolerance(iso, 10, isotopes=(0,))
    with pytest.raises(InputError, match="index 5"):
        evaluate_psms([PSM(5, t("AK"), 1.0, [1.0, 1.0], 2, 100.0)], truth)


def test_length_bins_count_residues_not_n_terminal_tags() -> None:
    m = evaluate_predictions([["[Acetyl]-", "A", "K"], t("GK")], [["A", "K"], t("GK")])
    assert set(m.by_length) == {2} and m.by_length[2].n_spectra == 2


def test_top_scored_keeps_the_k_best_predictions() -> None:
    preds = [["A"], None, ["G"], ["K"]]
    assert top_scored(preds, [0.2, 5.0, 0.9, 0.5], 2) == [None, None, ["G"], ["K"]]
    assert top_scored(preds, [0.2, 5.0, 0.9, 0.5], 0) == [None] * 4
    with pytest.raises(ValueError):
        top_scored(preds, [0.2, 5.0, 0.9, 0.5], 5)
