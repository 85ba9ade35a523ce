"""``equipoise xtal ...``: atomic model refinement against X-ray data (R-work/R-free, geometry, maps).

Registration imports nothing heavy (no torch, no gemmi), so ``equipoise --help`` stays fast; the
handlers import what they need.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``xtal`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("xtal", help="atomic model refinement against X-ray data (R-work/R-free, geometry, maps)", description="atomic model refinement against X-ray data (R-work/R-free, geometry, maps)")
    commands = parser.add_subparsers(dest="xtal_command", metavar="COMMAND")
    commands.required = True
