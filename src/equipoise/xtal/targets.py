"""X-ray targets and statistics: least squares, the maximum-likelihood amplitude target, R and CC.

Maximum likelihood (Read 1986, Acta A42, 140; Lunin & Skovoroda 1995, Acta A51, 880; Pannu &
Read 1996, Acta A52, 659): the observed amplitude F_o given the model amplitude F_c (scaled
F_model) follows the Rice distribution for acentric reflections,

    p(F_o) = 2 F_o / Sig exp(-(F_o^2 + D^2 F_c^2) / Sig) I0(2 F_o D F_c / Sig),   Sig = eps S + 2 sigF^2,

and for centric reflections the Gaussian pair (Woolfson),

    p(F_o) = sqrt(2 / (pi Sig)) exp(-(F_o^2 + D^2 F_c^2) / (2 Sig)) cosh(F_o D F_c / Sig),   Sig = eps S + sigF^2,

where D (Luzzati-type scale) and S (sigma_Delta^2, the model-error variance) are one pair per
resolution bin, estimated by maximising the likelihood of the free set (a bin with fewer than
``MIN_FREE_PER_BIN`` free reflections uses the working set; this is noted). sigma_A follows as
D sqrt(Sigma_P / Sigma_N). The target is the negative log-likelihood summed over a set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MIN_FREE_PER_BIN = 20


@dataclass
class MLParams:
    """Per-bin ML parameters: D (n_bins,) and S (n_bins,) in F^2 units; notes on how estimated."""

    d: torch.Tensor
    s: torch.Tensor
    notes: list[str] = field(default_factory=list)


def _log_i0(x: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.special.i0e(x)) + x


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return x + torch.log1p(torch.exp(-2.0 * x)) - math.log(2.0)


def ml_nll(f_obs: torch.Tensor, sigma_f: torch.Tensor, f_c: torch.Tensor, centric: torch.Tensor,
           epsilon: torch.Tensor, d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(m,) negative log-likelihood per reflection; f_c = |F_model| (m,), d and s per reflection (m,)."""
    sig_a = epsilon * s + 2.0 * sigma_f ** 2
    sig_c = epsilon * s + sigma_f ** 2
    fo, dfc = f_obs, d * f_c
    acentric = -(torch.log(2.0 * fo.clamp_min(1e-12) / sig_a) - (fo ** 2 + dfc ** 2) / sig_a
                 + _log_i0(2.0 * fo * dfc / sig_a))
    centric_ll = -(0.5 * torch.log(2.0 / (math.pi * sig_c)) - (fo ** 2 + dfc ** 2) / (2.0 * sig_c)
                   + _log_cosh(fo * dfc / sig_c))
    return torch.where(centric, centric_ll, acentric)


def estimate_ml_params(f_obs: torch.Tensor, sigma_f: torch.Tensor, f_c: torch.Tensor, centric: torch.Tensor,
                       epsilon: torch.Tensor, bin_index: torch.Tensor, n_bins: int, free: torch.Tensor,
                       *, steps: int = 50) -> MLParams:
    """D and S per bin maximising the likelihood of the free set (working set where too few free)."""
    f_c = f_c.detach()
    dtype, device = f_obs.dtype, f_obs.device
    n_free = torch.bincount(bin_index[free], minlength=n_bins)
    use_free = n_free >= MIN_FREE_PER_BIN
    subset = torch.where(use_free[bin_index], free, ~free)
    notes = []
    if not bool(use_free.all()):
        notes.append(f"sigmaA from the working set in {int((~use_free).sum())} of {n_bins} bins "
                     f"(fewer than {MIN_FREE_PER_BIN} free reflections)")
    w = subset.to(dtype)
    num = torch.zeros(n_bins, dtype=dtype, device=device).index_add_(0, bin_index, w * f_obs * f_c)
    den = torch.zeros(n_bins, dtype=dtype, device=device).index_add_(0, bin_index, w * f_c * f_c)
    d0 = (num / den.clamp_min(1e-30)).clamp(0.05, 1.5)
    resid = torch.zeros(n_bins, dtype=dtype, device=device).index_add_(
        0, bin_index, w * (f_obs ** 2 - (d0[bin_index] * f_c) ** 2).abs() / epsilon)
    count = torch.zeros(n_bins, dtype=dtype, device=device).index_add_(0, bin_index, w).clamp_min(1.0)
    s0 = (resid / count).clamp_min(1e-6 * float((f_obs ** 2).mean()))
    log_d = torch.log(d0).clone().requires_grad_(True)
    log_s = torch.log(s0).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([log_d, log_s], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    norm = float(count.sum())

    def closure():
        opt.zero_grad()
        nll = (ml_nll(f_obs, sigma_f, f_c, centric, epsilon, torch.exp(log_d)[bin_index],
                      torch.exp(log_s)[bin_index]) * w).sum() / norm
        nll.backward()
        return nll

    opt.step(closure)
    d_fit, s_fit = torch.exp(log_d.detach()), torch.exp(log_s.detach())
    if not (torch.isfinite(d_fit).all() and torch.isfinite(s_fit).all()):
        notes.append("sigmaA fit not finite; moment estimates kept")
        d_fit, s_fit = d0, s0
    return MLParams(d_fit, s_fit, notes)


def sigma_a(f_obs: torch.Tensor, f_c: torch.Tensor, bin_index: torch.Tensor, n_bins: int,
            params: MLParams) -> torch.Tensor:
    """(n_bins,) sigma_A = D sqrt(<F_c^2> / <F_o^2>) per bin (normalised-amplitude form)."""
    fo2 = torch.zeros(n_bins, dtype=f_obs.dtype, device=f_obs.device).index_add_(0, bin_index, f_obs ** 2)
    fc2 = torch.zeros_like(fo2).index_add_(0, bin_index, f_c.detach() ** 2)
    return (params.d * torch.sqrt(fc2 / fo2.clamp_min(1e-30))).clamp(0.0, 1.0)


def least_squares(f_obs: torch.Tensor, f_c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar sum over ``mask`` of (F_o - |F_model|)^2, divided by sum F_o^2 (dimensionless)."""
    w = mask.to(f_obs.dtype)
    return ((f_obs - f_c) ** 2 * w).sum() / (f_obs ** 2 * w).sum()


def r_factor(f_obs: torch.Tensor, f_c: torch.Tensor, mask: torch.Tensor, *, rescale: bool = False) -> float:
    """sum |F_o - k |F_model|| / sum F_o over ``mask`` (NaN for an empty set); k = 1, or with
    ``rescale`` the least-squares scale of the set itself, k = sum F_o F_c / sum F_c^2.

    ``rescale=True`` is what cctbx ``mmtbx.f_model.manager.r_free()`` (and so phenix.refine's
    log) reports: the free set is rescaled by its own overall scale ("k1_t"). That fits one
    number to the free set; on a small free set it lowers R-free (5e5z, 18 free reflections:
    0.243 -> 0.200). The default (k = 1, the working-set scales already in F_model) keeps the
    free set out of every fit (Brunger 1992, Nature 355, 472).
    """
    if not bool(mask.any()):
        return float("nan")
    fo, fc = f_obs[mask], f_c[mask]
    k = (fo * fc).sum() / (fc * fc).sum().clamp_min(1e-30) if rescale else 1.0
    return float((fo - k * fc).abs().sum() / fo.sum())


def correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Pearson correlation of a and b over ``mask``."""
    if int(mask.sum()) < 2:
        return float("nan")
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum()).clamp_min(1e-30))
