"""``equipoise xtal rfactor MODEL DATA``: score only (R-work, R-free, scales, bins, twinning).

Registration imports nothing heavy; the handler imports the API (equipoise.xtal.rfactor).
"""

from __future__ import annotations

import argparse


def register_rfactor(commands: argparse._SubParsersAction) -> None:
    """Add ``rfactor`` to the ``xtal`` sub-commands."""
    p = commands.add_parser("rfactor", help="R-work/R-free of a model against X-ray data (no refinement)",
                            description="Scale a model to the data (bulk solvent, anisotropic and binned "
                                        "scales) and report R-work, R-free, CC, the per-bin table and "
                                        "twinning statistics. Writes summary.json, maps.mtz and run.log "
                                        "with --out.")
    p.add_argument("model", metavar="MODEL", help="PDB or mmCIF model")
    p.add_argument("data", metavar="DATA", help="MTZ or SF-mmCIF reflections")
    p.add_argument("--labin", metavar="FP,SIGFP[,FREE]", help="columns to use (default: detected)")
    p.add_argument("--free", type=int, metavar="N", help="flag value of the free set (default: detected)")
    p.add_argument("--resolution", type=float, metavar="DMIN", help="high-resolution limit (Å)")
    p.add_argument("--target", default="ml", choices=("ml", "ls"), help="target to report (default ml)")
    p.add_argument("--no-twin", action="store_true", help="skip the twinning statistics")
    p.add_argument("--out", metavar="DIR", help="write summary.json, maps.mtz and run.log here")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(handler=_rfactor)


def _rfactor(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from equipoise.xtal.rfactor import rfactor

    result = rfactor(args.model, args.data, labin=args.labin, free=args.free, d_min=args.resolution,
                     target=args.target, twinning=not args.no_twin, out=args.out,
                     progress="quiet" if args.quiet else "auto")
    print(json.dumps(asdict(result), indent=2, default=float) if args.json else result.summary())
    return 0
