"""``equipoise diffraction ...`` sub-commands (placeholder until the simulator lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``diffraction`` command and its sub-commands to ``subparsers``."""
    parser = subparsers.add_parser("diffraction", help="nanoBragg-compatible still-image simulator and refinement")
    parser.add_subparsers(dest="diffraction_command", metavar="ACTION")
