"""LINK records, metal sites and unrestrained residues in the restraints (``equipoise.xtal.links``)."""

import gemmi
import pytest
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.restraints import Restraints, bond_lengths
from tests.xtal.shared_data import data_file, monlib_or_skip


def _peptide() -> gemmi.Structure:
    monlib_or_skip()
    st = gemmi.read_structure(str(data_file("5e5z.pdb.gz")))
    st.setup_entities()
    return st


def _add_ion(st, element, near, distance, seq):
    """A one-atom residue of ``element`` at ``distance`` Å from atom ``near`` (a gemmi.Atom), on
    the side away from the peptide's centre."""
    centre = gemmi.Position(0, 0, 0)
    atoms = [a for r in st[0]["A"] for a in r]
    for a in atoms:
        centre += a.pos
    centre /= len(atoms)
    away = near.pos - centre
    pos = near.pos + away * (distance / away.length())
    res = gemmi.Residue()
    res.name, res.seqid, res.het_flag = element.upper(), gemmi.SeqId(seq, " "), "H"
    atom = gemmi.Atom()
    atom.name, atom.element, atom.pos, atom.occ, atom.b_iso = element.upper(), gemmi.Element(element), pos, 1.0, 10.0
    res.add_atom(atom)
    st[0]["A"].add_residue(res)
    st.setup_entities()


def _connect(st, kind, a, b, asu=gemmi.Asu.Same):
    con = gemmi.Connection()
    con.name, con.type, con.asu = f"c{len(st.connections)}", kind, asu
    con.partner1 = gemmi.make_address(st[0]["A"], *a)
    con.partner2 = gemmi.make_address(st[0]["A"], *b)
    st.connections.append(con)


def _find(st, seq, name):
    ch = st[0]["A"]
    for res in ch:
        if res.seqid.num == seq:
            return res, res[name][0]
    raise KeyError((seq, name))


def _pairs(r, kind):
    return {tuple(sorted(p)) for p in r.sets[kind].index.tolist()}


def _index(model, label):
    return model.labels.index(label)


def test_metal_sites_use_library_links_or_ion_radii():
    """ZN-HIS NE2 is a library link (ZN-HISNE, 2.058 Å); MG to a water is not: gemmi would make it
    a bond at the sum of ion radii, so it is taken out, and its repulsion minimum is the sum of
    the ion radii (Mg 0.71 + O 1.28 Å), not ion + van der Waals (2.23 Å)."""
    st = _peptide()
    _, ne2 = _find(st, 3, "NE2")
    _add_ion(st, "Zn", ne2, 2.06, 201)
    _, water = _find(st, 101, "O")
    _add_ion(st, "Mg", water, 2.08, 202)
    _connect(st, gemmi.ConnectionType.MetalC, _find(st, 201, "ZN"), _find(st, 3, "NE2"))
    _connect(st, gemmi.ConnectionType.MetalC, _find(st, 202, "MG"), _find(st, 101, "O"))
    model = AtomModel.from_structure(st)
    r = Restraints.build(model)
    zn, nz = _index(model, "A/ZN 201/ZN"), _index(model, "A/HIS 3/NE2")
    mg, ow = _index(model, "A/MG 202/MG"), _index(model, "A/HOH 101/O")
    bonds = r.sets["bond"]
    k = [i for i, p in enumerate(bonds.index.tolist()) if sorted(p) == sorted((zn, nz))]
    assert len(k) == 1 and bonds.ideal[k[0]].item() == pytest.approx(2.058)
    assert tuple(sorted((mg, ow))) not in _pairs(r, "bond")
    assert any("metal coordination A/MG 202/MG - A/HOH 101/O" in n for n in r.notes)
    assert r._dmin(mg, ow) == pytest.approx(0.71 + 1.28)
    # at the built 2.08 Å the Mg-O pair is listed but not pushed apart; Zn-NE2 is a bond
    dev = r.deviations("nonbonded", model.xyz)
    nb = [tuple(sorted(p)) for p in r.sets["nonbonded"].index.tolist()]
    k = nb.index(tuple(sorted((mg, ow))))
    assert dev[k] == 0 and r.sets["nonbonded"].ideal[k].item() == pytest.approx(1.99)
    assert tuple(sorted((zn, nz))) not in nb


def test_link_missing_from_the_library_becomes_a_bond_or_is_refused():
    """A covalent LINK the library lacks is a bond at gemmi's ideal distance (esd 0.02) and the
    pair is no longer repelled; a LINK whose atoms are far apart is not applied; both are noted."""
    st = _peptide()
    _, og = _find(st, 5, "OG")
    # put the water's O 1.43 Å from SER 5 OG, then link them
    _, water = _find(st, 101, "O")
    water.pos = og.pos + (water.pos - og.pos) * (1.43 / water.pos.dist(og.pos))
    _connect(st, gemmi.ConnectionType.Covale, _find(st, 5, "OG"), _find(st, 101, "O"))
    _connect(st, gemmi.ConnectionType.Covale, _find(st, 1, "CD1"), _find(st, 6, "ND2"))
    model = AtomModel.from_structure(st)
    r = Restraints.build(model)
    i, j = _index(model, "A/SER 5/OG"), _index(model, "A/HOH 101/O")
    bonds = r.sets["bond"]
    k = [n for n, p in enumerate(bonds.index.tolist()) if sorted(p) == sorted((i, j))]
    assert len(k) == 1 and bonds.sigma[k[0]].item() == pytest.approx(0.02)
    assert 1.3 < bonds.ideal[k[0]].item() < 1.5
    assert tuple(sorted((i, j))) not in _pairs(r, "nonbonded")
    far = tuple(sorted((_index(model, "A/LEU 1/CD1"), _index(model, "A/ASN 6/ND2"))))
    assert far not in _pairs(r, "bond")
    assert any("A/SER 5/OG - A/HOH 101/O is not in the monomer library" in n for n in r.notes)
    assert any("A/LEU 1/CD1 - A/ASN 6/ND2" in n and "not applied" in n for n in r.notes)


def test_link_to_a_symmetry_mate_is_a_bond_to_the_mate():
    """A link across symmetry is restrained between atom 1 and the nearest image of atom 2 (not
    the two atoms of the asymmetric unit, far apart), differentiably; its angles are left out and
    the pair is not repelled across symmetry."""
    st = _peptide()
    model0 = AtomModel.from_structure(st)
    r0 = Restraints.build(model0)
    s = r0.sets["nonbonded"]
    sym = [k for k, lab in enumerate(s.labels) if lab.endswith("(symmetry)") and "HOH" not in lab]
    k = min(sym, key=lambda k: s.ideal[k].item())        # a symmetry contact between polymer atoms
    i, j = s.index[k].tolist()
    a, b = model0.labels[i], model0.labels[j]

    def address(label):
        _, res, name = label.split("/")
        return _find(st, int(res.split()[1]), name)

    # put atom 1 at 1.45 Å from the mate of atom 2, then link them
    _, atom_a = address(a)
    _, atom_b = address(b)
    im = model0.cell.find_nearest_image(atom_a.pos, atom_b.pos, gemmi.Asu.Different)
    mate_b = model0.cell.find_nearest_pbc_position(atom_a.pos, atom_b.pos, im.sym_idx)
    atom_a.pos = mate_b + (atom_a.pos - mate_b) * (1.45 / atom_a.pos.dist(mate_b))
    _connect(st, gemmi.ConnectionType.Covale, address(a), address(b), asu=gemmi.Asu.Different)
    # and a symmetry LINK whose atoms are nowhere near each other's mates: refused
    pos0 = [at.pos for ch in model0.structure[0] for res in ch for at in res]
    far = next((p, q) for p in range(model0.n_atoms) for q in range(p + 1, model0.n_atoms)
               if "HOH" not in model0.labels[p] + model0.labels[q]
               and model0.cell.find_nearest_image(pos0[p], pos0[q], gemmi.Asu.Different).dist() > 5.0)
    _connect(st, gemmi.ConnectionType.Covale, address(model0.labels[far[0]]), address(model0.labels[far[1]]),
             asu=gemmi.Asu.Different)
    model = AtomModel.from_structure(st)
    r = Restraints.build(model)
    assert any("nearest mate" in n and "not applied" in n and model0.labels[far[0]] in n for n in r.notes)
    pair = tuple(sorted((i, j)))
    assert pair not in _pairs(r, "nonbonded") and pair in r.symmetry_pairs
    assert any("symmetry mate" in n and a in n for n in r.notes)
    bonds = r.sets["bond"]
    assert r.count("bond") == r0.count("bond") + 1 and bonds.labels[-1].endswith("(symmetry)")
    assert sorted(bonds.index[-1].tolist()) == sorted((i, j))
    pos = [at.pos for ch in model.structure[0] for res in ch for at in res]
    mate = model.cell.find_nearest_image(pos[i], pos[j], gemmi.Asu.Different).dist()
    assert mate == pytest.approx(1.45, abs=1e-3) and pos[i].dist(pos[j]) > 4.0
    dev = r.deviations("bond", model.xyz)
    assert dev[-1].item() == pytest.approx(mate - bonds.ideal[-1].item(), abs=1e-9)
    # the ordinary bonds are unchanged by the rotation/translation columns
    assert torch.allclose(dev[:-1], bond_lengths(model.xyz, bonds.index[:-1]) - bonds.ideal[:-1], atol=1e-12)
    x = model.xyz.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: r.loss("bond", y), (x,))
    for kind in ("angle", "torsion", "plane", "chiral"):
        assert r.count(kind) == r0.count(kind)


def test_unrestrained_residue_keeps_its_bonded_atoms_together():
    """Without a dictionary (``--unrestrained``) a residue's bonds are inferred from distances
    (covalent radii): its bonded, 1-3 and 1-4 pairs and its peptide bonds to the neighbours are
    not repelled, so the deposited residue has no non-bonded outlier."""
    st = _peptide()
    st[0]["A"][1].name = "XQX"
    model = AtomModel.from_structure(st)
    r = Restraints.build(model, unrestrained=True)
    assert r.unrestrained == ["XQX"]
    z = r.z_scores("nonbonded", model.xyz)
    worst = [lab for lab, v in zip(r.sets["nonbonded"].labels, z.tolist()) if v < -3]
    assert worst == []
    # the bond VAL(XQX) 2 C - HIS 3 N is excluded though no restraint holds it
    c, n = _index(model, "A/XQX 2/C"), _index(model, "A/HIS 3/N")
    assert r.hops[(min(c, n), max(c, n))] == 1
    assert torch.isfinite(r.loss("nonbonded", model.xyz))


def test_many_notes_of_a_kind_are_counted():
    from equipoise.xtal.links import MAX_NOTES_PER_KIND, _capped

    notes = [f"n{k}" for k in range(MAX_NOTES_PER_KIND + 5)]
    out = _capped(notes, "things")
    assert out[:-1] == notes[:MAX_NOTES_PER_KIND] and out[-1] == "... and 5 more things"
    assert _capped(notes[:3], "things") == notes[:3]


def test_half_occupied_residue_is_not_repelled_by_its_own_image():
    """The peptide in P 1 2 1 moved so that ASN 6's side chain crosses the two-fold axis: at
    occupancy 1 the residue clashes with its own image (listed), at occupancy 0.5 the two copies
    are alternatives and are not repelled from each other; other contacts stay."""
    st = _peptide()
    st.spacegroup_hm = "P 1 2 1"
    st.setup_cell_images()
    _, nd2 = _find(st, 6, "ND2")
    frac = st.cell.fractionalize(nd2.pos)
    shift = st.cell.orthogonalize(gemmi.Fractional(0.0, frac.y, 0.0)) + gemmi.Position(0.6, 0, 0) - nd2.pos
    for res in st[0]["A"]:
        for atom in res:
            atom.pos = atom.pos + shift
    asn = [r for r in st[0]["A"] if r.seqid.num == 6][0]
    found = {}
    for occ in (1.0, 0.5):
        for atom in asn:
            atom.occ = occ
        model = AtomModel.from_structure(st)
        r = Restraints.build(model)
        s = r.sets["nonbonded"]
        found[occ] = [lab for lab in s.labels if lab.endswith("(symmetry)") and lab.count("ASN 6") == 2]
    assert found[1.0] and not found[0.5]
