"""``equipoise diffraction refine`` and ``equipoise diffraction demo``.

``refine IMAGE <nanoBragg flags> --refine mosaic,misset[,...] --out DIR`` fits the model the
flags describe (geometry and starting values) to IMAGE (raw float32, SMV ``.img`` or ``.npy``).
``demo --out DIR`` runs the refinement demonstration (docs/refinement.md).

Registration imports neither torch nor the simulator; the handlers do.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

#: = tuple(refine.REFINABLE), repeated here so that registration does not import torch (tested)
REFINE_NAMES = ("mosaic", "misset", "cell", "ncells", "distance", "beam_center", "detector_rotation", "twotheta",
                "wavelength", "fluence", "scale", "background")

_REFINE_EPILOG = f"""\
IMAGE comes first, then nanoBragg flags giving the geometry and the starting model, e.g.
  equipoise diffraction refine obs.bin -cell 100 100 100 90 90 90 -N 5 -default_F 100 \\
      -mosaic 0.2 -mosaic_domains 5 -misset 0 0 0 -lambda 1 -detpixels 64 -pixel 0.1 \\
      -distance 100 -fluence 1e28 --refine mosaic,misset --out runs/refine
--refine names: {", ".join(REFINE_NAMES)}.
By default (--strategy capture) the orientation is searched on a grid of 12 deg radius around
the start, then refined on the strong low-resolution pixels, then on all strong pixels, and only
then the mosaic spread is released. --search-misset RANGE,STEP changes the grid, "off" skips it.
Rerunning the same command with the same --out resumes from the checkpoint; --overwrite starts
over; Ctrl-C leaves a checkpoint (written every step) and a line in run.log.
Writes DIR/summary.json (parameters in user units, initial_loss, final_loss, iterations,
converged, fit_ok, reasons, search), record.jsonl, config.json, run.log, search.json,
plots/images.png (observed / model / residual), plots/parameters.png, plots/loss.png,
refined.bin (float32) and refined.npy. See docs/refinement.md.
"""


def register(actions: argparse._SubParsersAction) -> None:
    """Add the ``refine`` and ``demo`` actions to the ``diffraction`` sub-parser ``actions``
    (created by equipoise.diffraction.cli with its flag-collecting parser class)."""
    ref = actions.add_parser(
        "refine", raw_flags="flags", help="refine crystal, beam and detector parameters against an image",
        description="Refine parameters of the nanoBragg model given by FLAGS against a still image.",
        usage="equipoise diffraction refine IMAGE [FLAGS ...] --refine NAMES --out DIR [options]",
        epilog=_REFINE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ref.add_argument("--refine", required=True, metavar="NAMES", help="comma-separated parameters to refine")
    ref.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    ref.add_argument("--loss", default="poisson", choices=("poisson", "lsq"), help="data term (default poisson)")
    ref.add_argument("--mask", metavar="FILE", help="mask image (SMV, .npy or raw float32); 0 = ignore pixel")
    ref.add_argument("--strategy", default="capture", choices=("capture", "orient", "staged", "joint"),
                     help="stage plan: capture (default: orientation search, strong pixels, low resolution "
                          "first, mosaic released last); on the whole image: misset first then all (orient), "
                          "full staged release (staged: misset, mosaic, cell, detector, all) or one joint stage")
    ref.add_argument("--steps", type=int, default=25, help="optimiser steps per stage (default 25)")
    ref.add_argument("--coarse-blur", type=float, default=0.0, metavar="PX",
                     help="fit Gaussian-blurred images (sigma PX pixels) in the first stage (default 0: off)")
    ref.add_argument("--search-misset", metavar="RANGE[,STEP]",
                     help="orientation search before refining: misset offsets within RANGE deg of the start "
                          "on a grid of STEP deg (default RANGE/3), broadened spots, then a finer grid around "
                          "the best points; e.g. 15,5; 'off' skips it (default: 12,4 with --strategy capture)")
    ref.add_argument("--search-ncells", type=float, default=3.0, metavar="N",
                     help="cells per axis of the coarse search model (broadened spots; default 3)")
    ref.add_argument("--cell-constraint", default="none", choices=("none", "cubic"),
                     help="cubic: refine one cell length (a = b = c, 90 deg angles); default none")
    ref.add_argument("--final-mosaic-domains", type=int, default=None, metavar="N",
                     help="capture strategy, mosaic refined: the last stage models at least N mosaic domains "
                          "(default 30; 0 keeps -mosaic_domains throughout)")
    ref.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                     help="steps between checkpoints (default 1: a step can take seconds on large images)")
    ref.add_argument("--overwrite", action="store_true",
                     help="start over in --out even if it holds a run (default: resume it)")
    ref.add_argument("--no-plots", action="store_true", help="draw no figures (batch runs)")
    ref.add_argument("--quiet", action="store_true", help="no progress display")
    ref.set_defaults(handler=_refine)
    demo = actions.add_parser("demo", help="run the refinement demonstration",
                              description="Simulate an observed image and refine mosaic spread and misset "
                                          "from a wrong start; print truth/start/refined; draw a figure.")
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (default runs/demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress display")
    demo.set_defaults(handler=_demo)


def _refine(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from equipoise.diffraction.cli import load_config
    from equipoise.diffraction.orientation_search import parse_search
    from equipoise.diffraction.refine import FINAL_MOSAIC_DOMAINS, image_shape, load_image, parse_refine, refine
    from equipoise.diffraction.run_settings import check_output_dir
    from equipoise.errors import InputError

    tokens = list(args.flags)
    if not tokens or tokens[0].startswith("-"):
        raise InputError("IMAGE missing: give the observed image first, then the nanoBragg flags", field="IMAGE")
    image_path, flags = Path(tokens[0]), tokens[1:]
    names = parse_refine(args.refine)
    if args.search_misset is None:
        search = "auto"
    else:
        search = None if args.search_misset.strip().lower() == "off" else parse_search(args.search_misset)
    check_output_dir(args.out)
    if args.final_mosaic_domains is not None and args.final_mosaic_domains < 0:
        raise InputError(f"must be >= 0, got {args.final_mosaic_domains}", field="--final-mosaic-domains")
    if args.checkpoint_every < 1:
        raise InputError(f"must be >= 1, got {args.checkpoint_every}", field="--checkpoint-every")
    config, notes = load_config(flags)
    for note in notes:
        print(f"warning: {note}")
    shape = image_shape(config)
    observed = load_image(image_path, shape)
    mask = load_image(Path(args.mask), shape, what="mask") if args.mask else None
    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    device = torch.device(config.device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA device is available", field="-device")
    try:
        result = refine(observed, config, names, loss=args.loss, mask=mask, out_dir=args.out, steps=args.steps,
                        strategy=args.strategy, coarse_blur_px=args.coarse_blur, search=search,
                        search_n_cells=args.search_ncells, cell_constraint=args.cell_constraint, dtype=dtype,
                        device=device, progress="quiet" if args.quiet else "auto", overwrite=args.overwrite,
                        checkpoint_every=args.checkpoint_every, plots=not args.no_plots,
                        final_mosaic_domains=FINAL_MOSAIC_DOMAINS if args.final_mosaic_domains is None
                        else args.final_mosaic_domains)
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command with --out {args.out} to resume from its checkpoint")
        return 130
    if result.resumed:
        print(f"resumed the run in {args.out} from its checkpoint")
    if result.search is not None:
        found = result.search
        print(f"orientation search: {found['points']} + {found['evaluations'] - found['points']} grid points "
              f"(radius {found['range_deg']:g} deg, step {found['step_deg']:g}); best misset "
              f"{_fmt(found['best_misset_deg'])} (offset {_fmt(found['best_offset_deg'])}), "
              f"loss {found['best_loss']:.6g}; {found['wall_s']:.2f} s")
    errors = result.quality.get("standard_errors", {})
    print(f"{'parameter':<20} {'start':>28} {'refined':>28} {'standard error':>28}")
    for key, value in result.parameters.items():
        print(f"{key:<20} {_fmt(result.start[key]):>28} {_fmt(value):>28} {_fmt(errors.get(key, math.nan)):>28}")
    print(f"data loss ({args.loss}) {result.initial_loss:.6g} -> {result.final_loss:.6g} in {result.iterations} "
          f"steps, {result.evaluations} evaluations, {result.wall_s:.2f} s; converged: {result.converged} "
          f"(optimiser stopped: {result.optimizer_converged}, fit ok: {result.fit_ok})")
    for reason in result.reasons:
        print(f"warning: {reason}")
    for key in result.quality.get("undetermined", []):
        print(f"warning: {key} {_fmt(result.parameters[key])} ± {_fmt(errors[key])} is not determined by this "
              "image (standard error above half the value): a larger detector area or more spots would be needed")
    print(f"wrote {Path(args.out) / 'summary.json'}, record.jsonl, plots/, refined.bin, refined.npy")
    if not np.isfinite(result.final_loss):
        return 1
    return 0 if result.fit_ok else 3  # 3: finished, but the fit is not good (the warnings say why)


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.5g}" for v in value) + "]"
    return f"{value:.6g}"


def _demo(args: argparse.Namespace) -> int:
    import torch

    from equipoise.diffraction.demo import run_demo

    torch.set_num_threads(min(2, torch.get_num_threads()))
    demo = run_demo(args.out, progress="quiet" if args.quiet else "auto")
    r = demo.result
    print(demo.table)
    print(f"{r.iterations} steps, {r.evaluations} model evaluations, {r.wall_s:.2f} s of fitting; "
          f"converged: {r.converged}")
    for name, ok in demo.criteria.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    print(f"run record: {args.out}/record.jsonl, summary.json, plots/; figure: {demo.figure}")
    return 0 if demo.passed else 1
