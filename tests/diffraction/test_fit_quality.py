"""Honest convergence: each way a refinement can stop in a bad fit is flagged, with its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equipoise.diffraction.crystal import mosaic_domains_needed
from equipoise.diffraction.fit_quality import assess_fit, expected_deviance
from equipoise.diffraction.flags import parse_nanobragg_args
from equipoise.diffraction.refine import refine
from equipoise.diffraction.simulate import Simulator

GEOMETRY = ("-cell 100 100 100 90 90 90 -N 5 -default_F 100 -mosaic_domains 3 -lambda 1 -detpixels 32 "
            "-pixel 0.2 -distance 100 -fluence 1e29").split()
TRUTH = ["-mosaic", "0.5", "-misset", "2", "1.5", "-0.5"]


def _image(flags: list[str]) -> np.ndarray:
    with torch.no_grad():
        return Simulator(parse_nanobragg_args(GEOMETRY + flags))().numpy().astype(np.float64)


def _names(result) -> set[str]:
    return {f["name"] for f in result.quality["flags"]}


def _poisson_deviance(mu: np.ndarray, y: np.ndarray) -> float:
    """sum(mu - y + y log(y / mu)), 0 log 0 = 0: refine.poisson_deviance without the floor, in numpy."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(mu - y + np.where(y > 0, y * np.log(y / mu), 0.0)))


def test_expected_deviance_matches_poisson_draws() -> None:
    rng = np.random.default_rng(0)
    mu = np.concatenate([np.full(2000, 0.05), np.full(2000, 1.0), np.full(2000, 200.0)])
    draws = []
    for _ in range(50):
        draws.append(_poisson_deviance(mu, rng.poisson(mu).astype(np.float64)))
    assert abs(np.mean(draws) / expected_deviance(mu) - 1) < 0.02


def test_wrong_basin_is_not_converged_and_suggests_the_search() -> None:
    """The issue's failure, small: 10.8 deg off, no search, one joint stage: the mosaic spread grows
    (0.3 -> 1.7 deg, measured) to blur spots over a wrong orientation."""
    observed = _image(["-mosaic", "0.5", "-misset", "8", "-6", "4"])
    start = parse_nanobragg_args(GEOMETRY + ["-mosaic", "0.3", "-misset", "0", "0", "0"])
    result = refine(observed, start, "mosaic,misset", search=None, steps=8, strategy="joint")
    assert not result.fit_ok and not result.converged
    assert "deviance_high" in _names(result)
    assert any("--search-misset" in r for r in result.reasons)
    assert result.summary()["fit_ok"] is False and result.summary()["reasons"]


def test_a_good_fit_on_counts_is_ok() -> None:
    clean = _image(TRUTH)
    observed = np.random.default_rng(1).poisson(clean).astype(np.float64)
    start = parse_nanobragg_args(GEOMETRY + ["-mosaic", "0.4", "-misset", "1.5", "1", "0"])
    result = refine(observed, start, "mosaic,misset", search=None, steps=8, final_mosaic_domains=6)
    assert result.quality["counting_data"]
    assert result.quality["deviance_ratio"] < 1.5, result.quality
    assert result.fit_ok and result.converged, result.reasons


def test_constant_offset_is_flagged_until_scale_background_are_refined() -> None:
    observed = _image(TRUTH) + 40.0  # an SMV -intfile pedestal (adc offset 40)
    start = parse_nanobragg_args(GEOMETRY + ["-mosaic", "0.4", "-misset", "1.5", "1", "0"])
    plain = refine(observed, start, "mosaic,misset", search=None, steps=6, final_mosaic_domains=6)
    assert "unmodelled_offset" in _names(plain) and not plain.converged
    assert any("scale,background" in r for r in plain.reasons)
    fixed = refine(observed, start, "mosaic,misset,scale,background", search=None, steps=8,
                   final_mosaic_domains=6)
    assert "unmodelled_offset" not in _names(fixed)


@pytest.mark.parametrize("mosaic, flag", [(4.95, "parameter_at_bound"), (3.5, "parameter_far"), (0.8, None)])
def test_mosaic_at_its_bound_or_of_degrees_is_flagged(mosaic: float, flag: str | None) -> None:
    image = np.full((8, 8), 10.0)
    flags, numbers = assess_fit(image, image, np.ones_like(image), 0.0, names=["mosaic", "misset"],
                                parameters={"mosaic_spread_deg": mosaic, "misset_deg": [0, 0, 0]},
                                start={"mosaic_spread_deg": 0.2, "misset_deg": [0, 0, 0]}, mosaic_bound=5.0)
    assert [f.name for f in flags] == ([] if flag is None else [flag])
    assert all("--search-misset" in f.fix for f in flags)


def test_mosaic_domains_needed_follows_the_spot_disc() -> None:
    """The calibration case (cubic 100 Å, N = 5, fitted pixels out to |q| 0.20 Å⁻¹, spread 1.33°):
    120 domains cleared the deviance flag that 30, 60 and 90 raised; quadratic in spread and |q|."""
    config = parse_nanobragg_args("-cell 100 100 100 90 90 90 -N 5 -default_F 100".split())
    needed = mosaic_domains_needed(1.33, 0.20, config)
    assert 95 <= needed <= 130
    assert mosaic_domains_needed(2.66, 0.20, config) == pytest.approx(4 * needed, rel=0.02)
    assert mosaic_domains_needed(1.33, 0.10, config) == pytest.approx(needed / 4, rel=0.05)
    assert mosaic_domains_needed(1.33, 0.20, parse_nanobragg_args(["-default_F", "100", "-N", "5"])) is None


def _deviance_flag(spread_deg: float, domains: tuple[int, int | None, str] | None):
    mu = np.full((16, 16), 50.0)
    observed = np.random.default_rng(3).poisson(2.0 * mu).astype(np.float64)  # the model explains half
    deviance = _poisson_deviance(mu, observed)
    flags, numbers = assess_fit(observed, mu, np.ones_like(mu), deviance, names=["mosaic"],
                                parameters={"mosaic_spread_deg": spread_deg},
                                start={"mosaic_spread_deg": 0.3}, mosaic_bound=None, mosaic_domains=domains)
    return next(f for f in flags if f.name == "deviance_high"), numbers


def test_a_coarse_mosaic_model_is_named_in_the_deviance_flag() -> None:
    flag, numbers = _deviance_flag(1.3, (30, 127, "--final-mosaic-domains"))
    assert "30-domain mosaic is too coarse" in flag.message
    assert flag.fix.startswith("--final-mosaic-domains 127") and "--search-misset" in flag.fix
    assert numbers["mosaic_domains_needed"] == 127
    for spread, domains in ((1.3, (200, 127, "--final-mosaic-domains")), (4.0, (30, 1200, "-mosaic_domains")),
                            (1.3, None)):
        flag, _ = _deviance_flag(spread, domains)
        assert "too coarse" not in flag.message and flag.fix.startswith("the orientation")
