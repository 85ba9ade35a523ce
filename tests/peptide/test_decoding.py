"""Beam search: mass feasibility table, precursor constraint, recovery of a preferred peptide, PSMs."""

import itertools

import numpy as np
import torch

from equipoise.peptide.decoding import DecodingConfig, MassFeasibility, beam_search, predict
from equipoise.peptide.model import Memory, ModelConfig, PeptideTransformer, collate, prepare
from equipoise.peptide.synth import synthesize
from equipoise.peptide.vocab import DEFAULT_VOCABULARY as V

TINY = ModelConfig(d_model=32, n_heads=2, dim_feedforward=32, encoder_layers=1, decoder_layers=1, max_peaks=32)


class Preferring(PeptideTransformer):
    """A stand-in model whose next-token distribution prefers ``wanted[spectrum][position]``."""

    def __init__(self, wanted: list[list[int]]) -> None:
        super().__init__(V, TINY)
        self.wanted = wanted

    def encode(self, mz, intensity, peak_padding, precursor_mass, charge) -> Memory:
        rows = torch.arange(mz.shape[0], dtype=torch.float32).view(-1, 1, 1, 1)
        return Memory([(rows, rows)], ~peak_padding[:, None, None, :], precursor_mass.double(), charge, mz, intensity)

    def decode(self, memory, tokens, cache=None):
        group = memory.precursor_mass.shape[0] // memory.layers[0][0].shape[0]
        rows = memory.layers[0][0].view(-1).long().repeat_interleave(group).tolist()
        logits = torch.zeros(len(rows), 1, len(V))
        t = tokens.shape[1]
        for i, r in enumerate(rows):
            seq = self.wanted[r] + [V.stop_index]
            if t < len(seq):
                logits[i, 0, seq[t]] = 8.0
        return logits, [(torch.zeros(len(rows), 1, t + 1, 1), torch.zeros(len(rows), 1, t + 1, 1))]


def test_feasibility_table_matches_brute_force() -> None:
    masses = (57.02146, 71.03711, 87.03203)
    table = MassFeasibility(masses, max_mass=400.0, resolution=0.01)
    sums = {round(sum(c), 5) for n in range(0, 8) for c in itertools.combinations_with_replacement(masses, n)}
    tol = torch.tensor(0.005, dtype=torch.float64)
    for value in sorted(sums):
        if value < 380:
            assert bool(table.feasible(torch.tensor(value, dtype=torch.float64), tol)), value
    rng = np.random.default_rng(0)
    for value in rng.uniform(1, 380, 300):
        expected = any(abs(value - s) <= 0.005 for s in sums)
        got = bool(table.feasible(torch.tensor(value, dtype=torch.float64), tol))
        assert got or not expected
        if got:  # rounding slack at most resolution/2 per residue
            assert any(abs(value - s) <= 0.005 + (value / 57 + 1) * 0.005 for s in sums), value


def test_recovers_the_preferred_peptide_within_tolerance() -> None:
    spectra = synthesize(6, seed=11)
    batch = collate([prepare(s, V, TINY) for s in spectra])
    wanted = [V.encode(s.tokens) for s in spectra]
    for beams in (1, 5):
        predictions = beam_search(Preferring(wanted), batch, DecodingConfig(beams=beams))
        for s, p in zip(spectra, predictions):
            assert p.tokens == s.tokens and p.within_tolerance and p.isotope == 0
            assert abs(p.neutral_mass - V.neutral_mass(s.tokens)) < 1e-6
            assert len(p.aa_scores) == len(p.tokens) and 0 < p.score <= 1


def test_precursor_constraint_overrules_a_wrong_mass_preference() -> None:
    spectrum = synthesize(1, seed=12)[0]
    batch = collate([prepare(spectrum, V, TINY)])
    ids = V.encode(spectrum.tokens)
    heavy = ids[:-1] + [V.index("W")] + ids[-1:]         # 186 Da too heavy: outside any tolerance
    [p] = beam_search(Preferring([heavy]), batch, DecodingConfig(beams=5))
    assert p.within_tolerance
    error_ppm = (p.neutral_mass - spectrum.neutral_mass + p.isotope * 1.003354835) / spectrum.neutral_mass * 1e6
    assert abs(error_ppm) <= 20.0
    assert p.tokens != V.decode(heavy)


def test_predict_returns_one_psm_per_spectrum_in_order() -> None:
    torch.manual_seed(0)
    spectra = synthesize(5, seed=13)
    model = PeptideTransformer(V, TINY)
    psms = predict(model, spectra, DecodingConfig(beams=2), batch_size=2)
    assert [p.spectrum_index for p in psms] == [s.index for s in spectra]
    for p, s in zip(psms, spectra):
        assert p.charge == s.charge and p.exp_mz == s.precursor_mz and len(p.aa_scores) == len(p.tokens)
        if p.score >= 0:  # within tolerance: the precursor error (with isotope 0 or 1) is small
            errors = [abs(p.calc_mz - (s.precursor_mz - k * 1.003354835 / s.charge)) / s.precursor_mz * 1e6
                      for k in (0, 1)]
            assert min(errors) <= 20.0 + 1e-6
