"""Fragment ladders against pyteomics.mass.fast_mass(..., ion_type=...)."""

import pytest
import torch
from pyteomics import mass

from equipoise.peptide.fragments import fragment_mz, ion_labels, peptide_mz
from equipoise.peptide.vocab import DEFAULT_VOCABULARY

ION_TYPES = ("b", "y", "a", "b-H2O", "b-NH3", "y-H2O", "y-NH3")


@pytest.mark.parametrize("seq", ["PEPTIDEK", "IAHYNKR", "GDTPGHATPGHGGATSSAR", "WMK"])
def test_ladder_matches_pyteomics(seq: str) -> None:
    masses = torch.tensor(DEFAULT_VOCABULARY.residue_masses(list(seq)), dtype=torch.float64)
    mz, valid = fragment_mz(masses, ion_types=ION_TYPES, charges=(1, 2))
    labels = ion_labels(ION_TYPES, (1, 2))
    assert mz.shape == (14, len(seq) - 1) and bool(valid.all())
    for row, label in enumerate(labels):
        ion, z = label[:-2], int(label[-2])
        for k in range(1, len(seq)):
            frag = seq[:k] if ion[0] in "ab" else seq[k:]
            expected = mass.fast_mass(frag, ion_type=ion, charge=z)
            assert abs(float(mz[row, k - 1]) - expected) < 1e-6, (label, k)


def test_padding_batch_and_gradient() -> None:
    v = DEFAULT_VOCABULARY
    seqs = ["PEPK", "AGHKR"]
    masses = torch.zeros(2, 5, dtype=torch.float64)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    for i, s in enumerate(seqs):
        masses[i, :len(s)] = torch.tensor(v.residue_masses(list(s)), dtype=torch.float64)
        mask[i, :len(s)] = True
    masses[0, 4] = 999.0  # padding values must not matter
    masses.requires_grad_(True)
    mz, valid = fragment_mz(masses, mask, charges=(1,))
    assert valid[0].sum() == 2 * 3 and valid[1].sum() == 2 * 4
    assert abs(float(mz.detach()[0, 1, 0]) - mass.fast_mass("EPK", ion_type="y", charge=1)) < 1e-6
    (mz * valid).sum().backward()
    assert masses.grad is not None and float(masses.grad[0, 4]) == 0.0
    prec = peptide_mz(masses.detach(), torch.tensor([2, 3]), mask)
    assert abs(float(prec[1]) - mass.fast_mass("AGHKR", charge=3)) < 1e-6


def test_float32_and_unknown_ion() -> None:
    masses = torch.tensor(DEFAULT_VOCABULARY.residue_masses(list("PEPK")), dtype=torch.float32)
    mz, _ = fragment_mz(masses)
    assert mz.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown ion"):
        fragment_mz(masses, ion_types=("q",))
