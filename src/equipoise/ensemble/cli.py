"""``equipoise ensemble ...``: protein backbone ensembles: validation, baselines, a generative model.

Registration imports nothing heavy (no torch, no gemmi), so ``equipoise --help`` stays fast; the
handlers import what they need.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ensemble`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("ensemble", help="protein backbone ensembles: validation, baselines, a generative model", description="protein backbone ensembles: validation, baselines, a generative model")
    commands = parser.add_subparsers(dest="ensemble_command", metavar="COMMAND")
    commands.required = True
