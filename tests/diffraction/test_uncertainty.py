"""Standard errors from the Poisson Fisher information (equipoise.diffraction.uncertainty)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equipoise.diffraction.transforms import Positive, Shift
from equipoise.diffraction.uncertainty import standard_errors, undetermined

TEMPLATE = torch.linspace(0.0, 50.0, 64, dtype=torch.float64).reshape(8, 8)


def toy(values: dict) -> torch.Tensor:
    """μ = scale · template + background (photons/pixel)."""
    return values["scale"] * TEMPLATE + values["background"]


def analytic_sigma(scale: float, background: float, weight: np.ndarray) -> np.ndarray:
    t = TEMPLATE.numpy()
    mu = scale * t + background
    jac = np.stack([t[weight > 0], np.ones(int((weight > 0).sum()))], axis=1)
    info = jac.T @ (jac / mu[weight > 0][:, None])
    return np.sqrt(np.diag(np.linalg.inv(info)))


@pytest.mark.parametrize("parameterisation", ["identity", "positive"])
def test_poisson_errors_match_the_analytic_fisher_inverse_in_user_units(parameterisation):
    weight = torch.ones(8, 8, dtype=torch.float64)
    weight[0, :3] = 0.0  # unfitted pixels carry no information
    if parameterisation == "identity":
        transforms = {"scale": Shift(0.0, 1.0), "background": Shift(0.0, 1.0)}
    else:  # the same values through exp-like transforms: the user-unit errors must not change
        transforms = {"scale": Positive(2.0), "background": Positive(3.0)}
    variables = {n: torch.tensor(t.inverse(v, field=n), dtype=torch.float64)
                 for (n, t), v in zip(transforms.items(), (2.0, 3.0))}

    def image_of(u):
        return toy({n: transforms[n](u[n]) for n in u})

    errors = standard_errors(image_of, variables, transforms, {"scale": "scale", "background": "background"},
                             image_of(variables), weight)
    expected = analytic_sigma(2.0, 3.0, weight.numpy())
    np.testing.assert_allclose([errors["scale"], errors["background"]], expected, rtol=1e-5)
    inflated = standard_errors(image_of, variables, transforms, {"scale": "scale", "background": "background"},
                               image_of(variables), weight, dispersion=4.0)
    assert inflated["scale"] == pytest.approx(2.0 * errors["scale"], rel=1e-9)  # sqrt(D / E[D])


def test_singular_information_gives_nan_and_undetermined():
    transforms = {"scale": Shift(0.0, 1.0), "background": Shift(0.0, 1.0)}
    variables = {"scale": torch.tensor(2.0, dtype=torch.float64), "background": torch.tensor(3.0, dtype=torch.float64)}

    def flat(u):  # the template is constant: scale and background cannot be told apart
        return u["scale"] * torch.ones(8, 8, dtype=torch.float64) + u["background"]

    errors = standard_errors(flat, variables, transforms, {"scale": "scale", "background": "background"},
                             flat(variables), torch.ones(8, 8, dtype=torch.float64))
    assert math.isnan(errors["scale"]) or errors["scale"] > 1e3
    assert undetermined({"scale": 2.0}, errors, keys=("scale",)) == ["scale"]
    assert undetermined({"mosaic_spread_deg": 0.5}, {"mosaic_spread_deg": 0.1}) == []
    assert undetermined({"mosaic_spread_deg": 0.1}, {"mosaic_spread_deg": 0.08}) == ["mosaic_spread_deg"]
