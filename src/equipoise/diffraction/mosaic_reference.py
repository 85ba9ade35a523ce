"""What an image of a finite mosaic-domain draw determines: its mean orientation and equivalent spread.

An image simulated with nanoBragg's random domains (``-mosaic_domains n``, ``-mosaic_seed``) is the
sum of n crystals oriented ``U_i · M`` (``M`` = the misset rotation ``Rz·Ry·Rx``, ``U_i`` = rotation
by ``spread · frac_i`` about ``axis_i``, rng.mosaic_draws; PHYSICS.md §1.10). For n = 10 the draw's
mean orientation is not ``M``: per axis it sits about 0.15 × spread away (up to 0.34 × spread for
the draws of ``-mosaic_seed`` 1002), and its spread about that mean is not the nominal one. A
refinement model with a symmetric mosaic (the quadrature of crystal.mosaic_quadrature, mean
orientation = its misset) can at best recover the draw's mean orientation and an equivalent
spread, not the nominal values: this module computes those reference values, to score
refinements against (benchmarks/diffraction_capture.py) beside the nominal truth.

* mean orientation: the chordal L2 mean of the domain rotations (the rotation nearest to
  (1/n) Σ U_i in the Frobenius norm, from its SVD; Moakher, SIAM J. Matrix Anal. Appl. 24, 1-16,
  2002), composed with ``M`` and expressed as misset angles;
* equivalent spread: the spread s at which the model's domains have the same mean squared rotation
  angle as the draw's about its mean: ``s = sqrt(mean_i θ_i²) / sqrt(mean_j frac_j²)`` with θ_i the
  angle of ``U_i · R̄ᵀ`` and frac_j the model's angle fractions (second-moment matching).
"""

from __future__ import annotations

import math

import numpy as np

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.crystal import mosaic_quadrature, mosaic_samples
from equipoise.diffraction.rng import rodrigues_matrix_np, umat_to_misset_deg

__all__ = ["draw_reference"]


def _misset_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """``Rz(γ)·Ry(β)·Rx(α)`` (3, 3) of misset angles in degrees (crystal misset convention)."""
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = rodrigues_matrix_np(np.array([1.0, 0.0, 0.0]), ax)
    ry = rodrigues_matrix_np(np.array([0.0, 1.0, 0.0]), ay)
    rz = rodrigues_matrix_np(np.array([0.0, 0.0, 1.0]), az)
    return rz @ ry @ rx


def draw_reference(truth: SimulationConfig, model_domains: int = 10) -> dict[str, float | list[float]]:
    """Mean orientation (misset angles, deg) and equivalent spread (deg) of ``truth``'s mosaic domains.

    ``truth``: the configuration the observed image was simulated from (its ``-misset`` angles,
    ``-mosaic`` spread, domain count, sampling and seed); ``model_domains``: domains of the
    refinement model's quadrature (the equivalent spread is for that model). Returns
    ``{"misset_deg": [rx, ry, rz], "mosaic_spread_deg": s, "mean_offset_deg": angle between the draw's
    mean orientation and the nominal one}``. Without a spread: the nominal values.
    """
    cr = truth.crystal
    misset = tuple(float(v) for v in (cr.misset_deg or (0.0, 0.0, 0.0)))
    spread = float(cr.mosaic_spread_deg)
    if spread <= 0.0:
        return {"misset_deg": list(misset), "mosaic_spread_deg": 0.0, "mean_offset_deg": 0.0}
    axes, fracs = mosaic_samples(truth)
    umats = np.stack([rodrigues_matrix_np(a, math.radians(spread * f)) for a, f in zip(axes, fracs)])
    u, _, vt = np.linalg.svd(umats.mean(axis=0))
    mean = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    relative = umats @ mean.T
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    rms = math.degrees(math.sqrt(float(np.mean(np.arccos(cos) ** 2))))
    _, model_fracs = mosaic_quadrature(model_domains)
    offset = math.degrees(math.acos(min(1.0, max(-1.0, (float(np.trace(mean)) - 1.0) / 2.0))))
    return {"misset_deg": list(umat_to_misset_deg(mean @ _misset_matrix(misset))),
            "mosaic_spread_deg": rms / math.sqrt(float(np.mean(model_fracs ** 2))),
            "mean_offset_deg": offset}
