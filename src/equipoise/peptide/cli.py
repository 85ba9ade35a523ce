"""``equipoise peptide ...``: de novo peptide sequencing from MS/MS spectra.

Registration imports nothing heavy (no torch, no gemmi), so ``equipoise --help`` stays fast; the
handlers import what they need.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``peptide`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("peptide", help="de novo peptide sequencing from MS/MS spectra", description="de novo peptide sequencing from MS/MS spectra")
    commands = parser.add_subparsers(dest="peptide_command", metavar="COMMAND")
    commands.required = True
