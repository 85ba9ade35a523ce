"""The ``equipoise`` command: one sub-command per application plus ``plot``.

Applications register their sub-commands through a ``register(subparsers)`` function in their
``cli`` module (listed in ``APPLICATIONS``). Registration must stay cheap: heavy imports (torch,
matplotlib) happen inside the handlers, so that ``equipoise --help`` answers quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from equipoise import __version__
from equipoise.errors import EquipoiseError

#: application name -> module exposing ``register(subparsers)``
APPLICATIONS: dict[str, str] = {
    "diffraction": "equipoise.diffraction.cli",
    "xtal": "equipoise.xtal.cli",
    "peptide": "equipoise.peptide.cli",
    "ensemble": "equipoise.ensemble.cli",
}


def _plot(args: argparse.Namespace) -> int:
    from equipoise.core.plots import plot_run

    for path in plot_run(args.run_dir, out_dir=args.out):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered application."""
    parser = argparse.ArgumentParser(
        prog="equipoise",
        description="Fit physical models to experimental data by gradient descent, "
        "with every loss term's weight, share and gradient on record.",
    )
    parser.add_argument("--version", action="version", version=f"equipoise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    plot = sub.add_parser("plot", help="draw the PNG figures of a run directory",
                          description="Draw loss per term, shares, effective weights, gradient "
                          "norms and parameter trajectories from RUN_DIR/record.jsonl.")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding record.jsonl")
    plot.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR/plots)")
    plot.set_defaults(handler=_plot)
    for module_name in APPLICATIONS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except EquipoiseError as exc:
        print(f"equipoise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("equipoise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
