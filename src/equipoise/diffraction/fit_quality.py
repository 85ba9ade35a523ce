"""Is a finished refinement a good fit? Checks behind ``fit_ok`` and ``converged``.

An optimiser that stops is not a fit that is right: a mosaic spread can grow to blur spots over a
wrong orientation, or a constant detector offset can be absorbed by the crystal parameters, and
the loss still stops falling. Each check below is one flag (name, message, likely fix):

* ``deviance_high``: for counting data (integer pixels) the final Poisson deviance
  ``D = Σ μ − y + y log(y/μ)`` against its expectation under Poisson noise at the fitted model,
  ``E[D] = Σ_p E_{y~Poisson(μ_p)}[μ_p − y + y log(y/μ_p)]`` (≈ 1/2 + 1/(12 μ) per pixel for large μ:
  the χ² approximation of the deviance, McCullagh & Nelder, *Generalized Linear Models*, §6.2;
  summed exactly over y for small μ). For noiseless (non-integer) images: D against the data
  scale Σ y (the deviance of a good fit is a small fraction of the counts).
* ``parameter_at_bound`` / ``parameter_far``: the mosaic spread within 2 % of its upper bound, or
  above ``MOSAIC_SUSPECT_DEG`` (the blurring parameter absorbing an orientation error). The misset
  is not judged by its distance from the start: capturing a far start is the point of the search.
* ``unmodelled_offset``: the median residual (observed − model) of the background pixels is a large
  constant (a detector pedestal or ADC offset not in the model, e.g. SMV ``-intfile`` images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

__all__ = ["QualityFlag", "expected_deviance", "assess_fit"]

#: D / E[D] above this (counting data) is a poor fit
DEVIANCE_RATIO = 1.5
#: D / Σy above this (noiseless data) is a poor fit
DEVIANCE_FRACTION = 0.05
#: mosaic spreads (deg) above this are suspect for a still of a crystal
MOSAIC_SUSPECT_DEG = 3.0
#: a constant residual above this many photons/pixel and this many standard errors is an offset
OFFSET_PHOTONS, OFFSET_SIGMAS = 0.5, 5.0


@dataclass
class QualityFlag:
    """One failed check: ``name``, ``message`` (what was measured) and ``fix`` (what to try)."""

    name: str
    message: str
    fix: str

    def to_dict(self) -> dict:
        return {"name": self.name, "message": self.message, "fix": self.fix}


def expected_deviance(mu: np.ndarray) -> float:
    """E[Σ μ − y + y log(y/μ)] for y ~ Poisson(μ) per pixel (μ photons/pixel, any shape)."""
    mu = np.asarray(mu, dtype=np.float64).ravel()
    mu = mu[mu > 0]
    large = mu > 30.0
    total = float(np.sum(0.5 + 1.0 / (12.0 * mu[large])))
    small = mu[~large]
    if small.size:
        k = np.arange(0, 80, dtype=np.float64)[None, :]
        m = small[:, None]
        logp = k * np.log(m) - m - gammaln(k + 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = m - k + np.where(k > 0, k * (np.log(np.where(k > 0, k, 1.0)) - np.log(m)), 0.0)
        total += float(np.sum(np.exp(logp) * dev))
    return total


def assess_fit(observed: np.ndarray, model: np.ndarray, weight: np.ndarray, deviance: float | None, *,
               names: list[str], parameters: dict, start: dict, mosaic_bound: float | None,
               strong: np.ndarray | None = None,
               mosaic_domains: tuple[int, int | None, str] | None = None) -> tuple[list[QualityFlag], dict]:
    """Flags of the module docstring and the measured numbers behind them.

    ``observed``, ``model``, ``weight``: (spixels, fpixels) photons/pixel and pixel weights (0 =
    not fitted); ``deviance``: the final Poisson data term (None for least squares: no deviance
    check); ``names``: refined names; ``parameters``/``start``: refined/starting values (user
    units); ``mosaic_bound``: the upper bound of the refined spread (deg);
    ``strong``: pixels on spots, excluded from the offset check (None: where the model stands
    above its median by more than max(0.5, 10 %) photons); ``mosaic_domains``: (domains of the
    model, domains a smooth profile needs at the fitted spread
    (:func:`~equipoise.diffraction.crystal.mosaic_domains_needed`) or None, the option that sets
    them): a deviance flag then names a mosaic model too coarse for a plausible spread (at most
    ``MOSAIC_SUSPECT_DEG``), and its fix.
    """
    flags: list[QualityFlag] = []
    fitted = weight > 0
    y, mu = observed[fitted], np.clip(model[fitted], 0.0, None)
    counts = bool(np.all(np.abs(y - np.round(y)) < 1e-6))
    numbers: dict = {"counting_data": counts}
    if deviance is not None:
        if counts:
            expected = expected_deviance(mu)
            ratio = deviance / max(expected, 1e-300)
            numbers.update(deviance=deviance, expected_deviance=expected, deviance_ratio=ratio)
            if ratio > DEVIANCE_RATIO:
                message = (f"Poisson deviance {deviance:.4g} is {ratio:.2f}x its expectation under noise "
                           f"({expected:.4g}); the model does not explain the image")
                fix = "the orientation may be in a wrong basin: try --search-misset 15,5 (or a wider range); " \
                      "check the geometry flags"
                if mosaic_domains is not None:
                    used, needed, option = mosaic_domains
                    numbers.update(mosaic_domains=used, mosaic_domains_needed=needed)
                    plausible = float(parameters.get("mosaic_spread_deg", 0.0)) <= MOSAIC_SUSPECT_DEG
                    if needed is not None and needed > used and plausible:
                        message += (f"; its {used}-domain mosaic is too coarse for the fitted spread (about "
                                    f"{needed} domains give a smooth spot profile at this resolution)")
                        fix = f"{option} {needed} (slower: time grows with the domains); if the flag stays, {fix}"
                flags.append(QualityFlag("deviance_high", message, fix))
        else:
            fraction = deviance / max(float(y.sum()), 1e-300)
            numbers.update(deviance=deviance, deviance_fraction_of_counts=fraction)
            if fraction > DEVIANCE_FRACTION:
                flags.append(QualityFlag("deviance_high",
                                         f"Poisson deviance {deviance:.4g} is {fraction:.1%} of the {y.sum():.4g} "
                                         "photons fitted (noiseless data: a good fit leaves well under "
                                         f"{DEVIANCE_FRACTION:.0%})",
                                         "the orientation may be in a wrong basin: try --search-misset 15,5"))
    if "mosaic_spread_deg" in parameters:
        mosaic = float(parameters["mosaic_spread_deg"])
        numbers["mosaic_spread_deg"] = mosaic
        if mosaic_bound is not None and mosaic >= 0.98 * mosaic_bound:
            flags.append(QualityFlag("parameter_at_bound",
                                     f"mosaic spread {mosaic:.3g} deg is at its upper bound {mosaic_bound:g} deg",
                                     "a wide spread blurs spots over a wrong orientation: try --search-misset 15,5"))
        elif mosaic > MOSAIC_SUSPECT_DEG:
            flags.append(QualityFlag("parameter_far",
                                     f"mosaic spread {mosaic:.3g} deg (start {float(start['mosaic_spread_deg']):.3g}) "
                                     f"is above {MOSAIC_SUSPECT_DEG:g} deg, unusual for a crystal",
                                     "a wide spread blurs spots over a wrong orientation: try --search-misset 15,5"))
    if strong is None:
        level = float(np.median(model[fitted]))
        strong = model > level + max(0.5, 0.1 * abs(level))
    background = fitted & ~strong
    if background.sum() >= 10 and not {"background"} <= set(names):
        r = observed[background] - np.clip(model[background], 0.0, None)
        offset = float(np.median(r))
        spread = float(np.median(np.abs(r - offset))) * 1.4826 / math.sqrt(r.size) * 1.25
        numbers["median_background_residual"] = offset
        if abs(offset) > OFFSET_PHOTONS and abs(offset) > OFFSET_SIGMAS * max(spread, 1e-12):
            flags.append(QualityFlag("unmodelled_offset",
                                     f"the background pixels sit {offset:+.4g} photons/pixel from the model "
                                     "(a constant offset the model lacks, e.g. an SMV ADC pedestal)",
                                     "add scale,background to --refine"))
    return flags, numbers
