"""Reading and writing ensembles: round trips, NMR model numbering, errors naming file and model/residue."""

from __future__ import annotations

import math

import pytest
import torch

from tests.ensemble.backbones import ideal_ensemble, need_2k39
from equipoise.ensemble.geometry import bond_angles, dihedral, place_oxygens
from equipoise.ensemble.io import Ensemble, read_ensemble, read_trajectory, write_ensemble
from equipoise.errors import InputError


@pytest.mark.parametrize("name", ["e.pdb", "e.cif", "e.pdb.gz"])
def test_round_trip_keeps_coordinates_sequence_and_numbers(tmp_path, name):
    ens = ideal_ensemble(3, 6)
    ens.residue_numbers = tuple(str(i) for i in range(5, 11))
    path = write_ensemble(ens, tmp_path / name)
    back = read_ensemble(path)
    assert back.sequence == ens.sequence and back.residue_names[0] == "MET"
    assert back.residue_numbers == ens.residue_numbers and back.n_models == 3
    assert torch.allclose(back.coords, ens.coords, atol=1e-3)  # PDB keeps 3 decimals
    assert bool(back.mask.all())


def _pdb_text(ens: Ensemble, tmp_path) -> list[str]:
    return write_ensemble(ens, tmp_path / "x.pdb").read_text().splitlines()


def test_model_numbering_from_zero_and_chain_choice(tmp_path):
    lines = _pdb_text(ideal_ensemble(2, 5), tmp_path)
    text = "\n".join(l.replace("MODEL        1", "MODEL        0").replace("MODEL        2", "MODEL        1")
                     for l in lines)
    (tmp_path / "zero.pdb").write_text(text)
    ens = read_ensemble(tmp_path / "zero.pdb", chain="A")
    assert ens.model_numbers == (0, 1)
    with pytest.raises(InputError, match="chain 'B' not found"):
        read_ensemble(tmp_path / "zero.pdb", chain="B")


def test_fewer_than_two_models_is_an_error(tmp_path):
    path = write_ensemble(ideal_ensemble(1, 5), tmp_path / "one.pdb")
    with pytest.raises(InputError, match=r"one.pdb.*at least 2 models, found 1"):
        read_ensemble(path)


def test_chains_of_different_length_name_the_model(tmp_path):
    lines = _pdb_text(ideal_ensemble(2, 5), tmp_path)
    out, model = [], 0
    for line in lines:
        if line.startswith("MODEL"):
            model += 1
        if model == 2 and line.startswith("ATOM") and line[22:26].strip() == "5":
            continue
        out.append(line)
    (tmp_path / "short.pdb").write_text("\n".join(out))
    with pytest.raises(InputError, match="model 2 chain 'A' has 4 residues, the first model 5"):
        read_ensemble(tmp_path / "short.pdb")


def test_missing_ca_is_an_error_naming_the_residue_and_missing_o_is_masked(tmp_path):
    lines = _pdb_text(ideal_ensemble(2, 5), tmp_path)
    no_ca = [l for l in lines if not (l.startswith("ATOM") and l[12:16].strip() == "CA" and l[22:26].strip() == "3")]
    (tmp_path / "noca.pdb").write_text("\n".join(no_ca))
    with pytest.raises(InputError, match="model 1 residue ILE 3 has no CA atom"):
        read_ensemble(tmp_path / "noca.pdb")
    masked = read_ensemble(tmp_path / "noca.pdb", allow_missing_backbone=True)
    assert not bool(masked.mask[:, 2, 1].any()) and bool(masked.mask[:, 2, 0].all())
    no_o = [l for l in lines if not (l.startswith("ATOM") and l[12:16].strip() == "O" and l[22:26].strip() == "2")]
    (tmp_path / "noo.pdb").write_text("\n".join(no_o))
    ens = read_ensemble(tmp_path / "noo.pdb")
    assert not bool(ens.mask[:, 1, 3].any()) and int(ens.mask.sum()) == 2 * 5 * 4 - 2
    write_ensemble(ens, tmp_path / "filled.pdb")  # the missing O is placed on writing
    assert bool(read_ensemble(tmp_path / "filled.pdb").mask.all())


def test_unreadable_and_unwritable_paths(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_ensemble(tmp_path / "absent.pdb")
    with pytest.raises(InputError, match="must end in"):
        write_ensemble(ideal_ensemble(2, 4), tmp_path / "x.txt")
    bad = ideal_ensemble(2, 4)
    bad.coords[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        write_ensemble(bad, tmp_path / "nan.pdb")


def test_oxygen_lies_in_the_peptide_plane():
    ens = ideal_ensemble(2, 6)
    o = place_oxygens(ens.coords[:, :, :3])
    n, ca, c = ens.coords[:, :, 0], ens.coords[:, :, 1], ens.coords[:, :, 2]
    plane = dihedral(n[:, 1:], ca[:, :-1], c[:, :-1], o[:, :-1])  # N(i+1)-CA-C-O
    assert torch.allclose(plane.abs(), torch.full_like(plane, math.pi), atol=1e-9)
    assert torch.allclose((o - c).norm(dim=-1), torch.full(o.shape[:-1], 1.231, dtype=o.dtype))
    assert torch.allclose(torch.rad2deg(bond_angles(ens.coords)[..., 1]), torch.full(o.shape[:-1], 120.8, dtype=o.dtype))


def test_read_2k39():
    ens = read_ensemble(need_2k39())
    assert ens.coords.shape == (116, 76, 4, 3) and ens.coords.dtype == torch.float64
    assert ens.model_numbers[0] == 0 and ens.sequence.startswith("MQIFVKTLTGK") and ens.chain_id == "A"
    assert bool(ens.mask.all())


def test_md_trajectory_through_mdanalysis(tmp_path):
    mda = pytest.importorskip("MDAnalysis")
    ens = ideal_ensemble(3, 5)
    top = write_ensemble(ens.select([0]), tmp_path / "top.pdb")
    universe = mda.Universe(str(top))
    with mda.Writer(str(tmp_path / "traj.dcd"), universe.atoms.n_atoms) as writer:
        for m in range(3):
            universe.atoms.positions = ens.coords[m].reshape(-1, 3).numpy()
            writer.write(universe.atoms)
    traj = read_trajectory(top, tmp_path / "traj.dcd")
    assert traj.coords.shape == (3, 5, 4, 3) and traj.sequence == ens.sequence
    assert torch.allclose(traj.coords, ens.coords, atol=1e-3)
    with pytest.raises(InputError, match="file not found"):
        read_trajectory(top, tmp_path / "absent.xtc")


def test_trajectory_with_force_field_names_round_trips_through_pdb(tmp_path):
    """CHARMM names (HSD) and a 4-character segment id (4AKE) from an MD topology: the ensemble
    is written as a PDB with HIS and chain A, and reads back with every residue."""
    mda = pytest.importorskip("MDAnalysis")
    ens = ideal_ensemble(3, 6, sequence="MKHAHL")
    top = write_ensemble(ens.select([0]), tmp_path / "plain.pdb")
    lines = []
    for line in top.read_text().splitlines():
        if line.startswith("ATOM"):
            line = line.replace("HIS", "HSD").ljust(80)
            line = line[:72] + "4AKE" + line[76:]
        lines.append(line)
    charmm = tmp_path / "charmm.pdb"
    charmm.write_text("\n".join(lines) + "\n")
    universe = mda.Universe(str(charmm))
    assert "HSD" in set(universe.residues.resnames) and universe.segments[0].segid == "4AKE"
    with mda.Writer(str(tmp_path / "traj.dcd"), universe.atoms.n_atoms) as writer:
        for m in range(3):
            universe.atoms.positions = ens.coords[m].reshape(-1, 3).numpy()
            writer.write(universe.atoms)
    traj = read_trajectory(charmm, tmp_path / "traj.dcd")
    assert traj.sequence == "MKHAHL" and traj.residue_names[2] == "HIS" and traj.chain_id == "A"
    back = read_ensemble(write_ensemble(traj, tmp_path / "out.pdb"))
    assert back.n_res == 6 and back.sequence == "MKHAHL"
