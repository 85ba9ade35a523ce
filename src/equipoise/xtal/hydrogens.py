"""Riding hydrogens: H atoms that move with the heavy atom they are bonded to.

At X-ray resolutions the data do not determine hydrogen positions, so REFMAC, servalcat and
phenix.refine keep hydrogens at the positions that the heavy atoms and the monomer library
imply (the riding model; Murshudov et al. 2011, Acta Cryst. D67, 355; Afonine et al. 2012,
Acta Cryst. D68, 352). Here, within a refinement stage each hydrogen keeps its offset from its
parent (the heavy atom of its bond), so its coordinates and B are functions of the parent's and
it has no parameters of its own; after each xyz stage ``idealize`` puts every hydrogen back at
the library's ideal position for the refined heavy atoms (gemmi's ``prepare_topology`` with
``HydrogenChange.ReAdd``, the X-ray, electron-cloud bond lengths). A hydrogen's B is its
parent's. ``add_hydrogens`` adds riding hydrogens to a model that has none (servalcat's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import gemmi
import torch
from torch import Tensor

from equipoise.errors import InputError
from equipoise.xtal.model import AtomModel
from equipoise.xtal.monlib import read_monlib
from equipoise.xtal.restraints import Restraints, drop_residues


def _key(ch: gemmi.Chain, res: gemmi.Residue, atom: gemmi.Atom) -> tuple:
    return ch.name, res.seqid.num, res.seqid.icode, res.name, atom.name, atom.altloc


@dataclass
class RidingHydrogens:
    """The hydrogens of a model and their parents.

    h: (k,) long, hydrogen atom indices; parent: (k,) long, the bonded heavy atom of each.
    keys: (chain, seq, icode, residue, atom, altloc) of each hydrogen, to find it in gemmi's
    re-placed structure. model, monlib, skipped: the model, the library and the residue names
    without a dictionary (left out of the placement).
    """

    h: Tensor
    parent: Tensor
    keys: list[tuple]
    model: AtomModel
    monlib: gemmi.MonLib
    skipped: list[str]

    @classmethod
    def build(cls, model: AtomModel, restraints: Restraints) -> "RidingHydrogens":
        """Each hydrogen of ``model`` with its parent from the restraints' bonds. A hydrogen with
        no bond to a heavy atom is an ``InputError`` (it could not ride)."""
        is_h = restraints.hydrogen.cpu()
        parent = {}
        for i, j in restraints.sets["bond"].index.cpu().tolist():
            if is_h[i] and not is_h[j]:
                parent[i] = j
            elif is_h[j] and not is_h[i]:
                parent[j] = i
        hs = torch.nonzero(is_h).flatten().tolist()
        orphans = [model.labels[i] for i in hs if i not in parent]
        if orphans:
            raise InputError(f"{len(orphans)} hydrogen(s) have no bond to a heavy atom in the restraints, so "
                             f"they cannot ride: {', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}; "
                             "use --hydrogens strip or keep", path=model.path, field="--hydrogens")
        atoms = [(ch, res, a) for ch in model.structure[0] for res in ch for a in res]
        long = dict(dtype=torch.long, device=model.xyz.device)
        return cls(torch.tensor(hs, **long), torch.tensor([parent[i] for i in hs], **long),
                   [_key(*atoms[i]) for i in hs], model, restraints.monlib,
                   list(restraints.unrestrained))

    def offsets(self, xyz: Tensor) -> Tensor:
        """(k, 3) Å, each hydrogen's position minus its parent's in ``xyz`` (n, 3)."""
        return xyz[self.h] - xyz[self.parent]

    def positions(self, xyz: Tensor, offsets: Tensor) -> Tensor:
        """(n, 3) ``xyz`` with every hydrogen at its parent plus ``offsets`` (differentiable in the
        parents; the hydrogens' own rows of ``xyz`` are ignored)."""
        return xyz.index_copy(0, self.h, xyz[self.parent] + offsets)

    def b_iso(self, b: Tensor) -> Tensor:
        """(n,) ``b`` with every hydrogen's B set to its parent's."""
        return b.index_copy(0, self.h, b[self.parent])

    def idealize(self, xyz: Tensor) -> Tensor:
        """(n, 3) ``xyz`` with the hydrogens at the library's ideal positions for the heavy atoms of
        ``xyz`` (a hydrogen that gemmi does not place, e.g. one the library names differently,
        keeps its position)."""
        st = self.model.to_structure(xyz=xyz)
        drop_residues(st, self.skipped)
        try:
            gemmi.prepare_topology(st, self.monlib, h_change=gemmi.HydrogenChange.ReAdd, reorder=False,
                                   warnings=None, ignore_unknown_links=True)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"gemmi cannot place the riding hydrogens: {exc}") from exc
        placed = {_key(ch, res, a): a.pos for ch in st[0] for res in ch for a in res if a.is_hydrogen()}
        out = xyz.detach().clone()
        rows, new = [], []
        for k, key in enumerate(self.keys):
            p = placed.get(key)
            if p is not None:
                rows.append(k)
                new.append((p.x, p.y, p.z))
        if rows:
            idx = self.h[torch.tensor(rows, dtype=torch.long, device=self.h.device)]
            out[idx] = torch.tensor(new, dtype=xyz.dtype, device=xyz.device)
        return out


def add_hydrogens(model: AtomModel, *, monlib: str | Path | None = None,
                  ligands: Sequence[str | Path] = ()) -> AtomModel:
    """A copy of ``model`` with riding hydrogens at the library's ideal positions on every residue
    but waters (existing hydrogens replaced); its ``hydrogens`` mode is ``"riding"``. Residues
    without a dictionary get none."""
    st = model.structure.clone()
    resnames = sorted({res.name for ch in st[0] for res in ch})
    lib = read_monlib(resnames, monlib, ligands)
    skipped = [r for r in resnames if r not in lib.monomers]
    kept = drop_residues(st, skipped)   # set aside: prepare_topology needs a dictionary for each residue
    try:
        gemmi.prepare_topology(st, lib, h_change=gemmi.HydrogenChange.ReAddButWater, reorder=False,
                               warnings=None, ignore_unknown_links=True)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"gemmi cannot add hydrogens: {exc}", path=model.path, field="--hydrogens") from exc
    for ch in st[0]:
        for k, res in kept.get(ch.name, []):
            ch.add_residue(res, k)
    return AtomModel.from_structure(st, hydrogens="riding", dtype=model.xyz.dtype, device=model.xyz.device,
                                    path=model.path)
