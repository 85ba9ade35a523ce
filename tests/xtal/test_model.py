"""AtomModel: reading, hydrogens, unknown elements, writing PDB/mmCIF round trips."""

import gemmi
import pytest
import torch

from equipoise.errors import InputError
from equipoise.xtal.model import AtomModel
from tests.xtal.shared_data import data_file

PDB = """\
CRYST1   10.000   11.000   12.000  90.00  90.00  90.00 P 1
ATOM      1  N   GLY A   1       1.000   1.000   1.000  1.00 10.00           N
ATOM      2  CA AGLY A   1       2.400   1.000   1.000  0.60 11.00           C
ATOM      3  CA BGLY A   1       2.400   1.200   1.000  0.40 12.00           C
ATOM      4  H   GLY A   1       0.500   1.500   1.000  1.00 10.00           H
HETATM    5  O   HOH A 101       5.000   5.000   5.000  1.00 20.00           O
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.pdb"
    path.write_text(PDB)
    return path


def test_reads_altlocs_waters_and_strips_hydrogens(tiny):
    m = AtomModel.from_file(tiny)
    assert m.n_atoms == 4 and m.elements == ["N", "C", "C", "O"]
    assert m.labels[1] == "A/GLY 1/CA.A" and m.labels[2] == "A/GLY 1/CA.B"
    assert torch.allclose(m.occ, torch.tensor([1.0, 0.6, 0.4, 1.0], dtype=torch.float64))
    assert m.xyz.dtype == torch.float64 and m.u_aniso is None
    assert m.spacegroup.hm == "P 1" and m.cell.a == pytest.approx(10.0)
    kept = AtomModel.from_file(tiny, hydrogens="keep")
    assert kept.n_atoms == 5 and "H" in kept.elements


def test_unknown_element_names_file_and_atom(tmp_path):
    path = tmp_path / "bad.pdb"
    path.write_text(PDB.replace("20.00           O", "20.00          XX").replace(" O   HOH", " Q   HOH"))
    with pytest.raises(InputError) as err:
        AtomModel.from_file(path)
    assert "bad.pdb" in str(err.value) and "A/HOH 101/Q" in str(err.value)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        AtomModel.from_file(tmp_path / "none.pdb")
    with pytest.raises(InputError, match="hydrogens"):
        AtomModel.from_file(tmp_path / "none.pdb", hydrogens="ride")
    with pytest.raises(InputError, match="format"):
        AtomModel.from_structure(gemmi.read_pdb_string(PDB)).write(tmp_path / "x.xyz")


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_write_round_trip_with_remarks(tiny, tmp_path, suffix):
    m = AtomModel.from_file(tiny)
    xyz = m.xyz + 0.25
    b = m.b_iso * 2
    out = m.write(tmp_path / f"out{suffix}", remarks=["R-work 0.1900  R-free 0.2300"], xyz=xyz, b_iso=b)
    back = AtomModel.from_file(out)
    assert torch.allclose(back.xyz, xyz, atol=1e-3) and torch.allclose(back.b_iso, b, atol=1e-2)
    assert "R-free 0.2300" in out.read_text()
    assert torch.equal(m.xyz, AtomModel.from_file(tiny).xyz)      # the model itself is unchanged


def test_real_peptide_and_symmetry_from_data():
    m = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    assert m.n_atoms == 47 and m.elements.count("O") >= 10
    assert m.spacegroup.hm == "P 1 21 1"
    m.with_symmetry(gemmi.UnitCell(20, 20, 20, 90, 90, 90), gemmi.SpaceGroup("P 21 21 21"))
    assert m.structure.spacegroup_hm == "P 21 21 21" and m.cell.a == 20
