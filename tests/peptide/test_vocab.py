"""Vocabulary: every mass against pyteomics, tokenizing ProForma, precursor m/z."""

import pytest
import torch
from pyteomics import mass

from equipoise.errors import InputError
from equipoise.peptide.vocab import (DEFAULT_VOCABULARY, H2O_MASS, PROTON_MASS, RESIDUE_TOKENS,
                                     neutral_mass_from_mz, ppm_error)

# Unimod compositions, independent of our table
UNIMOD = {"Carbamidomethyl": "H3C2NO", "Oxidation": "O", "Deamidated": "H-1N-1O", "Acetyl": "H2C2O",
          "Carbamyl": "HCNO", "Ammonia-loss": "H-3N-1"}


def _pyteomics_mass(token: str) -> float:
    if token.endswith("-"):
        if token == "[+25.979265]-":
            return mass.calculate_mass(formula="HCNO") + mass.calculate_mass(formula="H-3N-1")
        return mass.calculate_mass(formula=UNIMOD[token[1:-2]])
    base = mass.std_aa_mass[token[0]]
    return base if len(token) == 1 else base + mass.calculate_mass(formula=UNIMOD[token[2:-1]])


def test_layout_padding_stop_and_casanovo_set() -> None:
    v = DEFAULT_VOCABULARY
    assert v.tokens[0] == "<pad>" and v.pad_index == 0
    assert v.tokens[1] == "<stop>" and v.stop_index == 1
    assert len(v) == 29 and v.tokens[2:] == RESIDUE_TOKENS
    assert {v.tokens[i] for i in v.n_terminal_indices} == {"[Acetyl]-", "[Carbamyl]-", "[Ammonia-loss]-", "[+25.979265]-"}
    assert len(v.residue_indices) == 23


@pytest.mark.parametrize("token", RESIDUE_TOKENS)
def test_every_mass_matches_pyteomics(token: str) -> None:
    v = DEFAULT_VOCABULARY
    assert abs(v.token_masses[v.index(token)] - _pyteomics_mass(token)) < 1e-6


def test_mass_tensor_dtype_device() -> None:
    t = DEFAULT_VOCABULARY.mass_tensor(dtype=torch.float32, device="cpu")
    assert t.shape == (29,) and t.dtype == torch.float32 and t[0] == 0 and t[1] == 0
    assert abs(float(t[DEFAULT_VOCABULARY.index("W")]) - 186.0793) < 1e-3


@pytest.mark.parametrize("seq,expected", [
    ("PEPTIDEK", ["P", "E", "P", "T", "I", "D", "E", "K"]),
    ("[Acetyl]-AC[Carbamidomethyl]M[Oxidation]K", ["[Acetyl]-", "A", "C[Carbamidomethyl]", "M[Oxidation]", "K"]),
    ("+43.006-17.027QN+0.984K", ["[+25.979265]-", "Q", "N[Deamidated]", "K"]),
    ("[+25.980265]-K", ["[+25.979265]-", "K"]),
    ("[Carbamyl][Ammonia-loss]-CK", ["[+25.979265]-", "C[Carbamidomethyl]", "K"]),
    ("M[+15.995]Q[Deamidated]R", ["M[Oxidation]", "Q[Deamidated]", "R"]),
])
def test_tokenize_proforma_and_casanovo_notation(seq: str, expected: list[str]) -> None:
    v = DEFAULT_VOCABULARY
    assert v.tokenize(seq) == expected
    assert v.decode(v.encode(seq, stop=True) + [0, 0]) == expected


@pytest.mark.parametrize("seq", ["PEPS[Phospho]K", "PEPXK", "PEP-K", "K[Acetyl]-", "[Acetyl]-", "", "AK[Acetyl]-R"])
def test_unknown_or_malformed_raise_input_error(seq: str) -> None:
    with pytest.raises(InputError, match="SEQ"):
        DEFAULT_VOCABULARY.tokenize(seq, where="x.mgf: spectrum 3")


def test_neutral_mass_precursor_and_isobaric() -> None:
    v = DEFAULT_VOCABULARY
    for seq in ["PEPTIDEK", "IAHYNKR", "MQEHMR"]:
        assert abs(v.neutral_mass(seq) - mass.fast_mass(seq)) < 1e-6
        for z in (1, 2, 3):
            mz = v.precursor_mz(seq, z)
            assert abs(mz - mass.fast_mass(seq, charge=z)) < 1e-6
            assert abs(neutral_mass_from_mz(mz, z) - v.neutral_mass(seq)) < 1e-9
    assert abs(v.neutral_mass("[Acetyl]-PEPK") - (mass.fast_mass("PEPK") + 42.0105646837)) < 1e-6
    assert v.strip_isobaric(["I", "L", "K"]) == ["L", "L", "K"]
    assert abs(ppm_error(1000.001, 1000.0) - 1.0) < 1e-9
    assert PROTON_MASS == pytest.approx(1.00727646677) and H2O_MASS == pytest.approx(18.0105646837)


def test_residue_masses_fold_n_terminal_modification() -> None:
    v = DEFAULT_VOCABULARY
    plain = v.residue_masses(["A", "K"])
    acetyl = v.residue_masses(["[Acetyl]-", "A", "K"])
    assert len(acetyl) == 2 and acetyl[0] == pytest.approx(plain[0] + 42.0105646837)
