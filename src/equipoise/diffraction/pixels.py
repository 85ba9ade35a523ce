"""Which pixels a refinement evaluates: the resolution of every pixel, and the strong-spot subsets.

A still image is mostly background; the orientation and the mosaic spread are decided by the
pixels on and around the Bragg spots. Evaluating only those (plus a sparse grid of background
pixels, which penalises spots predicted where none are observed) cuts the cost of a model image
on a large detector by one to two orders of magnitude: the simulator computes only the pixels
left by its ``-mask`` (simulate.py, pixel list).

Coarse to fine (the crystallographer's indexing practice, e.g. DIALS indexes on strong spots and
refines at low resolution first): a spot at scattering vector q moves by ≈ |q|·Δθ when the crystal
turns by Δθ, so low-resolution spots keep overlapping their prediction over a wider range of
orientation errors. :func:`select_pixels` returns the ``low`` subset (the strong pixels nearest
the beam, within the disc holding the first ``low_strong`` of them) and the ``full`` subset (up to
``max_strong`` strong pixels over the whole detector), each dilated by ``dilate_px`` pixels and
with background pixels on a regular grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.geometry import detector_geometry, subpixel_positions
from equipoise.diffraction.sources import wavelength_m

__all__ = ["PixelSubsets", "pixel_resolution_A", "beam_pixel", "select_pixels"]


def _pixel_centres(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """(positions (S, F, 3) m of the pixel centres, unit beam vector (3,)), float64 on the CPU."""
    with torch.no_grad():
        geom = detector_geometry(config, dtype=torch.float64, device=torch.device("cpu"))
        s, f = torch.meshgrid(torch.arange(geom.spixels), torch.arange(geom.fpixels), indexing="ij")
        pos = subpixel_positions(geom, s.reshape(-1), f.reshape(-1), 1)[:, 0, 0, :]
    return pos.reshape(geom.spixels, geom.fpixels, 3).numpy(), geom.beam.numpy()


def pixel_resolution_A(config: SimulationConfig) -> np.ndarray:
    """Bragg spacing d = λ / (2 sin θ) in Å of every pixel centre (spixels, fpixels); inf at 2θ = 0.

    2θ is the angle between the incident beam and the direction from the sample to the pixel
    centre (PHYSICS.md §1.2 positions; the central wavelength).
    """
    pos, beam = _pixel_centres(config)
    with torch.no_grad():
        lam = float(wavelength_m(config, None, dtype=torch.float64, device=torch.device("cpu"))) * 1e10
    unit = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    cos2t = np.clip(unit @ (beam / np.linalg.norm(beam)), -1.0, 1.0)
    sin_t = np.sqrt(np.clip((1.0 - cos2t) / 2.0, 0.0, None))
    with np.errstate(divide="ignore"):
        return np.where(sin_t > 0, lam / (2.0 * np.where(sin_t > 0, sin_t, 1.0)), np.inf)


def beam_pixel(config: SimulationConfig) -> tuple[float, float]:
    """(slow, fast) pixel coordinates where the direct beam meets the detector plane (may lie off
    the detector); from the pixel of smallest 2θ, refined linearly within the detector plane."""
    pos, beam = _pixel_centres(config)
    with torch.no_grad():
        geom = detector_geometry(config, dtype=torch.float64, device=torch.device("cpu"))
    b = beam / np.linalg.norm(beam)
    fdet, sdet, pix0 = geom.fdet.numpy(), geom.sdet.numpy(), geom.pix0.numpy()
    normal = np.cross(fdet, sdet)
    t = float(np.dot(pix0, normal) / np.dot(b, normal)) if abs(np.dot(b, normal)) > 1e-12 else math.nan
    hit = t * b - pix0
    px = geom.pixel_size
    return float(np.dot(hit, sdet) / px - 0.5), float(np.dot(hit, fdet) / px - 0.5)


@dataclass
class PixelSubsets:
    """Boolean masks (spixels, fpixels): ``low`` (low-resolution strong spots) and ``full``; the
    counts of strong pixels in each and ``low_d_A``, the resolution (Å) of the low disc's edge."""

    low: np.ndarray
    full: np.ndarray
    strong_low: int
    strong_full: int
    low_d_A: float

    def summary(self) -> dict:
        return {"low_pixels": int(self.low.sum()), "full_pixels": int(self.full.sum()),
                "strong_low": self.strong_low, "strong_full": self.strong_full, "low_d_A": self.low_d_A}


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return torch.nn.functional.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0


def _background_grid(shape: tuple[int, int], count: int) -> np.ndarray:
    """Regular grid of about ``count`` pixels over the image (every k-th row and column)."""
    k = max(1, int(math.floor(math.sqrt(shape[0] * shape[1] / max(count, 1)))))
    grid = np.zeros(shape, dtype=bool)
    grid[k // 2::k, k // 2::k] = True
    return grid


def select_pixels(observed: np.ndarray, weight: np.ndarray, resolution_A: np.ndarray, *, max_strong: int = 6000,
                  low_strong: int = 600, dilate_px: int = 2, background: int = 3000,
                  all_below: int = 20000) -> PixelSubsets:
    """Strong-spot pixel subsets of ``observed`` (spixels, fpixels) photons/pixel (module docstring).

    Strong: above the median background b by max(5·sqrt(b + 1), 5 % of the peak above b) photons;
    ``weight`` 0 pixels are never chosen; ``resolution_A`` orders pixels from low to high
    resolution. Images with at most ``all_below`` fitted pixels use every fitted pixel as ``full``.
    """
    fitted = weight > 0
    values = observed[fitted]
    b = float(np.median(values))
    peak = float(values.max())
    strong = fitted & (observed > b + max(5.0 * math.sqrt(b + 1.0), 0.05 * (peak - b)))
    if not strong.any():  # a flat image: its brightest pixels
        strong = fitted & (observed >= np.quantile(values, 0.99))
    order = np.argsort(-resolution_A[strong], kind="stable")  # low resolution (large d) first
    d_strong = resolution_A[strong][order]
    idx = np.flatnonzero(strong.reshape(-1))[order]

    def subset(n_strong: int, d_edge: float) -> tuple[np.ndarray, int]:
        keep = np.zeros(observed.size, dtype=bool)
        keep[idx[:n_strong]] = True
        disc = resolution_A >= d_edge
        mask = _dilate(keep.reshape(observed.shape), dilate_px) | (_background_grid(observed.shape, background) & disc)
        return mask & fitted & disc, int(min(n_strong, len(idx)))

    n_low = min(low_strong, len(idx))
    low_edge = float(d_strong[n_low - 1]) * 0.95 if n_low else 0.0
    low, strong_low = subset(n_low, low_edge)
    if int(fitted.sum()) <= all_below:
        full, strong_full = fitted.copy(), len(idx)
    else:
        n_full = min(max_strong, len(idx))
        full_edge = float(d_strong[n_full - 1]) * 0.95 if n_full < len(idx) else 0.0
        full, strong_full = subset(n_full, full_edge)
    return PixelSubsets(low=low, full=full, strong_low=strong_low, strong_full=strong_full, low_d_A=low_edge)
