"""Restraints: values against gemmi's own topology, float64 gradient checks, missing residues."""

import math

import gemmi
import pytest
import torch

from equipoise.errors import InputError
from equipoise.xtal.model import AtomModel
from equipoise.xtal.monlib import read_monlib
from equipoise.xtal.restraints import KINDS, Restraints, angles_deg, dihedrals_deg, wrap_deg
from tests.xtal.shared_data import data_file, monlib_or_skip


@pytest.fixture(scope="module")
def peptide():
    monlib_or_skip()
    model = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    return model, Restraints.build(model)


def test_counts_and_values_match_gemmi(peptide):
    model, r = peptide
    st = model.structure.clone()
    lib = read_monlib(sorted({res.name for ch in st[0] for res in ch}))
    topo = gemmi.prepare_topology(st, lib, h_change=gemmi.HydrogenChange.NoChange, reorder=False,
                                  warnings=None, ignore_unknown_links=True)
    ours = r.deviations("bond", model.xyz) + r.sets["bond"].ideal
    theirs = torch.tensor([b.calculate() for b in topo.bonds], dtype=torch.float64)
    assert len(r.sets["bond"]) == len(topo.bonds) == 46
    assert torch.allclose(ours.sort().values, theirs.sort().values, atol=1e-5)
    ang = torch.tensor([math.degrees(a.calculate()) for a in topo.angles], dtype=torch.float64)
    assert torch.allclose((r.deviations("angle", model.xyz) + r.sets["angle"].ideal).sort().values,
                          ang.sort().values, atol=1e-4)
    stats = r.statistics(model.xyz)
    # the deposited peptide is well refined (phenix): bond rmsZ below 1, angles near 1
    assert 0.3 < stats["bond"]["rmsz"] < 1.0 and stats["bond"]["rmsd"] < 0.02
    assert stats["angle"]["rmsd"] < 2.5 and stats["chiral"]["n"] == 6 and stats["plane"]["n"] > 20
    assert r.sets["nonbonded"].rot is not None
    assert any("symmetry" in lab for lab in r.sets["nonbonded"].labels)


def test_geometry_functions_on_known_shapes():
    xyz = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0], [0, 1.0, 1.0]], dtype=torch.float64)
    assert angles_deg(xyz, torch.tensor([[0, 1, 2]]))[0].item() == pytest.approx(90.0)
    assert dihedrals_deg(xyz, torch.tensor([[0, 1, 2, 3]]))[0].item() == pytest.approx(-90.0)
    assert wrap_deg(torch.tensor([170.0]), torch.tensor([3.0]))[0].item() == pytest.approx(50.0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_float64(peptide, kind):
    model, r = peptide
    gen = torch.Generator().manual_seed(1)
    xyz = (model.xyz + 0.1 * torch.randn(model.xyz.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    if kind == "nonbonded":
        assert len(r.sets["nonbonded"]) > 0
    assert torch.autograd.gradcheck(lambda x: r.loss(kind, x), (xyz,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_shaking_raises_rmsz_and_outliers_name_atoms(peptide):
    model, r = peptide
    gen = torch.Generator().manual_seed(0)
    shaken = model.xyz + 0.3 * torch.randn(model.xyz.shape, generator=gen, dtype=torch.float64)
    assert r.statistics(shaken)["bond"]["rmsz"] > 5 * r.statistics(model.xyz)["bond"]["rmsz"]
    worst = r.outliers(shaken, z_min=4.0)
    assert worst and worst[0]["atoms"].startswith("A/") and abs(worst[0]["z"]) >= abs(worst[-1]["z"])


def test_missing_dictionary_is_listed_or_unrestrained(tmp_path):
    monlib_or_skip()
    text = data_file("5e5z.pdb.gz")
    st = gemmi.read_structure(str(text))
    st[0][0][1].name = "XQX"                        # no such monomer in the library
    path = tmp_path / "odd.pdb"
    st.write_pdb(str(path))
    model = AtomModel.from_file(path)
    with pytest.raises(InputError, match="XQX"):
        Restraints.build(model)
    r = Restraints.build(model, unrestrained=True)
    assert r.unrestrained == ["XQX"] and 0 < len(r.sets["bond"]) < 46


def test_symmetry_contacts_use_the_nearest_image(peptide):
    model, r = peptide
    s = r.sets["nonbonded"]
    x2 = (s.rot @ model.xyz[s.index[:, 1]].unsqueeze(-1)).squeeze(-1) + s.shift
    ours = (model.xyz[s.index[:, 0]] - x2).norm(dim=-1)
    pos = [a.pos for ch in model.structure[0] for res in ch for a in res]
    theirs = torch.tensor([model.cell.find_nearest_image(pos[i], pos[j], gemmi.Asu.Any).dist()
                           for i, j in s.index.tolist()], dtype=torch.float64)
    assert torch.allclose(ours, theirs, atol=1e-9)
    # no bonded pair is listed as a contact, in the same unit or across a cell edge
    bonded = {tuple(sorted(p)) for p in r.sets["bond"].index.tolist()}
    assert not any(tuple(sorted(p)) in bonded and d < 2.0 for p, d in zip(s.index.tolist(), ours.tolist()))


def test_missing_link_names_the_link_and_the_fix():
    """gemmi's 'ignoring link' (here the DNA/RNA backbone link of 1pfe, measured with the
    installed library) becomes an error that says which link, what it is and where to get it."""
    from equipoise.xtal.restraints import _topology_error

    lib = gemmi.MonLib()
    message = _topology_error("Warning: ignoring link 'p' as it is not in the monomer library", lib)
    assert "no link 'p'" in message and "DNA/RNA" in message and "--monlib" in message
    other = _topology_error("some other failure", lib)
    assert other == "gemmi cannot build the topology: some other failure"
