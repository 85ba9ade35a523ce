"""``equipoise xtal geometry MODEL [--ligand X.cif ...] [--monlib DIR]``: restraint RMSD, rmsZ, outliers.

Registration imports nothing heavy; the handler imports gemmi and torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_library_options(parser: argparse.ArgumentParser) -> None:
    """``--ligand``, ``--monlib`` and ``--unrestrained`` (shared by geometry and refine)."""
    parser.add_argument("--ligand", action="append", default=[], metavar="X.cif",
                        help="restraint dictionary of a ligand or modified residue (repeatable)")
    parser.add_argument("--monlib", metavar="DIR", help="monomer library (default $CLIBD_MON, then "
                                                        "the one `python -m equipoise.xtal.monlib install` made)")
    parser.add_argument("--unrestrained", action="store_true",
                        help="refine residues the library does not cover without restraints "
                             "(default: stop with an error listing them)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``geometry`` to the ``xtal`` sub-commands."""
    p = commands.add_parser("geometry", help="bond/angle/... RMSD and rmsZ against the monomer library, outliers",
                            description="Geometry of MODEL against monomer-library restraints: RMSD and "
                                        "rmsZ per kind (bond, angle, torsion, plane, chiral, non-bonded) "
                                        "and the worst restraints.")
    p.add_argument("model", metavar="MODEL", help="PDB or mmCIF model")
    add_library_options(p)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(handler=_geometry)


def _geometry(args: argparse.Namespace) -> int:
    from equipoise.errors import InputError
    from equipoise.xtal.geometry_report import geometry_report

    report = geometry_report(args.model, ligands=args.ligand, monlib=args.monlib,
                             unrestrained=args.unrestrained)
    print(report.summary())
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
        except OSError as exc:
            raise InputError(f"cannot write the report: {exc}", path=args.json, field="--json") from exc
    return 0
