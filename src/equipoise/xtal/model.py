"""Atomic model: a gemmi Structure and its refinable per-atom parameters as torch tensors.

``AtomModel`` reads a PDB or mmCIF file through gemmi, keeps the first model, and exposes the
atoms (in file order: chain, residue, atom; alternate conformers are separate atoms) as tensors:
coordinates (Å), isotropic B (Å²), occupancy and, when present, anisotropic U (Å²). Writing goes
back through a copy of the gemmi Structure, so everything we do not refine (names, TER records,
header, entities) is preserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gemmi
import torch

from equipoise.errors import InputError

#: 8 pi^2: B = 8 pi^2 U (Å²).
B_PER_U = 8.0 * math.pi ** 2

HYDROGEN_MODES = ("strip", "keep", "riding", "add")


@dataclass
class AtomModel:
    """An atomic model with refinable per-atom tensors.

    Attributes
    ----------
    structure: the gemmi Structure (first model only, hydrogens removed unless kept).
    xyz: (n, 3) float64, orthogonal coordinates in Å.
    b_iso: (n,) float64, isotropic B in Å² (for anisotropic atoms gemmi's B_iso as read).
    occ: (n,) float64, occupancies in [0, 1].
    u_aniso: (n, 6) float64 in Å², (u11, u22, u33, u12, u13, u23), zeros rows for isotropic
        atoms; None when no atom is anisotropic.
    elements: gemmi element names (``"C"``, ``"Fe"``), one per atom.
    cell: the unit cell (from the model file or ``with_symmetry``).
    spacegroup: the space group (from the model file or ``with_symmetry``); None when unknown.
    path: the file the model was read from (for error messages), if any.
    """

    structure: gemmi.Structure
    xyz: torch.Tensor
    b_iso: torch.Tensor
    occ: torch.Tensor
    u_aniso: torch.Tensor | None
    elements: list[str]
    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup | None
    path: str | None = None
    hydrogens: str = "strip"
    labels: list[str] = field(default_factory=list)

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.xyz.shape[0])

    @classmethod
    def from_file(cls, path: str | Path, *, hydrogens: str = "strip",
                  dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu") -> "AtomModel":
        """Read a PDB or mmCIF model (plain or gzipped).

        ``hydrogens="strip"`` removes hydrogen atoms; ``"keep"`` keeps them as atoms (restrained
        by the monomer library like any other); ``"riding"`` keeps them for the riding model
        (``equipoise.xtal.hydrogens``); ``"add"`` removes them, for ``hydrogens.add_hydrogens``
        to add riding ones. Unknown scattering types raise ``InputError``
        naming the file and the atom.
        """
        path = Path(path)
        if hydrogens not in HYDROGEN_MODES:
            raise InputError(f"hydrogens must be one of {HYDROGEN_MODES}, got {hydrogens!r}",
                             field="hydrogens")
        if not path.is_file():
            raise InputError("model file not found", path=path)
        try:
            structure = gemmi.read_structure(str(path))
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"gemmi cannot read the model: {exc}", path=path) from exc
        return cls.from_structure(structure, hydrogens=hydrogens, dtype=dtype, device=device,
                                  path=str(path))

    @classmethod
    def from_structure(cls, structure: gemmi.Structure, *, hydrogens: str = "strip",
                       dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu",
                       path: str | None = None) -> "AtomModel":
        """Build from a gemmi Structure (copied; only the first model is kept)."""
        st = structure.clone()
        if len(st) == 0 or st[0].count_atom_sites() == 0:
            raise InputError("the model has no atoms", path=path)
        while len(st) > 1:
            del st[len(st) - 1]
        st.setup_entities()
        if hydrogens in ("strip", "add"):
            st.remove_hydrogens()
        st.remove_empty_chains()
        xyz, b, occ, aniso, elements, labels = [], [], [], [], [], []
        any_aniso = False
        for chain in st[0]:
            for res in chain:
                for atom in res:
                    label = atom_label(chain, res, atom)
                    element = atom.element
                    if element.atomic_number == 0:
                        raise InputError(
                            f"atom {label}: unknown scattering type {element.name!r} "
                            "(the element column or atom name gives no known element)",
                            path=path, field=label)
                    if not math.isfinite(atom.pos.x + atom.pos.y + atom.pos.z + atom.b_iso + atom.occ):
                        raise InputError(f"atom {label}: non-finite coordinate, B or occupancy",
                                         path=path, field=label)
                    if not 0.0 <= atom.occ <= 1.0 + 1e-6:
                        raise InputError(f"atom {label}: occupancy {atom.occ} outside [0, 1]",
                                         path=path, field=label)
                    xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                    b.append(atom.b_iso)
                    occ.append(atom.occ)
                    if atom.aniso.nonzero():
                        any_aniso = True
                        a = atom.aniso
                        aniso.append((a.u11, a.u22, a.u33, a.u12, a.u13, a.u23))
                    else:
                        aniso.append((0.0,) * 6)
                    elements.append(element.name)
                    labels.append(label)
        opts = dict(dtype=dtype, device=device)
        spacegroup = st.find_spacegroup()
        return cls(structure=st, xyz=torch.tensor(xyz, **opts), b_iso=torch.tensor(b, **opts),
                   occ=torch.tensor(occ, **opts),
                   u_aniso=torch.tensor(aniso, **opts) if any_aniso else None,
                   elements=elements, cell=st.cell, spacegroup=spacegroup, path=path,
                   hydrogens=hydrogens, labels=labels)

    def with_symmetry(self, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup) -> "AtomModel":
        """Set the cell and space group (e.g. from the reflection data when the model has none)."""
        self.structure.cell = cell
        self.structure.spacegroup_hm = spacegroup.xhm()
        self.structure.setup_cell_images()
        self.cell = self.structure.cell
        self.spacegroup = spacegroup
        return self

    def to_structure(self, xyz: torch.Tensor | None = None, b_iso: torch.Tensor | None = None,
                     occ: torch.Tensor | None = None) -> gemmi.Structure:
        """A copy of the structure with the given (or the model's current) xyz (Å), B (Å²), occ.

        Anisotropic atoms whose B changed get their U scaled by the ratio of the new to the old B.
        """
        xyz_v = (self.xyz if xyz is None else xyz).detach().cpu().double().tolist()
        b_v = (self.b_iso if b_iso is None else b_iso).detach().cpu().double().tolist()
        occ_v = (self.occ if occ is None else occ).detach().cpu().double().tolist()
        if len(xyz_v) != self.n_atoms or len(b_v) != self.n_atoms or len(occ_v) != self.n_atoms:
            raise InputError(f"expected {self.n_atoms} atoms in xyz/b_iso/occ")
        st = self.structure.clone()
        i = 0
        for chain in st[0]:
            for res in chain:
                for atom in res:
                    atom.pos = gemmi.Position(*xyz_v[i])
                    old_b = atom.b_iso
                    atom.b_iso = b_v[i]
                    atom.occ = occ_v[i]
                    if atom.aniso.nonzero() and old_b > 0 and b_v[i] != old_b:
                        r = b_v[i] / old_b
                        a = atom.aniso
                        atom.aniso = gemmi.SMat33f(a.u11 * r, a.u22 * r, a.u33 * r,
                                                   a.u12 * r, a.u13 * r, a.u23 * r)
                    i += 1
        return st

    def write(self, path: str | Path, *, remarks: list[str] | None = None,
              xyz: torch.Tensor | None = None, b_iso: torch.Tensor | None = None,
              occ: torch.Tensor | None = None) -> Path:
        """Write PDB (``.pdb``/``.ent``) or mmCIF (``.cif``/``.mmcif``) by suffix.

        ``remarks`` are free-text statistics lines: PDB ``REMARK   3`` records, or an mmCIF
        ``_equipoise_refine`` loop; the file is written atomically.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".pdb", ".ent", ".cif", ".mmcif"):
            raise InputError(f"unknown model format {suffix!r}: expected .pdb or .cif", path=path)
        st = self.to_structure(xyz=xyz, b_iso=b_iso, occ=occ)
        tmp = path.with_name(path.name + ".tmp")
        try:
            if suffix in (".pdb", ".ent"):
                st.raw_remarks = [f"REMARK   3 {line}"[:80].ljust(80) for line in (remarks or [])]
                st.write_pdb(str(tmp))
            else:
                doc = st.make_mmcif_document()
                if remarks:
                    block = doc.sole_block()
                    loop = block.init_loop("_equipoise_refine.", ["line", "text"])
                    for k, line in enumerate(remarks, start=1):
                        loop.add_row([str(k), gemmi.cif.quote(line)])
                doc.write_file(str(tmp))
            tmp.replace(path)
        except OSError as exc:
            raise InputError(f"cannot write the model: {exc}", path=path) from exc
        return path


#: an atom with a symmetry mate closer than this (Å) is on a special position (gemmi's default)
SPECIAL_POSITION_DIST = 0.8


def site_multiplicity(cell: gemmi.UnitCell, pos: gemmi.Position) -> int:
    """m of the special position at ``pos`` (Å): 1 + the symmetry mates within
    ``SPECIAL_POSITION_DIST`` (gemmi's ``UnitCell.is_special_position``); 1 on a general position."""
    return 1 + cell.is_special_position(pos, SPECIAL_POSITION_DIST)


def residue_label(chain: gemmi.Chain, res: gemmi.Residue) -> str:
    """``A/LEU 12`` (with the insertion code, ``A/LEU 12A``)."""
    return f"{chain.name}/{res.name} {res.seqid.num}{res.seqid.icode.strip()}"


def atom_label(chain: gemmi.Chain, res: gemmi.Residue, atom: gemmi.Atom) -> str:
    """``A/LEU 12/CA`` (with ``.B`` for alternate conformer B)."""
    alt = f".{atom.altloc}" if atom.altloc != "\0" else ""
    return f"{residue_label(chain, res)}/{atom.name}{alt}"
