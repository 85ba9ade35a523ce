"""Capture table of the default ``refine`` (strategy "capture"): detector size x start offset x seed.

Each case: cubic 100 Å, N = 5, default_F 100, λ = 1 Å, 100 mm. Truth: mosaic spread drawn
log-uniformly in [0.05, 2] deg and a misset offset of the given size (norm of the x, y, z angles,
deg) in a random direction from the start (0, 0, 0); the observed image has its own 400 random
nanoBragg mosaic domains (``-mosaic_seed`` 1000 + seed, not the model's sampling; float32) and
Poisson noise. The model starts at mosaic 0.3 deg, misset (0, 0, 0), with a 10-domain mosaic
quadrature (its last stage 30 domains, refine's default) and refines ``mosaic,misset`` with every
default (the orientation search included). Success: mosaic within 0.1 deg and every misset angle
within 0.2 deg of the truth.

Each refine is also scored against what the observed domain draw determines (``draw``:
its mean orientation and equivalent spread, :mod:`equipoise.diffraction.mosaic_reference`; a
10-domain draw's mean orientation lies up to 0.34 x spread from the nominal misset, a 400-domain
draw's within ~0.05 x), and the data loss of the refined model is compared with that of the model
at the nominal truth on the whole image (``beats_truth``: the fit explains the image at least as
well as the truth does, so a miss of the nominal values is not an optimiser failure).
``--observed-domains`` sets the observed image's domain count (default 400; 10 reproduces the
earlier table of docs/refinement.md).

    nice -n 10 python benchmarks/diffraction_capture.py [--sizes 64,128,512,1024] [--starts 2,5,10]
        [--seeds 0,1,2] [--observed-domains 400] [--out capture.jsonl]

Prints one line per refine as it finishes (wall time per refine) and the table at the end; with
``--out`` appends one JSON line per refine so that a partial run still leaves its results.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from equipoise.diffraction.demo import CAPTURE_DETECTORS as DETECTORS  # noqa: E402
from equipoise.diffraction.demo import CAPTURE_OBSERVED_DOMAINS  # noqa: E402
from equipoise.diffraction.demo import capture_case as case  # noqa: E402
from equipoise.diffraction.refine import FINAL_MOSAIC_DOMAINS, evaluate_loss, final_model_config, refine, starting_config  # noqa: E402

MOSAIC_TOL, MISSET_TOL = 0.1, 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128,512,1024")
    parser.add_argument("--starts", default="2,5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--observed-domains", type=int, default=CAPTURE_OBSERVED_DOMAINS)
    parser.add_argument("--final-mosaic-domains", type=int, default=FINAL_MOSAIC_DOMAINS,
                        help="domains of the model's last stage (refine's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(v) for v in args.sizes.split(",")]
    starts = [float(v) for v in args.starts.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 shared cores)", flush=True)
    for seed in seeds:
        for size in sizes:
            for offset in starts:
                observed, start, truth = case(size, offset, seed, observed_domains=args.observed_domains)
                began = time.perf_counter()
                r = refine(observed, start, "mosaic,misset", full_image=False,
                           final_mosaic_domains=args.final_mosaic_domains)
                wall = time.perf_counter() - began
                fit_loss, truth_loss = (loss_at(observed, start, v, args.final_mosaic_domains)
                                        for v in (r.parameters, truth))
                mosaic_err, misset_err = errors(r.parameters, truth)
                draw_mosaic_err, draw_misset_err = errors(r.parameters, truth["draw"])
                row = {"size": size, "start_deg": offset, "seed": seed, "observed_domains": args.observed_domains,
                       "final_mosaic_domains": args.final_mosaic_domains,
                       "truth": truth, "refined": r.parameters,
                       "mosaic_err": mosaic_err, "misset_err": misset_err,
                       "success": mosaic_err <= MOSAIC_TOL and misset_err <= MISSET_TOL,
                       "draw_mosaic_err": draw_mosaic_err, "draw_misset_err": draw_misset_err,
                       "draw_success": draw_mosaic_err <= MOSAIC_TOL and draw_misset_err <= MISSET_TOL,
                       "fit_loss": fit_loss, "truth_loss": truth_loss, "beats_truth": fit_loss <= truth_loss,
                       "wall_s": wall,
                       "standard_errors": r.quality["standard_errors"], "undetermined": r.quality["undetermined"],
                       "converged": r.converged, "fit_ok": r.fit_ok, "flags": [f["name"] for f in r.quality["flags"]],
                       "steps": r.iterations, "evaluations": r.evaluations, "pixels": r.pixels,
                       "search_s": r.search["wall_s"] if r.search else 0.0,
                       "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"{size:>5}² start {offset:>4g}° seed {seed}: mosaic {truth['mosaic_spread_deg']:.3f} -> "
                      f"err {mosaic_err:.3f}°, misset err {misset_err:.3f}°, {'OK  ' if row['success'] else 'FAIL'} "
                      f"| vs draw: mosaic {draw_mosaic_err:.3f}°, misset {draw_misset_err:.3f}° "
                      f"{'OK  ' if row['draw_success'] else 'FAIL'} | loss fit/truth {fit_loss / truth_loss:.3f} "
                      f"converged {r.converged} flags {row['flags']} {wall:.1f} s", flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row) + "\n")
    print(table(rows))


def loss_at(observed: np.ndarray, model, values: dict, final_mosaic_domains: int) -> float:
    """Data loss (Poisson deviance, whole image) of the final-stage model of ``model`` at ``values``'
    mosaic spread and misset (deg)."""
    config = starting_config(final_model_config(model, ("mosaic", "misset"), "capture", final_mosaic_domains),
                             mosaic_spread_deg=float(values["mosaic_spread_deg"]),
                             misset_deg=tuple(float(v) for v in values["misset_deg"]))
    return evaluate_loss(observed, config)


def errors(refined: dict, reference: dict) -> tuple[float, float]:
    """(|mosaic error|, largest |misset angle error|) in degrees of ``refined`` against ``reference``."""
    mosaic = abs(refined["mosaic_spread_deg"] - reference["mosaic_spread_deg"])
    return mosaic, max(abs(a - b) for a, b in zip(refined["misset_deg"], reference["misset_deg"]))


def table(rows: list[dict]) -> str:
    """Markdown table: detector x start, successes / seeds against the nominal truth (and against the
    observed domain draw), fits whose loss is at most the truth's, median (range) wall time per refine."""
    lines = ["| detector | start 2° | start 5° | start 10° | fit loss ≤ truth's | median s / refine (range) |",
             "|---|---|---|---|---|---|"]
    for size in sorted({r["size"] for r in rows}):
        cells, walls = [], []
        for offset in (2.0, 5.0, 10.0):
            hit = [r for r in rows if r["size"] == size and r["start_deg"] == offset]
            walls += [r["wall_s"] for r in hit]
            cells.append(f"{sum(r['success'] for r in hit)}/{len(hit)} ({sum(r['draw_success'] for r in hit)}/{len(hit)})"
                         if hit else "not run")
        done = [r for r in rows if r["size"] == size]
        pixels, pixel_mm = DETECTORS[size]
        lines.append(f"| {pixels}² × {pixel_mm} mm | " + " | ".join(cells)
                     + f" | {sum(r['beats_truth'] for r in done)}/{len(done)} | {np.median(walls):.0f} "
                       f"({min(walls):.0f}–{max(walls):.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
