"""Standard errors of refined parameters from the Fisher information of the Poisson likelihood.

For counts ``y_p ~ Poisson(μ_p(θ))`` the Fisher information is ``F = Jᵀ diag(w/μ) J`` with the
image Jacobian ``J = ∂μ/∂θ`` (n_pixels × n_params) and pixel weights ``w`` (McCullagh & Nelder,
*Generalized Linear Models*, §2.5: the expected information of a log-likelihood; the Hessian of
the deviance / 2 at a good fit). The covariance of the estimate is ``F⁻¹``; when the model does not
describe the image to Poisson precision (deviance D above its expectation E[D]) it is inflated by
the dispersion ``max(1, D / E[D])`` (quasi-likelihood, ibid. §9.2). For least squares the
information is ``JᵀWJ / s²`` with the residual variance ``s²``.

``J`` is taken by central differences of the model image in the unconstrained variables (2 forward
passes per scalar variable: a refine of the mosaic and misset needs 8) and mapped to user units
through the transforms' Jacobians, so the errors are in deg, mm, Å... as the parameters are.

A parameter whose standard error is a large fraction of its value is *not determined by the
image* (e.g. a mosaic spread of 0.2° on a 6.4 mm detector near the beam, where |q| × spread is a few
per cent of a spot's width): :func:`undetermined` names them, the ``refine`` command warns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import block_diag
from torch import Tensor

__all__ = ["standard_errors", "undetermined", "RELATIVE_UNDETERMINED"]

#: a non-negative parameter (mosaic spread) whose standard error exceeds this fraction of its value
#: is reported as not determined by the image
RELATIVE_UNDETERMINED = 0.5
#: central-difference step in the unconstrained variables (u = 1 is a typical step, transforms.py)
STEP_U = 1e-3


def standard_errors(image_of: Callable[[dict[str, Tensor]], Tensor], variables: dict[str, Tensor],
                    transforms: dict[str, Callable[[Tensor], Tensor]], keys: dict[str, str],
                    observed: Tensor, weight: Tensor, *, loss: str = "poisson",
                    dispersion: float = 1.0) -> dict[str, float | list[float]]:
    """Standard errors (user units) of the refined values at ``variables``.

    image_of: model image (spixels, fpixels) photons/pixel for a dict of unconstrained variables;
    variables: name -> unconstrained tensor (scalar or (k,)); transforms: name -> map to user units;
    keys: name -> user-unit key (``REFINABLE``); observed, weight: (spixels, fpixels); loss:
    "poisson" or "lsq"; dispersion: D / E[D] of the fit (values below 1 are taken as 1).
    Returns key -> σ (a list for vector parameters); NaN where the information is singular.
    """
    names = list(variables)
    base = {n: variables[n].detach() for n in names}
    flat = [(n, i) for n in names for i in range(base[n].numel())]
    with torch.no_grad():
        mu = image_of(base)
        columns = []
        for n, i in flat:
            plus, minus = dict(base), dict(base)
            e = torch.zeros_like(base[n]).reshape(-1)
            e[i] = STEP_U
            plus[n] = base[n] + e.reshape(base[n].shape)
            minus[n] = base[n] - e.reshape(base[n].shape)
            columns.append(((image_of(plus) - image_of(minus)) / (2.0 * STEP_U))[weight > 0])
    jac = torch.stack(columns, dim=1).to(torch.float64)  # (n_fitted, n_u)
    w = weight[weight > 0].to(torch.float64)
    m = mu[weight > 0].to(torch.float64)
    if loss == "poisson":
        info = jac.T @ (jac * (w / m.clamp_min(1e-12))[:, None])
        scale = max(1.0, float(dispersion))
    else:
        resid = (observed[weight > 0].to(torch.float64) - m)
        s2 = float((w * resid ** 2).sum()) / max(1, int(w.numel()) - len(flat))
        info = jac.T @ (jac * w[:, None]) / max(s2, 1e-300)
        scale = 1.0
    cov_u = _inverse(info.cpu().numpy()) * scale
    blocks = [_transform_jacobian(transforms[n], base[n]) for n in names]  # (n_θ_k, n_u_k) each
    g = block_diag(*blocks)
    cov = g @ cov_u @ g.T
    sigma = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    sigma[~np.isfinite(np.diag(cov))] = math.nan
    out: dict[str, float | list[float]] = {}
    row = 0
    for n, block in zip(names, blocks):
        k = block.shape[0]
        values = [float(v) for v in sigma[row:row + k]]
        out[keys[n]] = values[0] if base[n].dim() == 0 else values
        row += k
    return out


def undetermined(parameters: dict, errors: dict, keys: tuple[str, ...] = ("mosaic_spread_deg",)) -> list[str]:
    """Names among ``keys`` whose standard error exceeds :data:`RELATIVE_UNDETERMINED` × |value| (or is NaN)."""
    out = []
    for key in keys:
        if key in parameters and key in errors:
            value, sigma = float(parameters[key]), float(errors[key])
            if not math.isfinite(sigma) or sigma > RELATIVE_UNDETERMINED * abs(value):
                out.append(key)
    return out


def _inverse(info: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric information matrix; NaN rows/columns where it is singular."""
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return np.full_like(info, math.nan)
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) < 0):
        return np.full_like(info, math.nan)
    return cov


def _transform_jacobian(transform: Callable[[Tensor], Tensor], u: Tensor) -> np.ndarray:
    """∂θ/∂u (n_θ, n_u) of one transform at ``u`` (scalar or vector)."""
    u64 = u.detach().to(torch.float64).reshape(-1)

    def f(x: Tensor) -> Tensor:
        return transform(x.reshape(u.shape).to(u.dtype)).to(torch.float64).reshape(-1)

    return torch.autograd.functional.jacobian(f, u64).reshape(-1, u64.numel()).cpu().numpy()
