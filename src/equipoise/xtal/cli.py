"""``equipoise xtal ...``: atomic model refinement against X-ray data (R-work/R-free, geometry, maps).

Sub-commands: ``geometry`` (geometry_cli), ``refine`` (refine_cli), ``rfactor`` (rfactor_cli,
``register_rfactor``). Registration imports nothing heavy (no torch, no gemmi), so
``equipoise --help`` stays fast; the handlers import what they need.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

#: modules that add sub-commands through ``register(commands)``, in help order
COMMAND_MODULES = ("equipoise.xtal.refine_cli", "equipoise.xtal.rfactor_cli", "equipoise.xtal.geometry_cli")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``xtal`` command and its sub-commands to the top-level parser."""
    parser = subparsers.add_parser("xtal", help="atomic model refinement against X-ray data (R-work/R-free, geometry, maps)", description="atomic model refinement against X-ray data (R-work/R-free, geometry, maps)")
    commands = parser.add_subparsers(dest="xtal_command", metavar="COMMAND")
    commands.required = True
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            getattr(module, "register", None) and module.register(commands)
            getattr(module, "register_rfactor", None) and module.register_rfactor(commands)
