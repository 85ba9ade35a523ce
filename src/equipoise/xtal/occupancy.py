"""Refinable occupancy groups, with the constraints that keep occupancies physical.

As phenix.refine does by default (Afonine et al. 2012, Acta Cryst. D68, 352, "occupancy
refinement"): the alternate conformers of a residue share one occupancy per conformer, and the
conformers of one residue keep their total (usually 1); consecutive polymer residues with the
same conformer letters form one set (conformer A of a loop is one state); a residue with a
partial occupancy and no alternate conformers (a ligand or water modelled at less than 1) gets
one occupancy in [0, 1], or in [0, 1/m] when one of its atoms sits on a special position of
multiplicity m (an ion on a two-fold axis: at most 0.5, the PDB convention; gemmi's
``model.site_multiplicity``).
Atoms at occupancy 0 (unmodelled atoms, kept in the file) and fully occupied atoms without
conformers are not refined.

The constraints hold by construction: a conformer set's occupancies are its total times a
softmax of free logits, a lone group's is a sigmoid of its logit, so no optimiser step can leave
[0, 1] or change a residue's total.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import torch
from torch import Tensor

from equipoise.xtal.model import AtomModel, residue_label, site_multiplicity

#: lone-group occupancies start inside [OCC_EDGE, 1 - OCC_EDGE] (the sigmoid's logit is finite there)
OCC_EDGE = 0.01
#: conformer occupancies start at least at this value (the softmax's log is finite there)
OCC_FLOOR = 1e-3


@dataclass
class OccupancyGroups:
    """Groups of atoms that share one refined occupancy.

    labels: one per group, e.g. ``"A/ARG 11 conformer A"``, ``"A/HOH 301"``.
    atoms: (k,) long, the atom indices of all groups; atom_group: (k,) long, each one's group.
    group_set: (g,) long, each group's constraint set; set_total: (s,) float64, each set's fixed
        total occupancy; set_size: (s,) long, groups per set (1: a lone group in [0, 1]).
    group_max: (g,) float64, a lone group's upper bound (1, or 1/m on a special position of
        multiplicity m); 1 for conformer groups.
    """

    labels: list[str]
    atoms: Tensor
    atom_group: Tensor
    group_set: Tensor
    set_total: Tensor
    set_size: Tensor
    group_max: Tensor

    @property
    def n_groups(self) -> int:
        """Number of refined occupancies."""
        return len(self.labels)

    @classmethod
    def from_model(cls, model: AtomModel) -> "OccupancyGroups":
        """The groups of ``model`` (atom indices in its file order; see the module docstring)."""
        labels: list[str] = []
        atoms: list[int] = []
        atom_group: list[int] = []
        group_set: list[int] = []
        totals: list[float] = []
        sizes: list[int] = []
        bounds: list[float] = []
        occ = model.occ.detach().cpu().tolist()
        pos = [atom.pos for ch in model.structure[0] for res in ch for atom in res]
        for first, last, conformers, partial in _residue_sets(model.structure, occ):
            name = first if first == last else f"{first} - {last}"
            if conformers:
                totals.append(sum(sum(occ[k] for k in idx) / len(idx) for idx in conformers.values()))
                sizes.append(len(conformers))
                for alt, idx in sorted(conformers.items()):
                    _add_group(f"{name} conformer {alt}", idx, len(totals) - 1, labels, atoms, atom_group, group_set)
                    bounds.append(1.0)
            if partial:
                totals.append(1.0)
                sizes.append(1)
                _add_group(name, partial, len(totals) - 1, labels, atoms, atom_group, group_set)
                bounds.append(1.0 / max(site_multiplicity(model.cell, pos[k]) for k in partial))
        long = dict(dtype=torch.long, device=model.xyz.device)
        return cls(labels, torch.tensor(atoms, **long), torch.tensor(atom_group, **long),
                   torch.tensor(group_set, **long),
                   torch.tensor(totals, dtype=torch.float64, device=model.xyz.device),
                   torch.tensor(sizes, **long), torch.tensor(bounds, dtype=torch.float64, device=model.xyz.device))

    def values(self, occ: Tensor) -> Tensor:
        """(g,) each group's occupancy: the mean of its atoms' ``occ`` (n,)."""
        count = torch.zeros(self.n_groups, dtype=occ.dtype, device=occ.device)
        count.index_add_(0, self.atom_group, torch.ones_like(occ[self.atoms]))
        total = torch.zeros_like(count).index_add_(0, self.atom_group, occ[self.atoms])
        return total / count

    def logits(self, occ: Tensor) -> Tensor:
        """(g,) free parameters that reproduce the groups' occupancies in ``occ`` (n,)."""
        v = self.values(occ.detach())
        lone = (self.set_size[self.group_set] == 1)
        edge = (v / self.group_max.to(v)).clamp(OCC_EDGE, 1.0 - OCC_EDGE)
        return torch.where(lone, torch.log(edge / (1.0 - edge)), torch.log(v.clamp(min=OCC_FLOOR)))

    def group_occupancies(self, z: Tensor) -> Tensor:
        """(g,) occupancies from logits ``z`` (g,): total x softmax within each conformer set,
        bound x sigmoid for lone groups."""
        s = self.group_set
        n_sets = self.set_total.shape[0]
        peak = torch.full((n_sets,), -torch.inf, dtype=z.dtype, device=z.device)
        peak = peak.scatter_reduce(0, s, z.detach(), reduce="amax")
        e = torch.exp(z - peak[s])
        norm = torch.zeros(n_sets, dtype=z.dtype, device=z.device).index_add(0, s, e)
        conformer = self.set_total.to(z)[s] * e / norm[s]
        return torch.where(self.set_size[s] == 1, self.group_max.to(z) * torch.sigmoid(z), conformer)

    def occupancies(self, z: Tensor, base: Tensor) -> Tensor:
        """(n,) ``base`` occupancies with every grouped atom set to its group's value from ``z``."""
        return base.index_copy(0, self.atoms, self.group_occupancies(z)[self.atom_group])

    def table(self, occ: Tensor) -> list[dict]:
        """[{"group", "occ"}] of the groups' occupancies in ``occ`` (n,), for the record."""
        return [{"group": label, "occ": round(float(v), 4)} for label, v in zip(self.labels, self.values(occ))]


def _residue_sets(structure: gemmi.Structure,
                  occ: list[float]) -> list[tuple[str, str, dict[str, list[int]], list[int]]]:
    """Per residue (first, last label; conformer letter -> atom indices; partial atom indices),
    in model order. A residue with a single conformer has it moved to its partial atoms. Runs of
    consecutive residues of a chain with the same conformer letters are merged into one entry,
    as phenix.refine links the conformers of a segment: conformer A of a loop is one state."""
    out: list[tuple[str, str, dict[str, list[int]], list[int]]] = []
    i = 0
    for chain in structure[0]:
        previous = None
        for res in chain:
            label = residue_label(chain, res)
            conformers: dict[str, list[int]] = {}
            partial: list[int] = []
            for atom in res:
                if occ[i] > 0.0:
                    if atom.altloc != "\0":
                        conformers.setdefault(atom.altloc, []).append(i)
                    elif occ[i] < 1.0:
                        partial.append(i)
                i += 1
            if len(conformers) == 1:
                partial, conformers = partial + next(iter(conformers.values())), {}
            polymer = res.entity_type == gemmi.EntityType.Polymer
            follows = polymer and previous is not None and res.seqid.num - previous <= 1
            if conformers and follows and out and set(out[-1][2]) == set(conformers) and not out[-1][3]:
                first, _, merged, _ = out[-1]
                for alt, idx in conformers.items():
                    merged[alt].extend(idx)
                out[-1] = (first, label, merged, partial)
            else:
                out.append((label, label, conformers, partial))
            previous = res.seqid.num if polymer else None
    return out


def _add_group(label: str, idx: list[int], set_index: int, labels: list[str], atoms: list[int],
               atom_group: list[int], group_set: list[int]) -> None:
    labels.append(label)
    atoms.extend(idx)
    atom_group.extend([len(labels) - 1] * len(idx))
    group_set.append(set_index)
