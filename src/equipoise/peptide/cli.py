"""``equipoise peptide ...``: de novo peptide sequencing from MS/MS spectra.

Sub-commands: ``synth`` (labelled synthetic spectra), ``evaluate`` (Casanovo's metrics of an
mzTab against a labelled MGF), ``baseline`` (no-learning spectrum-graph sequencing), and, from
their own modules, ``sequence`` and ``train`` (``register_sequence(commands)`` and
``register_train(commands)``).

Registration imports nothing heavy (no torch), so ``equipoise --help`` stays fast; the handlers
import what they need.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``peptide`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("peptide", help="de novo peptide sequencing from MS/MS spectra",
                                   description="de novo peptide sequencing from MS/MS spectra")
    commands = parser.add_subparsers(dest="peptide_command", metavar="COMMAND")
    commands.required = True
