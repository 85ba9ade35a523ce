"""Rescoring: ion-evidence features, graph-path variants, the waypoint-constrained beam search, PSMs."""

import numpy as np
import torch

from equipoise.peptide.baseline import GraphPath
from equipoise.peptide.decoding import DecodingConfig, beam_candidates, predict
from equipoise.peptide.io import Spectrum
from equipoise.peptide.model import PeptideTransformer, collate, prepare
from equipoise.peptide.rescoring import (FEATURES, Candidate, RescoringConfig, choose, graph_candidates, ion_evidence,
                                         peptide_score)
from equipoise.peptide.synth import synthesize
from equipoise.peptide.vocab import DEFAULT_VOCABULARY as V, H2O_MASS, PROTON_MASS

from tests.peptide.test_decoding import TINY, Preferring


def _ladder(tokens: list[str], charge: int = 2, shift_da: float = 0.0) -> Spectrum:
    """A clean spectrum: every b and y 1+ ion of ``tokens``, m/z shifted by ``shift_da``."""
    residues = np.array(V.residue_masses(tokens))
    prefix = np.cumsum(residues)[:-1]
    mz = np.sort(np.r_[prefix + PROTON_MASS, residues.sum() + H2O_MASS - prefix + PROTON_MASS]) + shift_da
    return Spectrum(0, V.precursor_mz(tokens, charge), charge, mz, np.ones(mz.size), tokens=tokens)


def test_ion_evidence_prefers_the_true_sequence() -> None:
    truth = ["P", "E", "P", "T", "I", "D", "E", "K"]
    spectrum = _ladder(truth, shift_da=0.001)
    swapped = ["P", "E", "T", "P", "I", "D", "E", "K"]           # same mass, two sites lost
    f = ion_evidence(spectrum, [truth, swapped], V)
    assert f.shape == (2, len(FEATURES) - 2)
    coverage, both, explained, error, gap = f[0]
    assert coverage == 1 and both == 1 and explained == 1 and gap == 0
    assert abs(error - 0.001 / 0.02) < 1e-6
    assert f[1, 0] < 1 and f[1, 2] < 1 and f[1, 4] > 0               # the swap loses sites and peak weight
    assert ion_evidence(spectrum, [["K"]], V)[0, 0] == 0             # no cleavage site


def test_ion_evidence_of_many_candidates_equals_one_at_a_time() -> None:
    """The candidates of a spectrum are scored together; no feature may leak between them."""
    spectrum = synthesize(1, 3)[0]
    candidates = [spectrum.tokens, ["K"], spectrum.tokens[::-1], ["G", "G", "W", "K"], spectrum.tokens[:-2] + ["R"]]
    together = ion_evidence(spectrum, candidates, V)
    alone = np.concatenate([ion_evidence(spectrum, [c], V) for c in candidates])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(together[1], [0, 0, 0, 1, 1])        # one residue: no site


def test_graph_candidates_try_both_orders_of_each_pair() -> None:
    path = GraphPath([("A",), ("G", "S"), ("K",), ("D", "E")], [71.0, 215.1, 343.2], 0.5, [0.5] * 6)
    variants = graph_candidates(path)
    assert len(variants) == 4
    assert ["A", "G", "S", "K", "D", "E"] in variants and ["A", "S", "G", "K", "E", "D"] in variants
    assert len(graph_candidates(path, max_pair_orders=1)) == 2
    same = GraphPath([("G", "G")], [], 0.0, [0.0, 0.0])
    assert graph_candidates(same) == [["G", "G"]]


def test_choose_and_peptide_score() -> None:
    config = RescoringConfig()
    good = Candidate(["A"], -0.1, [0.9], "beam", features=np.array([-0.1, -0.2, 1.0, 1.0, 0.5, 0.1, 0.0]))
    bad = Candidate(["G"], -0.05, [0.95], "beam", features=np.array([-0.05, -0.1, 0.3, 0.0, 0.1, 0.6, 0.5]))
    assert choose([bad, good], config) is good and choose([], config) is None
    assert 0 < peptide_score(bad, config) < peptide_score(good, config) <= 1


def test_waypoints_force_the_ladder_on_a_preferring_model() -> None:
    spectra = synthesize(4, seed=21)
    batch = collate([prepare(s, V, TINY) for s in spectra])
    wanted, waypoints = [], torch.full((len(spectra), 30), float("inf"), dtype=torch.float64)
    for i, s in enumerate(spectra):
        ids = V.encode(s.tokens)
        wanted.append(ids[:-3] + [ids[-2], ids[-3], ids[-1]])          # two residues before the C-term swapped
        nodes = np.cumsum(V.residue_masses(s.tokens))[:-1]
        waypoints[i, :len(nodes)] = torch.from_numpy(nodes)
    free = beam_candidates(Preferring(wanted), batch, DecodingConfig(beams=3))
    forced = beam_candidates(Preferring(wanted), batch, DecodingConfig(beams=3), waypoints=waypoints)
    swapped = 0
    for s, w, f, c in zip(spectra, wanted, free, forced):
        assert f[0].tokens == V.decode(w)                                # unconstrained: the model's choice
        assert c and all(p.within_tolerance for p in c)
        swapped += V.decode(w) != s.tokens
        best = V.residue_masses(c[0].tokens)                            # the ladder rules the swap out
        assert len(best) == len(V.residue_masses(s.tokens))
        assert np.allclose(best, V.residue_masses(s.tokens), atol=0.02)  # (up to equal-mass residues)
        for p in c:                                                     # constrained: every node passed
            prefix = np.cumsum(V.residue_masses(p.tokens))
            nodes = np.cumsum(V.residue_masses(s.tokens))[:-1]
            assert all(np.min(np.abs(prefix - n)) <= 0.02 for n in nodes)
    assert swapped >= 2


def test_predict_with_rescoring_gives_one_psm_per_spectrum() -> None:
    torch.manual_seed(0)
    spectra = synthesize(5, seed=22)
    psms = predict(PeptideTransformer(V, TINY), spectra, DecodingConfig(beams=2), batch_size=3,
                   rescoring=RescoringConfig(ladder_beams=2))
    assert [p.spectrum_index for p in psms] == [s.index for s in spectra]
    for p in psms:
        assert len(p.aa_scores) == len(p.tokens) and p.score <= 1
