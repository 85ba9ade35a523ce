"""Raw float32 images, 8-bit PGM, ``.npy`` arrays and nanoBragg's image statistics.

nanoBragg's ``-floatfile`` is raw float32, native byte order (little endian on x86), fast index
fastest, no header (PHYSICS.md §1.12). Its PGM is ``P5`` 8-bit with ``min(255, I·pgm_scale)`` and
``pgm_scale = 250/(5·rmsd)`` unless ``-pgmscale`` is given.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from equipoise.errors import InputError


@dataclass(frozen=True)
class ImageStats:
    """nanoBragg's printed statistics of a float image (photons/pixel).

    ``max_index`` is (slow, fast) of the first brightest pixel; ``mean``, ``rms`` = sqrt(<I²>) and
    ``rmsd`` = sqrt(<I²> − <I>²) are taken over the pixels counted (all, or those in ``mask``).
    """

    max_I: float
    max_index: tuple[int, int]
    mean: float
    rms: float
    rmsd: float
    n: int


def image_stats(image: np.ndarray, mask: np.ndarray | None = None) -> ImageStats:
    """Statistics of ``image`` (slow, fast) over the pixels where ``mask`` (same shape, bool) is True.

    Sums in float64 (the sum of squares as one dot product, without a squared copy of the image).
    """
    data = np.asarray(image)
    if mask is not None and bool(np.all(mask)):
        mask = None
    selected = data.reshape(-1) if mask is None else data[np.asarray(mask, dtype=bool)]
    if selected.size == 0:
        return ImageStats(0.0, (0, 0), 0.0, 0.0, 0.0, 0)
    masked = data if mask is None else np.where(mask, data, -np.inf)
    flat = int(np.argmax(masked))
    values = selected.astype(np.float64, copy=False)
    mean = float(values.sum()) / values.size
    mean_sq = float(np.dot(values, values)) / values.size
    return ImageStats(
        max_I=float(masked.flat[flat]),
        max_index=(flat // data.shape[1], flat % data.shape[1]),
        mean=mean,
        rms=math.sqrt(mean_sq),
        rmsd=math.sqrt(max(mean_sq - mean * mean, 0.0)),
        n=int(selected.size),
    )


def read_raw_float32(path: str | Path, shape: tuple[int, int], *, byteorder: str = "<") -> np.ndarray:
    """Read a headerless float32 image of ``shape`` = (slow, fast); ``.gz`` files are decompressed.

    ``byteorder`` is ``"<"`` (little endian, nanoBragg on x86) or ``">"``. Raises InputError
    naming the expected and found byte counts when the file size does not match the shape.
    """
    p = Path(path)
    try:
        raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read raw float image: {exc}", path=p) from exc
    slow, fast = (int(n) for n in shape)
    expected = slow * fast * 4
    if len(raw) != expected:
        raise InputError(f"size mismatch: a {slow}x{fast} (slow x fast) float32 image needs {expected} bytes, "
                         f"found {len(raw)}", path=p)
    return np.frombuffer(raw, dtype=np.dtype(byteorder + "f4")).reshape(slow, fast).astype(np.float32)


def write_raw_float32(path: str | Path, image: np.ndarray) -> None:
    """Write ``image`` (slow, fast) as headerless little-endian float32, fast index fastest."""
    with open(path, "wb") as handle:
        handle.write(np.ascontiguousarray(image, dtype="<f4").tobytes())


def pgm_scale_default(stats: ImageStats) -> float:
    """nanoBragg's automatic PGM scale: 250/(5·rmsd), or 1 for a flat image."""
    return 250.0 / (5.0 * stats.rmsd) if stats.rmsd > 0 else 1.0


def write_pgm(path: str | Path, image: np.ndarray, scale: float | None = None) -> float:
    """Write ``image`` (slow, fast) as an 8-bit binary PGM (``P5``); returns the scale used.

    Pixel = ``min(255, I·scale)`` truncated to an integer (negative values -> 0); ``scale``
    defaults to nanoBragg's ``250/(5·rmsd)``. The header carries a ``# pixels scaled by`` comment
    as nanoBragg's does.
    """
    data = np.asarray(image, dtype=np.float64)
    if scale is None:
        scale = pgm_scale_default(image_stats(data))
    pixels = np.clip(np.nan_to_num(data * scale, nan=0.0), 0.0, 255.0).astype(np.uint8)
    header = f"P5\n{data.shape[1]} {data.shape[0]}\n# pixels scaled by {scale:g}\n255\n".encode("ascii")
    with open(path, "wb") as handle:
        handle.write(header)
        handle.write(pixels.tobytes())
    return float(scale)


def read_npy(path: str | Path) -> np.ndarray:
    """Read a ``.npy`` array (no pickles); InputError naming the file when it is not one."""
    p = Path(path)
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read .npy array: {exc}", path=p) from exc
