"""What a model's LINK / ``struct_conn`` records and its unrestrained residues add to the topology.

Three rules, each as servalcat applies them around ``gemmi.prepare_topology`` (servalcat's
``utils/restraints.py``, Yamashita et al. 2023, Acta Cryst. D79, 368):

- **Metal coordination** (a connection with a metal partner) that the library's links do not
  cover (it has e.g. ``ZN-CYS``, ``FE-HISNE``) is taken out of the connections before the topology
  is built (``take_unknown_metal_connections``): gemmi would otherwise restrain it as a bond at the
  sum of the two *ion* radii (Cu-S 1.11 Å). Such a site is held by the data and by the metal rule
  of the non-bonded repulsion (``d_min`` = sum of ion radii, REFMAC's VDWR metal rule).
- **Other links the library lacks** (a covalent ligand, a glycan on ASN) become a bond restraint
  at gemmi's ideal distance for the two atom types (``MonLib.find_ideal_distance``: the library's
  ``ener_lib`` bond table, else covalent radii; esd 0.02 Å), which also excludes the pair from
  non-bonded repulsion. ``link_report`` names each one.
- **Links to a symmetry mate** (``asu`` different): gemmi's restraints of such a link would be
  evaluated between the two atoms of the asymmetric unit, far apart. Its bonds become
  ``symmetry_bonds``, measured to the mate's nearest image (``Restraints`` gives them a rotation
  and translation, as the non-bonded pairs); its angles, torsions, planes and chiralities are left
  out; its bonded pair is not repelled across symmetry; a bond more than ``LINK_STRETCH_MAX``
  longer than its ideal, to the nearest mate, is not applied (``link_report``).

Residues refined without restraints (``--unrestrained``) get bonds inferred from distances
(``inferred_bonds``: covalent radii plus ``BOND_TOLERANCE``), used only to exclude their bonded,
1-3 and 1-4 pairs from the repulsion, not as restraints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import gemmi

#: a pair is bonded when closer than the sum of covalent radii plus this, Å (the usual
#: connectivity rule of structure programs, e.g. Open Babel's 0.45 Å)
BOND_TOLERANCE = 0.4
#: an auto-made link (not in the library) whose atoms are further apart than its ideal distance
#: plus this, Å, is not applied: the LINK record does not describe the model
LINK_STRETCH_MAX = 0.5
#: notes of one kind listed one by one; the rest are counted (a model may have hundreds of
#: metal-water LINK records)
MAX_NOTES_PER_KIND = 10

_KINDS = {gemmi.RKind.Bond: "bond", gemmi.RKind.Angle: "angle", gemmi.RKind.Torsion: "torsion",
          gemmi.RKind.Chirality: "chiral", gemmi.RKind.Plane: "plane"}


@dataclass
class LinkReport:
    """What ``link_report`` found: ``skipped`` (kind, index into ``topo.bonds``/``angles``/...)
    restraints not to use; ``symmetry_pairs`` (i, j), i < j, model indices of symmetry-linked
    atoms (excluded from non-bonded repulsion across symmetry); ``symmetry_bonds`` (i, j, ideal Å,
    esd Å, label) of those links, to be measured to the mate; ``notes`` for the log."""

    skipped: set[tuple[str, int]] = field(default_factory=set)
    symmetry_pairs: set[tuple[int, int]] = field(default_factory=set)
    symmetry_bonds: list[tuple[int, int, float, float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _capped(notes: list[str], what: str) -> list[str]:
    """The first ``MAX_NOTES_PER_KIND`` notes and a count of the others."""
    if len(notes) <= MAX_NOTES_PER_KIND:
        return notes
    return notes[:MAX_NOTES_PER_KIND] + [f"... and {len(notes) - MAX_NOTES_PER_KIND} more {what}"]


def _address_label(a: gemmi.AtomAddress) -> str:
    return f"{a.chain_name}/{a.res_id.name} {a.res_id.seqid.num}{a.res_id.seqid.icode.strip()}/{a.atom_name}"


def take_unknown_metal_connections(st: gemmi.Structure, lib: gemmi.MonLib) -> list[str]:
    """Remove from ``st.connections`` each connection with exactly one metal partner that no
    library link matches; returns a note per removed connection (atoms, distance)."""
    notes, keep = [], []
    for con in st.connections:
        cra1 = st[0].find_cra(con.partner1, ignore_segment=True)
        cra2 = st[0].find_cra(con.partner2, ignore_segment=True)
        if cra1.atom is None or cra2.atom is None or con.type == gemmi.ConnectionType.Hydrog \
                or cra1.atom.element.is_metal == cra2.atom.element.is_metal:
            keep.append(con)
            continue
        link = lib.match_link(cra1.residue, cra1.atom.name, cra1.atom.altloc,
                              cra2.residue, cra2.atom.name, cra2.atom.altloc)[0]
        if link is not None:
            keep.append(con)
            continue
        im = st.cell.find_nearest_image(cra1.atom.pos, cra2.atom.pos, con.asu)
        notes.append(f"metal coordination {_address_label(con.partner1)} - {_address_label(con.partner2)}"
                     f" ({im.dist():.2f} Å{'' if im.same_asu() else ', symmetry mate'}) has no link in the "
                     "library: not restrained as a bond (the non-bonded minimum is the sum of ion radii)")
    st.connections.clear()
    for con in keep:
        st.connections.append(con)
    return _capped(notes, "metal coordinations without a library link")


def link_report(topo: gemmi.Topo, lib: gemmi.MonLib, index: Callable[[gemmi.Atom], int],
                labels: list[str], cell: gemmi.UnitCell) -> LinkReport:
    """Symmetry links and auto-made links (not in the library) of ``topo`` (see the module
    docstring); ``index(atom)`` is the model index, ``labels`` the model's atom labels, ``cell``
    the model's (for the mates of symmetry links)."""
    out = LinkReport()
    auto: list[str] = []
    for link in topo.extras:
        chem = lib.get_link(link.link_id) if link.link_id else None
        bonds = [topo.bonds[r.index] for r in link.link_rules if r.rkind == gemmi.RKind.Bond]
        pairs = [(index(b.atoms[0]), index(b.atoms[1])) for b in bonds]
        drop = False
        if link.asu == gemmi.Asu.Different:
            drop = True
            out.symmetry_pairs.update((min(i, j), max(i, j)) for i, j in pairs)
            for (i, j), b in zip(pairs, bonds):
                d = cell.find_nearest_image(b.atoms[0].pos, b.atoms[1].pos, gemmi.Asu.Different).dist()
                if not d <= b.restr.value + LINK_STRETCH_MAX:
                    out.notes.append(f"link {link.link_id} to a symmetry mate: {labels[i]} - {labels[j]} is "
                                     f"{d:.2f} Å from the nearest mate, more than {LINK_STRETCH_MAX} Å over its "
                                     f"ideal {b.restr.value:.2f} Å: not applied (check the LINK record)")
                elif b.restr.esd > 0:
                    out.symmetry_bonds.append((i, j, b.restr.value, b.restr.esd,
                                               f"{labels[i]} - {labels[j]} (symmetry)"))
                    out.notes.append(f"link {link.link_id} to a symmetry mate ({labels[i]} - {labels[j]}, {d:.2f} Å): "
                                     "its bond is restrained to the mate's nearest image; its angles, torsions "
                                     "and planes are not applied")
        elif chem is not None and chem.name.startswith("auto-"):
            for b in bonds:
                d, ideal = b.calculate(), b.restr.value
                if not d <= ideal + LINK_STRETCH_MAX:
                    drop = True
                    out.notes.append(f"LINK {labels[index(b.atoms[0])]} - {labels[index(b.atoms[1])]} is "
                                     f"{d:.2f} Å long, more than {LINK_STRETCH_MAX} Å over its ideal "
                                     f"{ideal:.2f} Å: not applied (check the LINK record)")
                else:
                    auto.append(f"LINK {labels[index(b.atoms[0])]} - {labels[index(b.atoms[1])]} is not "
                                f"in the monomer library: restrained as a bond of {ideal:.2f} Å "
                                f"(esd {b.restr.esd:.2f}; gemmi's ideal distance for the atom types; "
                                f"now {d:.2f} Å)")
        if drop:
            out.skipped.update((_KINDS[r.rkind], r.index) for r in link.link_rules)
    out.notes += _capped(auto, "links restrained at gemmi's ideal distance")
    return out


def inferred_bonds(st: gemmi.Structure, residues: set[str]) -> list[tuple[int, int]]:
    """Bonded pairs (i, j) by distance (covalent radii + ``BOND_TOLERANCE``, same asymmetric
    unit, no metals) with at least one atom in a residue named in ``residues``; atom indices are
    the atoms' ``serial`` values, which the caller sets to model order."""
    if not residues:
        return []
    ns = gemmi.NeighborSearch(st[0], st.cell, 3.0).populate()
    cs = gemmi.ContactSearch(2.6)
    cs.ignore = gemmi.ContactSearch.Ignore.Nothing
    out = set()
    for r in cs.find_contacts(ns):
        a1, a2 = r.partner1.atom, r.partner2.atom
        if r.partner1.residue.name not in residues and r.partner2.residue.name not in residues:
            continue
        if a1.element.is_metal or a2.element.is_metal or a1.serial == a2.serial:
            continue
        if not st.cell.find_nearest_image(a1.pos, a2.pos, gemmi.Asu.Any).same_asu():
            continue
        if a1.altloc != "\0" and a2.altloc != "\0" and a1.altloc != a2.altloc:
            continue
        if r.dist < a1.element.covalent_r + a2.element.covalent_r + BOND_TOLERANCE:
            out.add((min(a1.serial, a2.serial), max(a1.serial, a2.serial)))
    return sorted(out)


def metal_dmin(ion_i: float, ion_j: float) -> float | None:
    """Non-bonded minimum of a pair with a metal: the sum of the two ion radii (Å; REFMAC's and
    servalcat's VDWR metal rule, ``refine/geom.hpp``), None when either radius is unknown."""
    d = ion_i + ion_j
    return d if math.isfinite(d) else None
