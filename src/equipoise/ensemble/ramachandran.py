"""Ramachandran reference: a smooth periodic energy for losses, MolProbity-style categories for validation.

Reference data: the (phi, psi) histogram of the Top500 high-resolution structures of Lovell et al.
(2003) Proteins 50, 437-450, as shipped by MDAnalysis (``MDAnalysis.analysis.data.filenames.Rama_ref``,
90 x 90 bins of 4 deg, LGPL-2.1+), read at run time from the installed package (not copied here).
The table has one case for all residues (no separate glycine, proline or pre-proline tables), so
the categories are those of MolProbity's *general* definition applied to every residue:
favoured inside the density contour enclosing 98% of the reference residues, allowed inside
99.95%, outlier beyond (Lovell et al. 2003, section "Contour levels").

Energy: ``-log`` of the lightly smoothed density (periodic Gaussian, 1 bin; set to 0 outside the
allowed contour) plus a broad component (periodic Gaussian, 40 deg, weight 1e-3) so that the log
density has slope everywhere and no local minimum among the outliers,
then band-limited by a Gaussian taper in Fourier space and evaluated as a 2-D Fourier series:
periodic in phi and psi, infinitely smooth, with analytic gradients; 0 at its most favoured bin centre.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["rama_energy", "rama_categories", "reference_histogram", "FAVOURED", "ALLOWED", "OUTLIER"]

FAVOURED, ALLOWED, OUTLIER = 0, 1, 2
_BINS = 90
_BIN_RAD = 2 * math.pi / _BINS
_FAVOURED_MASS, _ALLOWED_MASS = 0.98, 0.9995  # MolProbity general-case contours
_SMOOTH_BINS = 1.0
_BROAD_DEG, _BROAD_WEIGHT = 40.0, 1e-3
_ORDER = 30  # Fourier orders kept in each angle
_TAPER = 14.0  # Gaussian taper width (orders) against ringing


def reference_histogram() -> "numpy.ndarray":  # noqa: F821
    """The Top500 (phi, psi) histogram ``(90, 90)`` (rows phi, columns psi, -180..180 in 4 deg bins)."""
    import importlib.util
    from pathlib import Path

    # locate the file MDAnalysis.analysis.data.filenames.Rama_ref names, without importing MDAnalysis
    spec = importlib.util.find_spec("MDAnalysis")
    if spec is None or spec.origin is None:
        raise InputError("the Ramachandran reference comes from MDAnalysis: pip install MDAnalysis",
                         field="ramachandran")
    Rama_ref = Path(spec.origin).parent / "analysis" / "data" / "rama_ref_data.npy"
    if not Rama_ref.is_file():
        raise InputError("MDAnalysis is installed without its Ramachandran reference data", path=Rama_ref)
    import numpy as np

    # MDAnalysis stores rows = psi, columns = phi (it draws contourf(X=phi, Y=psi, Z)): transpose
    hist = np.load(Rama_ref).astype(np.float64).T
    if hist.shape != (_BINS, _BINS):
        raise InputError(f"unexpected reference histogram shape {hist.shape}", path=Rama_ref)
    return hist


def _periodic_blur(grid: "numpy.ndarray", sigma_bins: float) -> "numpy.ndarray":  # noqa: F821
    import numpy as np

    k = np.fft.fftfreq(_BINS) * _BINS
    kernel = np.exp(-0.5 * (2 * np.pi * k / _BINS * sigma_bins) ** 2)
    return np.real(np.fft.ifft2(np.fft.fft2(grid) * kernel[:, None] * kernel[None, :]))


@lru_cache(maxsize=1)
def _tables() -> tuple["numpy.ndarray", "numpy.ndarray", tuple[float, float], float]:  # noqa: F821
    """(density for categories, Fourier coefficients of the energy, (favoured, allowed) levels,
    maximum of the series)."""
    import numpy as np

    hist = reference_histogram()
    density = np.clip(_periodic_blur(hist, _SMOOTH_BINS), 0.0, None)
    density /= density.sum()
    order = np.sort(density.ravel())[::-1]
    mass = np.cumsum(order)
    levels = tuple(float(order[min(np.searchsorted(mass, m), order.size - 1)]) for m in (_FAVOURED_MASS, _ALLOWED_MASS))
    broad = np.clip(_periodic_blur(hist, _BROAD_DEG / 4.0), 0.0, None)
    broad /= broad.sum()
    # sparse counts beyond the allowed contour would make local minima among the outliers: drop
    # them, so that there only the broad component (which rises towards populated regions) shapes it
    kept = np.where(density >= levels[1], density, 0.0)
    log_density = np.log(kept + _BROAD_WEIGHT * broad)
    coeff = np.fft.fft2(log_density) / _BINS ** 2
    k = np.fft.fftfreq(_BINS) * _BINS
    taper = np.exp(-0.5 * (k / _TAPER) ** 2)
    coeff = coeff * taper[:, None] * taper[None, :]
    keep = np.abs(k) <= _ORDER
    # the series' maximum over the bin centres sets the energy's zero
    top = float(np.real(np.fft.ifft2(np.where(keep[:, None] & keep[None, :], coeff, 0.0)) * _BINS ** 2).max())
    coeff = coeff[keep][:, keep]
    ks = k[keep]
    # grid sample i sits at bin centre -180 + 4 (i + 1/2) deg: shift the phase to angles
    shift = np.exp(-1j * ks * (-math.pi + _BIN_RAD / 2))
    coeff = coeff * shift[:, None] * shift[None, :]
    return density, np.stack([coeff.real, coeff.imag]), levels, top  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _energy_tensors(dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor, Tensor, float]:
    """(the real matrix W of the series, phi orders k >= 0, psi orders l, the series' maximum).
    The log density is real, so c_{-k,-l} = conj(c_{k,l}) and the (-k, -l) term equals the (k, l)
    term: the phi orders k > 0 are kept with weight 2 and k < 0 dropped (half the work)."""
    import numpy as np

    _, coeff, _, top = _tables()
    ks = np.fft.fftfreq(_BINS) * _BINS
    ks = ks[np.abs(ks) <= _ORDER]
    half = ks >= 0
    fold = np.where(ks[half] > 0, 2.0, 1.0)[:, None]
    re, im = coeff[0][half] * fold, coeff[1][half] * fold
    weights = torch.tensor(np.block([[re, -im], [-im, -re]]), dtype=dtype, device=device)
    return (weights, torch.tensor(ks[half], dtype=dtype, device=device), torch.tensor(ks, dtype=dtype, device=device),
            top)


def _series(phi: Tensor, psi: Tensor, weights: Tensor, k: Tensor, l: Tensor) -> Tensor:
    """Re sum_kl c_kl exp(i (k phi + l psi)) (the band-limited log density) as one matrix product:
    [cos k phi, sin k phi] @ [[Re c, -Im c], [-Im c, -Re c]] . [cos l psi, sin l psi]."""
    a = phi[..., None] * k
    b = psi[..., None] * l
    left = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
    right = torch.cat([torch.cos(b), torch.sin(b)], dim=-1)
    return ((left @ weights) * right).sum(-1)


def rama_energy(phi: Tensor, psi: Tensor) -> Tensor:
    """Ramachandran energy (nats, >= ~0; 0 at the most favoured point) of angles in radians, any
    shape. Periodic in both angles with period 2 pi; smooth; differentiable everywhere."""
    weights, k, l, top = _energy_tensors(phi.dtype, str(phi.device))
    return top - _series(phi, psi, weights, k, l)


def rama_categories(phi: Tensor, psi: Tensor) -> Tensor:
    """MolProbity-style category per (phi, psi) in radians: 0 favoured, 1 allowed, 2 outlier
    (int64, same shape), by the reference density in the 4 deg bin of each point."""
    density, _, (favoured, allowed), _ = _tables()
    table = torch.tensor(density, dtype=torch.float64, device=phi.device)
    i = torch.floor((phi.detach() + math.pi) / _BIN_RAD).long().remainder(_BINS)
    j = torch.floor((psi.detach() + math.pi) / _BIN_RAD).long().remainder(_BINS)
    d = table[i, j]
    out = torch.full(d.shape, OUTLIER, dtype=torch.long, device=phi.device)
    out = torch.where(d >= allowed, torch.full_like(out, ALLOWED), out)
    return torch.where(d >= favoured, torch.full_like(out, FAVOURED), out)
