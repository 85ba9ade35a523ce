"""Geometry validation of a model: per-kind RMSD and rmsZ against the monomer library, outliers.

The Python API behind ``equipoise xtal geometry``: ``geometry_report(model_path)`` returns a
:class:`GeometryReport` whose ``summary()`` is the table the command prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from equipoise.xtal.model import AtomModel
from equipoise.xtal.restraints import KINDS, Restraints

#: units of each kind's RMSD
UNITS = {"bond": "Å", "angle": "deg", "torsion": "deg", "plane": "Å", "chiral": "Å^3", "nonbonded": "Å"}


@dataclass
class GeometryReport:
    """Per kind ``{"n", "rmsd", "rmsz"}`` (``statistics``), the worst restraints (``outliers``:
    kind, atoms, deviation in the kind's units, z), residues refined without restraints and notes
    on links and metal sites (``Restraints.notes``)."""

    path: str
    n_atoms: int
    statistics: dict[str, dict[str, float]]
    outliers: list[dict]
    unrestrained: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A readable table: one line per kind, then the outliers."""
        lines = [f"{self.path}: {self.n_atoms} atoms",
                 f"{'kind':<10} {'n':>7} {'rmsd':>10} {'rmsZ':>7}"]
        for kind in KINDS:
            s = self.statistics[kind]
            lines.append(f"{kind:<10} {s['n']:>7d} {s['rmsd']:>8.3f} {UNITS[kind]:<3} {s['rmsz']:>6.2f}")
        if self.unrestrained:
            lines.append("without restraints: " + ", ".join(self.unrestrained))
        lines += [f"note: {n}" for n in self.notes]
        if self.outliers:
            lines.append(f"outliers (|z| >= {OUTLIER_Z:g}), worst first:")
            lines += [f"  {o['kind']:<9} {o['atoms']:<48} {o['deviation']:>9.3f} z={o['z']:>7.2f}"
                      for o in self.outliers]
        else:
            lines.append(f"no outliers (|z| >= {OUTLIER_Z:g})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """JSON-ready dict."""
        return {"model": self.path, "n_atoms": self.n_atoms, "statistics": self.statistics,
                "outliers": self.outliers, "unrestrained": self.unrestrained, "notes": self.notes}


#: |z| at or above which a restraint is listed as an outlier (MolProbity/REFMAC use 4)
OUTLIER_Z = 4.0


def geometry_report(model_path: str | Path, *, ligands: Sequence[str | Path] = (),
                    monlib: str | Path | None = None, unrestrained: bool = False,
                    max_outliers: int = 30) -> GeometryReport:
    """Read the model, build its restraints and report RMSD/rmsZ per kind and the outliers."""
    model = AtomModel.from_file(model_path)
    restraints = Restraints.build(model, monlib=monlib, ligands=ligands, unrestrained=unrestrained)
    return GeometryReport(str(model_path), model.n_atoms, restraints.statistics(model.xyz),
                          restraints.outliers(model.xyz, z_min=OUTLIER_Z, limit=max_outliers),
                          restraints.unrestrained, restraints.notes)
