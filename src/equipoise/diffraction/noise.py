"""nanoBragg's integer outputs: the noiseless ``-intfile`` and the Poisson ``-noisefile`` (PHYSICS.md §1.12).

* intfile: ``round(I·scale + adc)`` clipped to [0, 65535], ``scale = -scale`` or ``55000/max_I``.
* noisefile: ``Poisson(I) + adc`` truncated to an integer, clipped to [0, 65535]; pixels above
  65535 are counted as overloads.

The Poisson draws use ``torch.poisson`` with a seeded ``torch.Generator``: the same seed gives the
same image on CPU, but the numbers are **not** bit-identical to nanoBragg's Numerical-Recipes
``poidev`` sequence (nor is nanoBragg's own sequence reproducible unless ``-seed`` is given). Only
the statistics agree: each pixel is an independent Poisson variate of mean I.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

#: largest value of an unsigned 16-bit SMV pixel
SMV_MAX = 65535.0


def intfile_scale(max_I: float, scale: float | None = None) -> float:
    """nanoBragg's intfile scale: ``scale`` when given (> 0), else ``55000/max_I`` (1 if max_I <= 0)."""
    if scale is not None and scale > 0:
        return float(scale)
    return 55000.0 / max_I if max_I > 0 else 1.0


def int_image(image: np.ndarray, scale: float, adc: float = 40.0) -> np.ndarray:
    """Noiseless SMV pixels: ``round(I·scale + adc)`` clipped to [0, 65535]; (slow, fast) uint16."""
    values = np.multiply(image, scale, dtype=np.float64)    # in place from here on (one float64 copy)
    values += adc
    np.nan_to_num(values, copy=False, nan=0.0)
    np.clip(values, 0.0, SMV_MAX, out=values)
    values += 0.5
    np.floor(values, out=values)
    np.minimum(values, SMV_MAX, out=values)
    return values.astype(np.uint16)


@dataclass(frozen=True)
class NoiseImage:
    """A Poisson-noise SMV image: ``pixels`` (slow, fast) uint16, ``overloads`` (pixels clipped at
    65535) and the ``seed`` that made it."""

    pixels: np.ndarray
    overloads: int
    seed: int


def default_seed() -> int:
    """nanoBragg's default noise seed, ``-time()``."""
    return -int(time.time())


def noise_image(image: torch.Tensor | np.ndarray, *, seed: int | None = None, adc: float = 40.0) -> NoiseImage:
    """Draw ``Poisson(I) + adc`` per pixel of ``image`` (slow, fast; photons/pixel).

    The draws happen on ``image``'s device with a ``torch.Generator`` seeded by ``seed``
    (default ``-time()``, as nanoBragg); negative or NaN means count as 0. Returns uint16 pixels
    truncated toward zero and clipped to [0, 65535], with the number of overloads.
    """
    rates = torch.as_tensor(image).detach()
    rates = torch.nan_to_num(rates.to(torch.float64 if rates.device.type == "cpu" else torch.float32), nan=0.0)
    rates = rates.clamp_min(0.0)
    used = default_seed() if seed is None else int(seed)
    generator = torch.Generator(device=rates.device)
    generator.manual_seed(used % (1 << 63))
    counts = torch.poisson(rates, generator=generator).to(torch.float64) + adc
    overloads = int((counts > SMV_MAX).sum())
    pixels = torch.floor(counts.clamp(0.0, SMV_MAX)).cpu().numpy().astype(np.uint16)
    return NoiseImage(pixels=pixels, overloads=overloads, seed=used)
