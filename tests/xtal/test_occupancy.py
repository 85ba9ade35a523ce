"""Occupancy groups (alternate conformers, partial residues) and the refinement's occupancy stage."""

import math

import gemmi
import numpy as np
import pytest
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.occupancy import OccupancyGroups
from equipoise.xtal.refine import RefineOptions, refine, write_outputs
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.restraints import Restraints
from equipoise.xtal.structure_factors import direct_structure_factors
from tests.xtal.shared_data import data_file, monlib_or_skip
from tests.xtal.test_refine import LeastSquaresXray

SIDE = 2          # residue index (in chain order, HIS) that gets two side-chain conformers
PARTIAL = 6       # residue index (the water) that gets a partial occupancy (no conformers)


def rotate(p: gemmi.Position, origin: gemmi.Position, axis: np.ndarray, degrees: float) -> gemmi.Position:
    """``p`` rotated about the line through ``origin`` along the unit vector ``axis`` (Rodrigues)."""
    v = np.array([p.x - origin.x, p.y - origin.y, p.z - origin.z])
    t = math.radians(degrees)
    r = v * math.cos(t) + np.cross(axis, v) * math.sin(t) + axis * axis.dot(v) * (1 - math.cos(t))
    return gemmi.Position(origin.x + r[0], origin.y + r[1], origin.z + r[2])


def with_occupancies(occ_a: float, occ_partial: float) -> gemmi.Structure:
    """5e5z with residue SIDE's side chain in conformers A (occ_a, as deposited) and B (1 - occ_a,
    chi1 turned by 120°, so both have ideal geometry) and residue PARTIAL at occ_partial."""
    st = gemmi.read_structure(str(data_file("5e5z.pdb.gz")))
    st.setup_entities()
    res = st[0][0][SIDE]
    ca, cb = res["CA"][0].pos, res["CB"][0].pos
    axis = np.array([cb.x - ca.x, cb.y - ca.y, cb.z - ca.z])
    axis /= np.linalg.norm(axis)
    side = [a for a in res if a.name not in ("N", "CA", "C", "O")]
    for atom in side:
        b = atom.clone()
        atom.altloc, atom.occ = "A", occ_a
        b.altloc, b.occ = "B", 1.0 - occ_a
        b.pos = rotate(atom.pos, cb, axis, 120.0)
        res.add_atom(b)
    for atom in st[0][0][PARTIAL]:
        atom.occ = occ_partial
    return st


def test_groups_constraints_and_round_trip():
    model = AtomModel.from_structure(with_occupancies(0.6, 0.4))
    groups = OccupancyGroups.from_model(model)
    assert groups.n_groups == 3
    assert [label.split()[-1] for label in groups.labels[:2]] == ["A", "B"]
    # logits reproduce the start; any logits keep the conformers' total and the lone group in [0, 1]
    z = groups.logits(model.occ)
    assert torch.allclose(groups.occupancies(z, model.occ), model.occ, atol=1e-12)
    for seed in range(3):
        w = 5 * torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        v = groups.group_occupancies(w)
        assert float(v[0] + v[1]) == pytest.approx(1.0) and 0 < float(v[2]) < 1
    # fully occupied atoms without conformers, and atoms at occupancy 0, are not grouped
    fixed = torch.ones(model.n_atoms, dtype=torch.bool)
    fixed[groups.atoms] = False
    assert bool((model.occ[fixed] == 1).all())
    model.occ[groups.atoms[-1]] = 0.0
    assert groups.atoms[-1] not in OccupancyGroups.from_model(model).atoms


def test_no_groups_in_a_fully_occupied_model():
    monlib_or_skip()
    assert OccupancyGroups.from_model(AtomModel.from_file(data_file("5e5z.pdb.gz"))).n_groups == 0


def test_occupancy_stage_recovers_the_truth(tmp_path):
    """Data from conformers 0.75 / 0.25 and a residue at 0.5; the model starts at 0.5 / 0.5 and 1.0
    (kept at 0.99). The occupancy stage must find the truth; the other stages see the right atoms."""
    monlib_or_skip()
    truth = AtomModel.from_structure(with_occupancies(0.75, 0.5))
    refl = Reflections.from_file(data_file("5e5z.mtz.gz"))
    f_true = direct_structure_factors(refl.hkl, truth.xyz, truth.b_iso, truth.occ, truth.elements,
                                      truth.cell, truth.spacegroup).abs()
    free = torch.rand(f_true.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) < 0.1
    start = AtomModel.from_structure(with_occupancies(0.5, 0.99))
    xray = LeastSquaresXray(start, refl.hkl, f_true, free)
    restraints = Restraints.build(start)
    result = refine(start, restraints, xray, options=RefineOptions(cycles=3, xyz_steps=5, b_steps=3, occ_steps=10),
                    run_dir=tmp_path / "run", log=lambda s: None)
    table = {g["group"].split()[-1]: g["occ"] for g in result.final.occupancies}
    print(result.final.occupancies)
    assert table["A"] == pytest.approx(0.75, abs=0.05) and table["A"] + table["B"] == pytest.approx(1.0)
    partial = [g["occ"] for g in result.final.occupancies if "conformer" not in g["group"]]
    assert partial[0] == pytest.approx(0.5, abs=0.07)
    assert (tmp_path / "run" / "cycle_01" / "occ" / "record.jsonl").is_file()
    paths = write_outputs(result, start, xray, tmp_path / "out", plots=False)
    written = AtomModel.from_file(paths["pdb"])
    assert torch.allclose(written.occ, result.occ.to(written.occ), atol=0.01)
    # off: the occupancies stay as given
    off = refine(start, restraints, xray, options=RefineOptions(cycles=1, xyz_steps=2, b_steps=2, occupancy="off"),
                 log=lambda s: None)
    assert off.final.occupancies is None and torch.equal(off.occ, start.occ)


def test_consecutive_conformers_are_one_set_and_waters_are_not_linked():
    st = gemmi.read_structure(str(data_file("5e5z.pdb.gz")))
    st.setup_entities()
    chain = st[0][0]
    chain[6].seqid = gemmi.SeqId(7, " ")   # the water right after ASN 6
    for k in (1, 2, 4, 6):        # VAL 2, HIS 3 consecutive; SER 5 apart; the water after ASN 6
        res = chain[k]
        for atom in [a for a in res if a.name not in ("N", "CA", "C", "O") or res.is_water()]:
            copy = atom.clone()
            atom.altloc, atom.occ = "A", 0.6
            copy.altloc, copy.occ = "B", 0.4
            res.add_atom(copy)
    for atom in [a for a in chain[5] if a.name not in ("N", "CA", "C", "O")]:   # ASN 6: A only
        atom.altloc, atom.occ = "A", 0.5
    groups = OccupancyGroups.from_model(AtomModel.from_structure(st))
    assert groups.labels == ["A/VAL 2 - A/HIS 3 conformer A", "A/VAL 2 - A/HIS 3 conformer B",
                             "A/SER 5 conformer A", "A/SER 5 conformer B", "A/ASN 6",
                             "A/HOH 7 conformer A", "A/HOH 7 conformer B"]
    assert groups.set_size.tolist() == [2, 2, 1, 2]
    # with ASN 6 in conformers A and B too, SER 5 and ASN 6 are one set, the water stays apart
    for atom in [a for a in chain[5] if a.altloc == "A"]:
        copy = atom.clone()
        copy.altloc = "B"
        chain[5].add_atom(copy)
    groups = OccupancyGroups.from_model(AtomModel.from_structure(st))
    assert "A/SER 5 - A/ASN 6 conformer A" in groups.labels and "A/HOH 7 conformer A" in groups.labels


def water_on_two_fold(occ_water: float) -> tuple[gemmi.Structure, gemmi.Atom]:
    """``with_occupancies(0.6, occ_water)`` in P 1 2 1 (5e5z's cell) with the water moved onto the
    two-fold axis (x = 0, z = 0); returns the structure and the water's atom."""
    st = with_occupancies(0.6, occ_water)
    st.spacegroup_hm = "P 1 2 1"
    st.setup_cell_images()
    water = st[0][0][PARTIAL][0]
    frac = st.cell.fractionalize(water.pos)
    water.pos = st.cell.orthogonalize(gemmi.Fractional(0.0, frac.y, 0.0))
    return st, water


def test_lone_group_on_a_special_position_is_capped_by_its_multiplicity():
    """The peptide in P 1 2 1 (5e5z's cell) with its partial water moved onto the two-fold axis
    (x = 0, z = 0): the water's occupancy is refined in [0, 1/2], and its start (0.4) is kept."""
    st, water = water_on_two_fold(0.4)
    model = AtomModel.from_structure(st)
    assert model.cell.is_special_position(water.pos) == 1
    groups = OccupancyGroups.from_model(model)
    assert groups.group_max.tolist() == [1.0, 1.0, 0.5]
    z = groups.logits(model.occ)
    assert torch.allclose(groups.occupancies(z, model.occ), model.occ, atol=1e-12)
    assert 0.0 < float(groups.group_occupancies(torch.tensor([0.0, 0.0, 30.0], dtype=torch.float64))[2]) <= 0.5


def test_full_occupancy_on_a_special_position_is_noted():
    from equipoise.xtal.xray import special_position_notes

    st, water = water_on_two_fold(1.0)
    notes = special_position_notes(AtomModel.from_structure(st))
    assert len(notes) == 1 and "A/HOH 101/O (occupancy 1.00, multiplicity 2)" in notes[0]
    water.occ = 0.5      # (the peptide, which is not made for this space group, has atoms near the axis too)
    assert not any("HOH" in n for n in special_position_notes(AtomModel.from_structure(st)))
