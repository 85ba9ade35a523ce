"""Geometry restraints from the monomer library, as index tensors and differentiable torch functions.

``Restraints.build`` runs ``gemmi.prepare_topology`` once (bonds, angles, torsions, planes,
chiral centres of every residue, peptide/disulfide/other links from the library) and keeps, per
kind, atom indices into ``AtomModel`` order, ideal values and sigmas. ``z_scores(kind, xyz)``
returns the per-restraint deviations divided by their sigma; ``loss(kind, xyz)`` is the sum of
squared z (the negative log-likelihood of Gaussian restraints, as REFMAC and servalcat use:
Murshudov et al. 2011, Acta Cryst. D67, 355; Yamashita et al. 2023, Acta Cryst. D79, 368).

Non-bonded repulsion (``nonbonded`` kind) acts on pairs closer than ``d_min`` that are neither
1-2, 1-3 nor 1-4 related, including contacts with symmetry mates. ``d_min`` is the sum of the
library's ``ener_lib.cif`` van der Waals radii, ``HBOND_DMIN`` for a donor-acceptor pair, or the sum
of the two ion radii for a pair with a metal, as in REFMAC's VDW restraints; the penalty is
``((d - d_min)/sigma)^2`` for ``d < d_min`` only. The pair list is rebuilt by ``update_pairs(xyz)``
(once per macro-cycle).

The same contact search lists the pairs of the B-factor (ADP) similarity restraints,
``adp_pairs()``: every pair of atoms within ``CONTACT_CUTOFF`` (symmetry mates included), with
the sigma of its relation (1-2, 1-3, 1-4 in the bond graph, or none) and a distance factor,
as REFMAC's and servalcat's ADP restraints use (``ADP_PAIR_SIGMAS``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import gemmi
import torch
from torch import Tensor

from equipoise.errors import InputError
from equipoise.xtal.links import inferred_bonds, link_report, metal_dmin, take_unknown_metal_connections
from equipoise.xtal.model import AtomModel, atom_label
from equipoise.xtal.monlib import read_monlib

KINDS = ("bond", "angle", "torsion", "plane", "chiral", "nonbonded")
#: torsion labels that are conformational, not restraints (REFMAC and servalcat leave them out)
SKIPPED_TORSIONS = ("phi", "psi")
#: esd of a chiral volume, Å^3 (REFMAC default)
CHIRAL_SIGMA = 0.2
#: sigma of the non-bonded repulsion, Å (REFMAC's VDW sigma)
NONBONDED_SIGMA = 0.2
#: minimum distance of a hydrogen-bonded donor-acceptor pair, Å (REFMAC: vdw_radius of H-bond pairs)
HBOND_DMIN = 2.6
#: a metal's radius for d_min, Å, when the library gives it no ion radius
METAL_DMIN = 2.0
#: pairs within d_min + this margin (Å) are listed, so that atoms moving closer during a cycle count
PAIR_MARGIN = 0.5
#: contact search radius, Å (beyond any d_min); also the range of the ADP similarity pairs
CONTACT_CUTOFF = 4.0
#: sigma of the relative B difference (B_i - B_j) / sqrt(B_i B_j) of a pair by its relation in the
#: bond graph (hops 1, 2, 3) and for any other pair within CONTACT_CUTOFF (key 0): servalcat's
#: defaults of its KL-divergence ADP restraint (``Geometry::adpr_kl_sigs`` in servalcat's
#: ``refine/geom.hpp``: bond 0.1, angle 0.15, torsion 0.3, non-bonded 0.7; Murshudov et al. 2011,
#: Acta Cryst. D67, 355, for the KL form)
ADP_PAIR_SIGMAS = {1: 0.1, 2: 0.15, 3: 0.3, 0: 0.7}


@dataclass
class RestraintSet:
    """One kind of restraint: ``index`` (m, k) atom indices, ``ideal`` (m,), ``sigma`` (m,).

    Units: Å for bonds and non-bonded d_min, degrees for angles and torsions, Å^3 for chiral
    volumes, Å for planes (``index`` padded with -1, ``ideal`` unused). ``period``: torsions'
    periodicity; for chiral centres the sign (+1, -1, or 0 when either hand is allowed).
    ``labels`` name each restraint for outlier lists.
    """

    index: Tensor
    ideal: Tensor
    sigma: Tensor
    labels: list[str] = field(default_factory=list)
    period: Tensor | None = None
    #: non-bonded only: (m, 3, 3) Cartesian rotation and (m, 3) translation applied to atom 2
    rot: Tensor | None = None
    shift: Tensor | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])


def _empty(k: int, dtype: torch.dtype, device: torch.device) -> RestraintSet:
    return RestraintSet(torch.zeros((0, k), dtype=torch.long, device=device),
                        torch.zeros(0, dtype=dtype, device=device), torch.ones(0, dtype=dtype, device=device))


# ----------------------------------------------------------------------------- pure geometry
def bond_lengths(xyz: Tensor, index: Tensor) -> Tensor:
    """Distances (m,) in Å between atoms ``index[:, 0]`` and ``index[:, 1]``; xyz (n, 3) Å."""
    return (xyz[index[:, 0]] - xyz[index[:, 1]]).norm(dim=-1)


def angles_deg(xyz: Tensor, index: Tensor) -> Tensor:
    """Angles (m,) in degrees at atom ``index[:, 1]`` between ``index[:, 0]`` and ``index[:, 2]``."""
    u = xyz[index[:, 0]] - xyz[index[:, 1]]
    v = xyz[index[:, 2]] - xyz[index[:, 1]]
    # atan2(|u x v|, u.v) is accurate near 0 and 180 degrees, where acos has an infinite slope
    return torch.rad2deg(torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1)))


def dihedrals_deg(xyz: Tensor, index: Tensor) -> Tensor:
    """Dihedral angles (m,) in degrees, (-180, 180], of atoms ``index[:, 0..3]`` (IUPAC sign)."""
    p0, p1, p2, p3 = (xyz[index[:, k]] for k in range(4))
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = torch.linalg.cross(b0, b1), torch.linalg.cross(b1, b2)
    # atan2(|b1| b0.(b1 x b2), (b0 x b1).(b1 x b2)) (Blondel & Karplus 1996, J. Comput. Chem. 17, 1132)
    return torch.rad2deg(torch.atan2(b1.norm(dim=-1) * (b0 * n2).sum(-1), (n1 * n2).sum(-1)))


def chiral_volumes(xyz: Tensor, index: Tensor) -> Tensor:
    """Signed chiral volumes (m,) in Å^3: ``(a1 - c) . ((a2 - c) x (a3 - c))``, centre ``index[:, 0]``."""
    c = xyz[index[:, 0]]
    a1, a2, a3 = (xyz[index[:, k]] - c for k in (1, 2, 3))
    return (a1 * torch.linalg.cross(a2, a3)).sum(-1)


def plane_deviations(xyz: Tensor, index: Tensor) -> Tensor:
    """Distances (m, k) in Å of each plane's atoms from its least-squares plane (0 at padding -1).

    The plane normal is the eigenvector of the smallest eigenvalue of the atoms' covariance
    (``torch.linalg.eigh``, differentiable while the two smallest eigenvalues differ).
    """
    mask = (index >= 0).to(xyz.dtype)                       # (m, k)
    pts = xyz[index.clamp(min=0)]                            # (m, k, 3)
    n = mask.sum(-1, keepdim=True)                           # (m, 1)
    centre = (pts * mask[..., None]).sum(1) / n              # (m, 3)
    d = (pts - centre[:, None, :]) * mask[..., None]
    cov = d.transpose(1, 2) @ d                              # (m, 3, 3)
    _, vecs = torch.linalg.eigh(cov)
    normal = vecs[..., 0]                                    # (m, 3)
    return (d * normal[:, None, :]).sum(-1) * mask


def wrap_deg(x: Tensor, period: Tensor) -> Tensor:
    """``x`` reduced into (-180/period, 180/period] degrees."""
    span = 360.0 / period
    return x - span * torch.round(x / span)


# ----------------------------------------------------------------------------- restraints
@dataclass
class Restraints:
    """Per-kind restraint sets of one model, and the data to rebuild its non-bonded pairs.

    ``sets[kind]``: :class:`RestraintSet`. ``unrestrained``: residue names refined without
    restraints (only when asked for). ``energy_types``: per atom, the library's energy type.
    """

    sets: dict[str, RestraintSet]
    n_atoms: int
    vdw_radius: Tensor
    hb_type: list[str]
    altlocs: list[str]
    structure: gemmi.Structure
    unrestrained: list[str] = field(default_factory=list)
    #: (i, j), i < j -> bond-graph distance (1, 2 or 3) of the 1-2, 1-3 and 1-4 pairs (excluded from
    #: non-bonded repulsion)
    hops: dict[tuple[int, int], int] = field(default_factory=dict)
    #: ADP similarity pairs of the last ``update_pairs``: (m, 2) indices, (m,) weights 1/sigma^2
    #: times the distance factor
    adp_index: Tensor | None = None
    adp_weight: Tensor | None = None
    #: (n,) bool, hydrogen atoms (left out of ``statistics``); the library the topology came from
    hydrogen: Tensor | None = None
    monlib: gemmi.MonLib | None = None
    #: per atom: the library's ion radius (Å, nan when unknown) and whether it is a metal
    ion_radius: list[float] = field(default_factory=list)
    metal: list[bool] = field(default_factory=list)
    #: (i, j), i < j: atoms of links to a symmetry mate (no repulsion between them across symmetry)
    symmetry_pairs: set[tuple[int, int]] = field(default_factory=set)
    #: what the log should say about links and metal sites (``equipoise.xtal.links``)
    notes: list[str] = field(default_factory=list)
    #: per atom: its residue's index in the model and its occupancy in the file (for the
    #: self-image rule of ``update_pairs``)
    residue_index: list[int] = field(default_factory=list)
    occupancy: list[float] = field(default_factory=list)

    @classmethod
    def build(cls, model: AtomModel, *, monlib: str | Path | None = None,
              ligands: Sequence[str | Path] = (), unrestrained: bool = False) -> "Restraints":
        """Restraints of ``model`` from the monomer library and ``ligands`` CIF files.

        Residues that neither covers raise ``InputError`` listing them, unless
        ``unrestrained=True`` (then they only get non-bonded repulsion, with their bonds inferred
        from distances excluded). LINK records and metal sites follow ``equipoise.xtal.links``;
        what they did is in ``notes``.
        """
        st = model.structure.clone()
        for i, (_, _, atom) in enumerate(_atoms(st)):
            atom.serial = i
        resnames = sorted({res.name for ch in st[0] for res in ch})
        lib = read_monlib(resnames, monlib, ligands)
        missing = [r for r in resnames if r not in lib.monomers]
        if missing and not unrestrained:
            raise InputError(f"no restraint dictionary for residue(s) {', '.join(missing)}: give "
                             "them with --ligand FILE.cif, or refine them without restraints with "
                             "--unrestrained", path=model.path, field="--ligand")
        dtype, device = model.xyz.dtype, model.xyz.device
        # drop residues without a dictionary from the topology copy; their atoms stay in the
        # model (indices by serial) and only get non-bonded repulsion (bonds inferred first)
        inferred = inferred_bonds(st, set(missing)) if missing else []
        drop_residues(st, missing)
        notes = take_unknown_metal_connections(st, lib)
        original = [atom.serial for _, _, atom in _atoms(st)]
        try:
            topo = gemmi.prepare_topology(st, lib, h_change=gemmi.HydrogenChange.NoChange,
                                          reorder=False, warnings=None, ignore_unknown_links=False)
        except (RuntimeError, ValueError) as exc:
            raise InputError(_topology_error(str(exc), lib), path=model.path) from exc
        # prepare_topology renumbers serials 1..n in file order: map them back to model indices
        if [atom.serial for _, _, atom in _atoms(st)] != list(range(1, len(original) + 1)):
            raise InputError("gemmi changed the atoms while building the topology", path=model.path)

        def index(atom: gemmi.Atom) -> int:
            return original[atom.serial - 1]

        links = link_report(topo, lib, index, model.labels, model.cell)
        sets = _topology_sets(topo, index, model.labels, dtype, device, skip=links.skipped)
        n = model.n_atoms
        types = _energy_types(topo, index, n)
        radius, hb, ion, metal = [], [], [], []
        for i, el in enumerate(model.elements):
            entry = lib.ener_lib.atoms.get(types[i]) if types[i] else None
            r = float(entry.vdw_radius) if entry is not None else float(gemmi.Element(el).vdw_r)
            # an atom without an energy type (unrestrained residue): the element's generic type
            generic = entry if entry is not None else lib.ener_lib.atoms.get(el.upper())
            ion.append(float(generic.ion_radius) if generic is not None else math.nan)
            metal.append(gemmi.Element(el).is_metal)
            if metal[-1]:
                r = ion[-1] if math.isfinite(ion[-1]) else METAL_DMIN / 2
            radius.append(r)
            hb.append(entry.hb_type if entry is not None else "N")
        hops = _pair_hops(sets, n, inferred)           # within the asymmetric unit: before these
        if links.symmetry_bonds:
            sets["bond"] = _with_symmetry_bonds(sets["bond"], links.symmetry_bonds, model)
        altlocs = [atom.altloc for _, _, atom in _atoms(model.structure)]
        hydrogen = torch.tensor([gemmi.Element(el).is_hydrogen for el in model.elements], device=device)
        out = cls(sets=sets, n_atoms=n, vdw_radius=torch.tensor(radius, dtype=dtype, device=device),
                  hb_type=hb, altlocs=altlocs, structure=model.structure.clone(),
                  unrestrained=missing, hops=hops, hydrogen=hydrogen, monlib=lib, ion_radius=ion,
                  metal=metal, symmetry_pairs=links.symmetry_pairs, notes=notes + links.notes,
                  residue_index=_residue_indices(model.structure), occupancy=model.occ.tolist())
        out.update_pairs(model.xyz)
        return out

    def update_pairs(self, xyz: Tensor) -> None:
        """Rebuild the non-bonded pair list (with symmetry mates) at coordinates ``xyz`` (n, 3) Å:
        pairs closer than ``d_min + PAIR_MARGIN``; and the ADP similarity pairs (all pairs
        within ``CONTACT_CUTOFF``, see ``adp_pairs``)."""
        st = self.structure
        pos = xyz.detach().cpu().double().tolist()
        for i, (_, _, atom) in enumerate(_atoms(st)):
            atom.pos = gemmi.Position(*pos[i])
            atom.serial = i
        cell = st.cell
        dtype, device = xyz.dtype, xyz.device
        ns = gemmi.NeighborSearch(st[0], cell, CONTACT_CUTOFF + 1.0).populate()
        cs = gemmi.ContactSearch(CONTACT_CUTOFF)
        cs.ignore = gemmi.ContactSearch.Ignore.Nothing
        idx, dmin, rots, shifts, labels = [], [], [], [], []
        adp_idx, adp_w = [], []
        for r in cs.find_contacts(ns):
            i, j = r.partner1.atom.serial, r.partner2.atom.serial
            # the nearest image of atom 2 (what ContactSearch measured): same ASU or a mate
            im = cell.find_nearest_image(r.partner1.atom.pos, r.partner2.atom.pos, gemmi.Asu.Any)
            same_unit = im.same_asu()
            a, b = self.altlocs[i], self.altlocs[j]
            if a != "\0" and b != "\0" and a != b:
                continue
            hop = self.hops.get((min(i, j), max(i, j)), 0) if same_unit else 0
            if i != j:
                adp_idx.append((i, j))
                adp_w.append(1.0 / (ADP_PAIR_SIGMAS[hop] ** 2 * max(1.0, r.dist ** 2 / 4.0)))
            if same_unit and (i == j or hop):
                continue
            if not same_unit and (min(i, j), max(i, j)) in self.symmetry_pairs:
                continue
            if not same_unit and self._alternative_images(i, j):
                continue
            d0 = self._dmin(i, j)
            if r.dist >= d0 + PAIR_MARGIN:
                continue
            rot, sh = image_transform(cell, im)
            idx.append((i, j))
            dmin.append(d0)
            rots.append(rot)
            shifts.append(sh)
            labels.append(f"{self.atom_labels[i]} - {self.atom_labels[j]}"
                          + ("" if same_unit else " (symmetry)"))
        if idx:
            self.sets["nonbonded"] = RestraintSet(
                torch.tensor(idx, dtype=torch.long, device=device),
                torch.tensor(dmin, dtype=dtype, device=device),
                torch.full((len(idx),), NONBONDED_SIGMA, dtype=dtype, device=device), labels,
                rot=torch.stack(rots).to(dtype=dtype, device=device),
                shift=torch.stack(shifts).to(dtype=dtype, device=device))
        else:
            empty = _empty(2, dtype, device)
            empty.rot = torch.zeros((0, 3, 3), dtype=dtype, device=device)
            empty.shift = torch.zeros((0, 3), dtype=dtype, device=device)
            self.sets["nonbonded"] = empty
        self.adp_index = torch.tensor(adp_idx, dtype=torch.long, device=device).reshape(-1, 2)
        self.adp_weight = torch.tensor(adp_w, dtype=dtype, device=device)

    @property
    def atom_labels(self) -> list[str]:
        """``A/LEU 12/CA`` per atom (model order)."""
        if not hasattr(self, "_labels"):
            self._labels = [atom_label(ch, res, atom) for ch, res, atom in _atoms(self.structure)]
        return self._labels

    def _alternative_images(self, i: int, j: int) -> bool:
        """True when atom i and the symmetry image of atom j belong to one residue whose two
        copies cannot both be there: occupancies summing to at most 1 (a water or ligand
        disordered about a symmetry axis at half occupancy; REFMAC and phenix do not repel such
        a residue from its own image)."""
        if not self.residue_index or self.residue_index[i] != self.residue_index[j]:
            return False
        return self.occupancy[i] + self.occupancy[j] <= 1.0 + 1e-3

    def _dmin(self, i: int, j: int) -> float:
        hi, hj = self.hb_type[i], self.hb_type[j]
        donor_acceptor = (hi in "DB" and hj in "AB") or (hi in "AB" and hj in "DB")
        if donor_acceptor and hi != "N" and hj != "N":
            return HBOND_DMIN
        if self.metal and (self.metal[i] or self.metal[j]):
            d = metal_dmin(self.ion_radius[i], self.ion_radius[j])
            if d is not None:
                return d
        return float(self.vdw_radius[i] + self.vdw_radius[j])

    # ------------------------------------------------------------------------- evaluation
    def deviations(self, kind: str, xyz: Tensor) -> Tensor:
        """Model minus ideal (m,) for ``kind`` (planes: (m, k) distances to the plane; non-bonded:
        ``min(d - d_min, 0)``), in the kind's units."""
        s = self.sets[kind]
        if len(s) == 0:
            return xyz.new_zeros((0,))
        if kind == "bond" and s.rot is None:
            return bond_lengths(xyz, s.index) - s.ideal
        if kind == "angle":
            return angles_deg(xyz, s.index) - s.ideal
        if kind == "torsion":
            return wrap_deg(dihedrals_deg(xyz, s.index) - s.ideal, s.period)
        if kind == "chiral":
            v = chiral_volumes(xyz, s.index)
            both = s.period == 0
            return torch.where(both, v.abs() - s.ideal.abs(), v - s.ideal)
        if kind == "plane":
            return plane_deviations(xyz, s.index)
        if kind in ("bond", "nonbonded"):
            # atom 2 moved to its image (bonds: identity except for links to a symmetry mate)
            x2 = (s.rot @ xyz[s.index[:, 1]].unsqueeze(-1)).squeeze(-1) + s.shift
            d = (xyz[s.index[:, 0]] - x2).norm(dim=-1) - s.ideal
            return d if kind == "bond" else d.clamp(max=0.0)
        raise InputError(f"unknown restraint kind {kind!r}; kinds are {KINDS}", field="kind")

    def z_scores(self, kind: str, xyz: Tensor) -> Tensor:
        """Deviations divided by their sigmas (planes: (m, k), 0 at padding)."""
        dev = self.deviations(kind, xyz)
        s = self.sets[kind]
        return dev / (s.sigma[:, None] if dev.dim() == 2 else s.sigma)

    def loss(self, kind: str, xyz: Tensor) -> Tensor:
        """Sum of squared z-scores of ``kind`` (scalar, dimensionless)."""
        return (self.z_scores(kind, xyz) ** 2).sum()

    def count(self, kind: str) -> int:
        """Number of restraints of ``kind`` (planes: number of atoms in planes)."""
        s = self.sets[kind]
        return int((s.index >= 0).sum()) if kind == "plane" else len(s)

    def reported(self, kind: str) -> Tensor:
        """Which restraints of ``kind`` ``statistics`` counts: those without hydrogen atoms (as
        phenix.refine and MolProbity report heavy-atom geometry; riding hydrogens sit at ideal
        positions and would flatter the RMSD). (m,) bool; planes: (m, k), per atom in the plane."""
        s = self.sets[kind]
        is_h = self.hydrogen if self.hydrogen is not None else torch.zeros(self.n_atoms, dtype=torch.bool)
        is_h = is_h.to(s.index.device)
        if kind == "plane":
            return (s.index >= 0) & ~is_h[s.index.clamp(min=0)]
        return ~is_h[s.index].any(dim=1)

    def statistics(self, xyz: Tensor) -> dict[str, dict[str, float]]:
        """Per kind, over the restraints without hydrogens (``reported``): ``n``, ``rmsd``
        (kind's units; non-bonded: rms of violations) and ``rmsz``."""
        out = {}
        with torch.no_grad():
            for kind in KINDS:
                keep = self.reported(kind) if self.count(kind) else None
                n = 0 if keep is None else int(keep.sum())
                if n == 0:
                    out[kind] = {"n": 0, "rmsd": 0.0, "rmsz": 0.0}
                    continue
                dev, z = self.deviations(kind, xyz)[keep], self.z_scores(kind, xyz)[keep]
                out[kind] = {"n": n, "rmsd": float((dev ** 2).sum() / n) ** 0.5,
                             "rmsz": float((z ** 2).sum() / n) ** 0.5}
        return out

    def outliers(self, xyz: Tensor, z_min: float = 4.0, limit: int = 20) -> list[dict]:
        """Restraints with ``|z| >= z_min``, worst first (at most ``limit``)."""
        rows = []
        with torch.no_grad():
            for kind in KINDS:
                if self.count(kind) == 0:
                    continue
                z = self.z_scores(kind, xyz)
                dev = self.deviations(kind, xyz)
                if z.dim() == 2:
                    worst = z.abs().argmax(dim=1)
                    rows_z = z.gather(1, worst[:, None])[:, 0]
                    rows_d = dev.gather(1, worst[:, None])[:, 0]
                else:
                    rows_z, rows_d = z, dev
                s = self.sets[kind]
                for k in torch.nonzero(rows_z.abs() >= z_min).flatten().tolist():
                    rows.append({"kind": kind, "atoms": s.labels[k] if s.labels else str(k),
                                 "deviation": float(rows_d[k]), "z": float(rows_z[k])})
        rows.sort(key=lambda r: -abs(r["z"]))
        return rows[:limit]

    def adp_pairs(self) -> tuple[Tensor, Tensor]:
        """ADP similarity pairs of the last ``update_pairs``: (m, 2) atom indices and (m,) weights
        ``1 / (sigma^2 max(1, d^2 / 4))`` (d the pair's distance in Å, sigma from
        ``ADP_PAIR_SIGMAS`` by the pair's relation; the distance factor is servalcat's)."""
        return self.adp_index, self.adp_weight


def image_transform(cell: gemmi.UnitCell, image: gemmi.NearestImage) -> tuple[Tensor, Tensor]:
    """Cartesian (3, 3) rotation and (3,) translation, float64, Å, that move atom 2 to the image
    ``image`` (``UnitCell.find_nearest_image``) measured from atom 1: x2' = R x2 + t."""
    eye = torch.eye(3, dtype=torch.float64)
    if image.same_asu():
        return eye, torch.zeros(3, dtype=torch.float64)
    orth = torch.tensor(cell.orth.mat.tolist(), dtype=torch.float64)
    frac = torch.tensor(cell.frac.mat.tolist(), dtype=torch.float64)
    if image.sym_idx == 0:
        rf, tf = eye, torch.zeros(3, dtype=torch.float64)
    else:
        op = cell.images[image.sym_idx - 1]
        rf, tf = torch.tensor(op.mat.tolist(), dtype=torch.float64), torch.tensor(op.vec.tolist(), dtype=torch.float64)
    return orth @ rf @ frac, orth @ (tf + torch.tensor(list(image.pbc_shift), dtype=torch.float64))


def drop_residues(st: gemmi.Structure, names: Sequence[str]) -> dict[str, list[tuple[int, gemmi.Residue]]]:
    """Remove the residues named ``names`` from ``st`` (first model; e.g. those without a
    dictionary, before ``gemmi.prepare_topology``). Returns, per chain name, (position, copy) of
    each removed residue in ascending position, for putting them back with ``Chain.add_residue``."""
    removed: dict[str, list[tuple[int, gemmi.Residue]]] = {}
    for ch in st[0]:
        for k in range(len(ch) - 1, -1, -1):
            if ch[k].name in names:
                removed.setdefault(ch.name, []).insert(0, (k, ch[k].clone()))
                del ch[k]
    return removed


def _residue_indices(st: gemmi.Structure) -> list[int]:
    """Per atom (model order), the index of its residue in the first model."""
    out, k = [], 0
    for ch in st[0]:
        for res in ch:
            out += [k] * len(res)
            k += 1
    return out


def _atoms(st: gemmi.Structure):
    for ch in st[0]:
        for res in ch:
            for atom in res:
                yield ch, res, atom


def _topology_sets(topo: gemmi.Topo, index, names: list[str], dtype: torch.dtype,
                   device: torch.device, skip: set[tuple[str, int]] = frozenset()) -> dict[str, RestraintSet]:
    """Index/ideal/sigma tensors per kind from a gemmi topology; ``index(atom)`` is the model
    index, ``names`` the model's atom labels; ``skip`` (kind, index into the topology's list)
    restraints to leave out (``links.link_report``)."""

    def tensors(rows, k, with_period=False):
        if not rows:
            out = _empty(k, dtype, device)
            if with_period:
                out.period = torch.zeros(0, dtype=dtype, device=device)
            return out
        idx = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
        ideal = torch.tensor([r[1] for r in rows], dtype=dtype, device=device)
        sigma = torch.tensor([r[2] for r in rows], dtype=dtype, device=device)
        labels = [r[3] for r in rows]
        period = torch.tensor([r[4] for r in rows], dtype=dtype, device=device) if with_period else None
        return RestraintSet(idx, ideal, sigma, labels, period)

    def label(atoms):
        return " - ".join(names[index(a)] for a in atoms)

    def kept(kind, items):
        return (x for k, x in enumerate(items) if (kind, k) not in skip)

    bonds = [([index(b.atoms[0]), index(b.atoms[1])], b.restr.value, b.restr.esd, label(b.atoms))
             for b in kept("bond", topo.bonds) if b.restr.esd > 0]
    angles = [([index(a.atoms[0]), index(a.atoms[1]), index(a.atoms[2])], a.restr.value, a.restr.esd,
               label(a.atoms)) for a in kept("angle", topo.angles) if a.restr.esd > 0]
    torsions = [([index(t.atoms[k]) for k in range(4)], t.restr.value, t.restr.esd, label(t.atoms),
                 max(int(t.restr.period), 1))
                for t in kept("torsion", topo.torsions) if t.restr.esd > 0 and t.restr.label not in SKIPPED_TORSIONS]
    chirs = []
    for c in kept("chiral", topo.chirs):
        if c.restr.sign == gemmi.ChiralityType.Both:
            sign = 0
        else:
            sign = 1 if c.restr.sign == gemmi.ChiralityType.Positive else -1
        ideal = topo.ideal_chiral_abs_volume(c) * (sign if sign else 1)
        chirs.append(([index(c.atoms[k]) for k in range(4)], ideal, CHIRAL_SIGMA, label(c.atoms), sign))
    planes = [p for p in kept("plane", topo.planes) if p.restr.esd > 0 and len(p.atoms) >= 4]
    width = max((len(p.atoms) for p in planes), default=4)
    plane_rows = [([index(a) for a in p.atoms] + [-1] * (width - len(p.atoms)), 0.0, p.restr.esd,
                   label(p.atoms)) for p in planes]
    return {"bond": tensors(bonds, 2), "angle": tensors(angles, 3),
            "torsion": tensors(torsions, 4, with_period=True), "chiral": tensors(chirs, 4, with_period=True),
            "plane": tensors(plane_rows, width)}


def _energy_types(topo: gemmi.Topo, index, n: int) -> list[str]:
    """The library's energy type (ener_lib key) of each atom, '' where unknown."""
    types = [""] * n
    for ci in topo.chain_infos:
        for ri in ci.res_infos:
            for atom in ri.res:
                cc = ri.get_final_chemcomp(atom.altloc)
                k = cc.find_atom(atom.name) if cc is not None else None
                if k is not None:
                    types[index(atom)] = k.chem_type
    return types


def _with_symmetry_bonds(bonds: RestraintSet, extra: list[tuple[int, int, float, float, str]],
                         model: AtomModel) -> RestraintSet:
    """``bonds`` plus the bonds of links to a symmetry mate (i, j, ideal Å, esd Å, label), each
    measured to the nearest image of atom j at the model's coordinates, as a set with per-row
    ``rot``/``shift`` (identity for the ordinary bonds)."""
    dtype, device = bonds.ideal.dtype, bonds.ideal.device
    pos = model.xyz.detach().cpu().double().tolist()
    m = len(bonds)
    rot = torch.eye(3, dtype=torch.float64).repeat(m + len(extra), 1, 1)
    shift = torch.zeros(m + len(extra), 3, dtype=torch.float64)
    for k, (i, j, _, _, _) in enumerate(extra):
        im = model.cell.find_nearest_image(gemmi.Position(*pos[i]), gemmi.Position(*pos[j]), gemmi.Asu.Different)
        rot[m + k], shift[m + k] = image_transform(model.cell, im)
    new = lambda col: torch.tensor([e[col] for e in extra], dtype=dtype, device=device)  # noqa: E731
    return RestraintSet(torch.cat([bonds.index, torch.tensor([[e[0], e[1]] for e in extra], dtype=torch.long,
                                                             device=device)]),
                        torch.cat([bonds.ideal, new(2)]), torch.cat([bonds.sigma, new(3)]),
                        bonds.labels + [e[4] for e in extra],
                        rot=rot.to(dtype=dtype, device=device), shift=shift.to(dtype=dtype, device=device))


def _pair_hops(sets: dict[str, RestraintSet], n: int,
               inferred: Sequence[tuple[int, int]] = ()) -> dict[tuple[int, int], int]:
    """1-2, 1-3 and 1-4 pairs of the bond graph (excluded from non-bonded repulsion), each with
    its number of bonds between the two atoms (the shortest path). The graph has the restrained
    bonds and the ``inferred`` bonds of unrestrained residues (``links.inferred_bonds``)."""
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in sets["bond"].index.tolist() + list(inferred):
        neighbours[i].add(j)
        neighbours[j].add(i)
    out: dict[tuple[int, int], int] = {}
    for i in range(n):
        one = neighbours[i]
        two = set().union(*(neighbours[j] for j in one)) if one else set()
        three = set().union(*(neighbours[j] for j in two)) if two else set()
        for hop, group in ((3, three), (2, two), (1, one)):      # the shortest path wins
            for j in group:
                if j > i:
                    out[(i, j)] = hop
    return out


def _topology_error(message: str, lib: gemmi.MonLib) -> str:
    """What to tell the user when ``prepare_topology`` fails. A link missing from the library
    (e.g. ``p``, the DNA/RNA backbone: the library that the install step assembles holds the
    protein links only) would leave linked atoms unrestrained and pushed apart by the non-bonded
    term, so it is an error with the fix, not a warning."""
    link = re.search(r"link '([^']+)' as it is not in the monomer library", message)
    if link is None:
        return f"gemmi cannot build the topology: {message}"
    what = " (the nucleic-acid backbone, DNA/RNA)" if link.group(1) == "p" else ""
    return (f"the monomer library {lib.monomer_dir} has no link '{link.group(1)}'{what}, which this "
            "model needs; the library that the install step assembles holds protein links only: give a "
            "full CCP4 monomer library with --monlib DIR or $CLIBD_MON")
