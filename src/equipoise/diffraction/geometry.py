"""Detector geometry of nanoBragg: conventions, pivots, pixel positions, solid angle, sensor absorption.

Everything here follows nanoBragg.c (PHYSICS.md §1.2, §1.7, §1.9, §1.12) and is differentiable in
torch with respect to the parameters ``"distance_mm"``, ``"beam_center_mm"``, ``"detector_rot_deg"``
and ``"twotheta_deg"`` (see "Python API" in ``docs/diffraction.md``). Internal lengths are metres.

Reproduced nanoBragg quirks (all documented in PHYSICS.md or below):

* the convention forces the pivot (BEAM for MOSFLM/ADXV/DENZO, SAMPLE for XDS/DIALS); only CUSTOM
  keeps the flag-derived pivot;
* ``ratio = b̂·(Rz Ry Rx ô)`` is taken *before* the 2θ swing, and the reported ``distance`` is
  ``close_distance / ratio`` with that ratio (so with ``-twotheta`` it is not the distance along the beam);
* ``-Xclose/-Yclose`` only provide the default ``Xbeam/Ybeam`` of XDS/DIALS/CUSTOM: the SAMPLE pivot of
  XDS/DIALS uses ``Fclose/Sclose`` = ``(ORGX − ½)·Δ`` or half the detector size;
* a user ``-odet_vector`` whose length is not exactly 1 is replaced by ``f̂ × ŝ``;
* the curved detector uses the lab y and z components of the flat pixel position as angles and drops
  the sensor depth;
* ``-pix0_vector`` only switches to CUSTOM: nanoBragg.c then recomputes pix0 from the pivot, so the value
  is ignored in ``mode="nanobragg"``; in ``mode="physical"`` the given vector is used as pix0.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from equipoise.diffraction.config import DetectorConfig, SimulationConfig
from equipoise.diffraction.params import param_tensor
from equipoise.diffraction.rotations import dot3, rotate_axis, rotation_xyz
from equipoise.errors import InputError

DEFAULT_DISTANCE_M = 0.1  # nanoBragg.c: distance = 100.0e-3
DEFAULT_DETSIZE_M = 0.1024  # nanoBragg.c: detsize_f = detsize_s = 102.4e-3
DEFAULT_WAVELENGTH_A = 1.0  # nanoBragg.c: lambda0 = 1.0e-10

# Initial vectors of each convention (PHYSICS.md §1.9; nanoBragg.c convention block). CUSTOM starts
# from nanoBragg.c's initialisers (beam +x, f̂ +z, ŝ −y, ô +x, 2θ axis +y, p̂ +z, spindle +z) and the
# user's vectors replace them.
_VECTORS: dict[str, dict[str, tuple[float, float, float]]] = {
    "MOSFLM": dict(beam=(1, 0, 0), fdet=(0, 0, 1), sdet=(0, -1, 0), odet=(1, 0, 0),
                   twotheta=(0, 0, -1), polar=(0, 0, 1), spindle=(0, 0, 1)),
    "DENZO": dict(beam=(1, 0, 0), fdet=(0, 0, 1), sdet=(0, -1, 0), odet=(1, 0, 0),
                  twotheta=(0, 0, -1), polar=(0, 0, 1), spindle=(0, 0, 1)),
    "ADXV": dict(beam=(0, 0, 1), fdet=(1, 0, 0), sdet=(0, -1, 0), odet=(0, 0, 1),
                 twotheta=(-1, 0, 0), polar=(1, 0, 0), spindle=(1, 0, 0)),
    "XDS": dict(beam=(0, 0, 1), fdet=(1, 0, 0), sdet=(0, 1, 0), odet=(0, 0, 1),
                twotheta=(1, 0, 0), polar=(1, 0, 0), spindle=(1, 0, 0)),
    "DIALS": dict(beam=(0, 0, 1), fdet=(1, 0, 0), sdet=(0, 1, 0), odet=(0, 0, 1),
                  twotheta=(0, 1, 0), polar=(0, 1, 0), spindle=(0, 1, 0)),
    "CUSTOM": dict(beam=(1, 0, 0), fdet=(0, 0, 1), sdet=(0, -1, 0), odet=(1, 0, 0),
                   twotheta=(0, 1, 0), polar=(0, 0, 1), spindle=(0, 0, 1)),
}
_BEAM_PIVOT = ("MOSFLM", "ADXV", "DENZO")
_SAMPLE_PIVOT = ("XDS", "DIALS")


@dataclass
class DetectorGeometry:
    """Resolved detector geometry. Lengths in metres; unit vectors have shape (3,) in the lab frame.

    ``distance`` is nanoBragg's ``close_distance / ratio`` with ``ratio = b̂·(Rz Ry Rx ô₀)`` taken before
    the 2θ swing (equal to ``close_distance / (b̂·ô)`` when there is no 2θ). ``values`` holds printable
    resolved numbers: lengths in mm, ``ORGX``/``ORGY`` in pixels, ``ratio`` dimensionless.
    """

    fdet: Tensor
    sdet: Tensor
    odet: Tensor
    pix0: Tensor
    beam: Tensor
    polar: Tensor
    spindle: Tensor
    close_distance: Tensor
    distance: Tensor
    pixel_size: float
    fpixels: int
    spixels: int
    curved: bool
    point_pixel: bool
    n_layers: int
    layer_step: float
    mu: float
    roi: tuple[int, int, int, int]
    mask: Tensor | None
    values: dict[str, float]
    convention: str
    pivot: str
    twotheta_axis: Tensor


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def _unit(v: tuple[float, float, float] | np.ndarray, field: str) -> np.ndarray:
    """Unit vector of ``v`` (float64); a zero-length vector is an InputError naming ``field``."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InputError(f"expected 3 finite numbers, got {v!r}", field=field)
    norm = float(np.sqrt(np.dot(arr, arr)))
    if norm == 0.0:
        raise InputError(f"zero-length vector {tuple(arr)}; expected a non-zero direction", field=field)
    return arr / norm


def resolved_convention(config: SimulationConfig) -> str:
    """The convention in ``detector.convention`` (validated).

    The parser sets CUSTOM when a vector flag (-fdet_vector ... -pix0_vector) is given and a later
    convention flag sets it back, as in nanoBragg (PHYSICS.md §1.2); user vectors are only used for
    CUSTOM, exactly as nanoBragg's convention block overwrites them otherwise.
    """
    convention = config.detector.convention
    if convention not in _VECTORS:
        raise InputError(f"unknown convention {convention!r}; expected one of {sorted(_VECTORS)}",
                         field="convention")
    return convention


def resolved_pivot(config: SimulationConfig, convention: str) -> str:
    """Pivot as nanoBragg selects it (PHYSICS.md §1.2).

    The convention block forces BEAM (MOSFLM, ADXV, DENZO) or SAMPLE (XDS, DIALS). CUSTOM keeps the
    flag-derived pivot: ``detector.pivot`` when set (the parser records the last pivot-setting flag
    there), otherwise SAMPLE if any of -close_distance, -Xclose, -Yclose, -ORGX, -ORGY, -twotheta was
    given, else BEAM.
    """
    if convention in _BEAM_PIVOT:
        return "BEAM"
    if convention in _SAMPLE_PIVOT:
        return "SAMPLE"
    det = config.detector
    if det.pivot is not None:
        if det.pivot not in ("BEAM", "SAMPLE"):
            raise InputError(f"unknown pivot {det.pivot!r}; expected 'BEAM' or 'SAMPLE'", field="pivot")
        return det.pivot
    sample_flags = (det.close_distance_mm, det.xclose_mm, det.yclose_mm, det.orgx_px, det.orgy_px)
    if any(v is not None for v in sample_flags) or det.twotheta_deg != 0.0:
        return "SAMPLE"
    return "BEAM"


def convention_vectors(config: SimulationConfig, convention: str) -> dict[str, np.ndarray]:
    """Initial unit vectors (float64 numpy) beam, fdet, sdet, odet, twotheta, polar, spindle (PHYSICS.md §1.9).

    For CUSTOM the user's vectors replace nanoBragg's initial ones; all are unitised as nanoBragg.c
    "straighten up vectors" does, except the 2θ axis, which nanoBragg uses as given (here it must be
    of unit length). An odet whose length is not exactly 1 is replaced by unit(f̂ × ŝ).
    """
    det, beam, crystal = config.detector, config.beam, config.crystal
    raw = dict(_VECTORS[convention])
    if convention == "CUSTOM":
        user = dict(beam=beam.beam_vector, fdet=det.fdet_vector, sdet=det.sdet_vector,
                    odet=det.odet_vector, twotheta=det.twotheta_axis, polar=beam.polar_vector,
                    spindle=crystal.spindle_axis)
        raw.update({k: v for k, v in user.items() if v is not None})
    names = dict(beam="beam_vector", fdet="fdet_vector", sdet="sdet_vector", odet="odet_vector",
                 twotheta="twotheta_axis", polar="polar_vector", spindle="spindle_axis")
    out = {k: _unit(raw[k], names[k]) for k in ("beam", "fdet", "sdet", "polar", "spindle")}
    odet = np.asarray(raw["odet"], dtype=np.float64)
    if float(np.sqrt(np.dot(odet, odet))) != 1.0:
        # nanoBragg.c: if(unitize(odet_vector,odet_vector) != 1.0) odet = unit(fdet x sdet)
        odet = np.cross(out["fdet"], out["sdet"])
        if not np.any(odet):
            raise InputError("fdet_vector and sdet_vector are parallel; cannot build odet = fdet x sdet",
                             field="sdet_vector")
    out["odet"] = _unit(odet, "odet_vector")
    axis = np.asarray(raw["twotheta"], dtype=np.float64)
    if abs(float(np.sqrt(np.dot(axis, axis))) - 1.0) > 1e-6:
        raise InputError(f"twotheta axis {tuple(axis)} must be a unit vector (nanoBragg does not unitise it)",
                         field="twotheta_axis")
    out["twotheta"] = axis
    return out


def detector_size(det: DetectorConfig) -> tuple[float, float, float, int, int]:
    """(pixel, detsize_f, detsize_s) in metres and (fpixels, spixels) as nanoBragg.c "fill in blanks" does.

    ``-detpixels`` sets ``detsize = N·Δ``; then ``fpixels = ceil(detsize/Δ − 0.5)`` (PHYSICS.md §1.2).
    """
    if not det.pixel_mm > 0.0 or not math.isfinite(det.pixel_mm):
        raise InputError(f"pixel size must be > 0 mm, got {det.pixel_mm!r}", field="pixel")
    pixel = det.pixel_mm / 1000.0
    sizes = []
    for npix, size_mm, name in ((det.fpixels, det.detsize_f_mm, "f"), (det.spixels, det.detsize_s_mm, "s")):
        if npix is not None and npix < 0:
            raise InputError(f"detector pixel count must be > 0, got {npix}", field=f"detpixels_{name}")
        if size_mm is not None and not size_mm > 0.0:
            raise InputError(f"detector size must be > 0 mm, got {size_mm!r}", field=f"detsize_{name}")
        size = DEFAULT_DETSIZE_M if size_mm is None else size_mm / 1000.0
        if npix:  # nanoBragg.c: if(fpixels) detsize_f = pixel_size*fpixels;
            size = pixel * npix
        count = math.ceil(size / pixel - 0.5)
        if count < 1:
            raise InputError(f"detector of {size * 1000:g} mm has no pixels of {det.pixel_mm:g} mm",
                             field=f"detsize_{name}")
        sizes.append((size, count))
    return pixel, sizes[0][0], sizes[1][0], sizes[0][1], sizes[1][1]


def sensor_layers(det: DetectorConfig) -> tuple[int, float, float]:
    """(n_layers, layer_step [m], mu [1/m]) of the sensor (PHYSICS.md §1.7; nanoBragg.c thickness steps).

    Thickness T only: 2 layers of T/2. T and N: N layers (at least 2) of T/(N−1). ``-detector_abs``
    inf or 0 switches absorption (and thickness) off; T without ``-detector_abs`` uses mu = 1/T.
    No thickness: one layer, step 0, mu 0.
    """
    thick = 0.0 if det.thickness_um is None else det.thickness_um * 1e-6
    if thick < 0.0 or not math.isfinite(thick):
        raise InputError(f"detector thickness must be >= 0 um, got {det.thickness_um!r}", field="detector_thick")
    absorb = det.absorption_um
    if absorb is not None and (absorb < 0.0 or math.isnan(absorb)):
        raise InputError(f"attenuation depth must be > 0 um (or inf/0 = off), got {absorb!r}",
                         field="detector_abs")
    if absorb is not None and (absorb == 0.0 or math.isinf(absorb)):
        thick = 0.0  # nanoBragg.c: -detector_abs inf|0 sets detector_thick = 0, detector_mu = 0
    if thick <= 0.0:
        return 1, 0.0, 0.0
    steps = det.thicksteps
    if steps is None or steps <= 0:
        steps, step = 2, thick / 2.0
    else:
        steps = max(steps, 2)
        step = thick / (steps - 1)
    mu = 1.0 / (thick if absorb is None else absorb * 1e-6)
    return steps, step, mu


def _roi(det: DetectorConfig, fpixels: int, spixels: int) -> tuple[int, int, int, int]:
    """Inclusive (fmin, fmax, smin, smax), clipped to the detector (nanoBragg.c ``-roi``)."""
    if det.roi is None:
        return 0, fpixels - 1, 0, spixels - 1
    fmin, fmax, smin, smax = (int(v) for v in det.roi)
    fmin, smin = max(fmin, 0), max(smin, 0)
    fmax, smax = min(fmax, fpixels - 1), min(smax, spixels - 1)
    if fmin > fmax or smin > smax:
        raise InputError(f"region of interest {tuple(det.roi)} holds no pixel of the "
                         f"{fpixels}x{spixels} detector", field="roi")
    return fmin, fmax, smin, smax


def _mask(det: DetectorConfig, fpixels: int, spixels: int, device: torch.device) -> Tensor | None:
    if det.mask is None:
        return None
    mask = np.asarray(det.mask)
    if mask.shape != (spixels, fpixels):
        raise InputError(f"mask has shape {mask.shape}, expected (spixels, fpixels) = {(spixels, fpixels)}",
                         path=det.mask_file, field="mask")
    return torch.as_tensor(mask != 0, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------------------------
# the geometry
# ----------------------------------------------------------------------------------------------

def detector_geometry(config: SimulationConfig, params: Mapping[str, Tensor] | None = None, *,
                      dtype: torch.dtype, device: torch.device) -> DetectorGeometry:
    """Resolve the detector of ``config`` as nanoBragg.c does (PHYSICS.md §1.2, §1.9).

    ``params`` may override (differentiably) ``"distance_mm"`` (), ``"beam_center_mm"`` (2,) = (Xbeam,
    Ybeam) in mm in the convention's meaning (for XDS/DIALS, whose SAMPLE pivot places the detector by
    its near point, it also sets Fclose/Sclose), ``"detector_rot_deg"`` (3,) and ``"twotheta_deg"`` ().
    """
    device = torch.device(device)
    det = config.detector
    convention = resolved_convention(config)
    pivot = resolved_pivot(config, convention)
    vec = convention_vectors(config, convention)
    pixel, detsize_f, detsize_s, fpixels, spixels = detector_size(det)

    def const(x) -> Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device)

    beam, f0, s0, o0 = const(vec["beam"]), const(vec["fdet"]), const(vec["sdet"]), const(vec["odet"])
    axis = const(vec["twotheta"])

    # distances (nanoBragg.c: -distance mm/1000, -close_distance)
    distance = param_tensor(params, "distance_mm",
                            DEFAULT_DISTANCE_M * 1000 if det.distance_mm is None else det.distance_mm,
                            dtype=dtype, device=device) / 1000.0
    if not float(distance.detach()) > 0.0:
        raise InputError(f"distance must be > 0 mm, got {float(distance.detach()) * 1000:g}", field="distance")
    if det.close_distance_mm is not None and not det.close_distance_mm > 0.0:
        raise InputError(f"close distance must be > 0 mm, got {det.close_distance_mm!r}",
                         field="close_distance")

    # beam-centre defaults, nanoBragg.c "defaults?" block and convention block (PHYSICS.md §1.9)
    fclose0 = (det.orgx_px - 0.5) * pixel if det.orgx_px is not None else detsize_f / 2.0
    sclose0 = (det.orgy_px - 0.5) * pixel if det.orgy_px is not None else detsize_s / 2.0
    xclose = det.xclose_mm / 1000.0 if det.xclose_mm is not None else fclose0
    yclose = det.yclose_mm / 1000.0 if det.yclose_mm is not None else sclose0
    if convention == "ADXV":
        xdef, ydef = (detsize_f + pixel) / 2.0, (detsize_s - pixel) / 2.0
    elif convention in ("MOSFLM", "DENZO"):
        xdef, ydef = (detsize_s + pixel) / 2.0, (detsize_f + pixel) / 2.0
    else:
        xdef, ydef = xclose, yclose
    xbeam_mm = xdef * 1000.0 if det.xbeam_mm is None else det.xbeam_mm
    ybeam_mm = ydef * 1000.0 if det.ybeam_mm is None else det.ybeam_mm
    beam_center = param_tensor(params, "beam_center_mm", (xbeam_mm, ybeam_mm), dtype=dtype, device=device) / 1000.0
    xbeam, ybeam = beam_center[0], beam_center[1]
    fclose, sclose = const(fclose0), const(sclose0)
    if convention == "ADXV":
        fbeam, sbeam = xbeam, detsize_s - ybeam
    elif convention == "MOSFLM":
        fbeam, sbeam = ybeam + 0.5 * pixel, xbeam + 0.5 * pixel
    elif convention == "DENZO":
        fbeam, sbeam = ybeam, xbeam
    else:
        fbeam, sbeam = xbeam, ybeam
        if convention == "CUSTOM" or (params is not None and "beam_center_mm" in params):
            fclose, sclose = xbeam, ybeam

    # detector rotations (radians; nanoBragg.c divides degrees by RTD = 180/pi)
    rot = param_tensor(params, "detector_rot_deg", det.rot_deg, dtype=dtype, device=device) * (math.pi / 180.0)
    twotheta = param_tensor(params, "twotheta_deg", det.twotheta_deg, dtype=dtype, device=device) * (math.pi / 180.0)
    rmat = rotation_xyz(rot)

    # nanoBragg.c: ratio = beam . rotate(odet); close_distance = |ratio*distance|; distance = close/ratio
    ratio = torch.dot(beam, rmat @ o0)
    if abs(float(ratio.detach())) < 1e-12:
        raise InputError("detector plane is parallel to the beam (beam . detector normal = 0); "
                         "change -detector_rotx/y/z or the detector vectors", field="detector_rot_deg")
    if det.close_distance_mm is None:
        close = torch.abs(ratio * distance)
    else:
        close = const(det.close_distance_mm / 1000.0)
    distance = close / ratio

    fdet = rotate_axis(rmat @ f0, axis, twotheta)
    sdet = rotate_axis(rmat @ s0, axis, twotheta)
    odet = rotate_axis(rmat @ o0, axis, twotheta)
    if convention == "CUSTOM" and det.pix0_vector_m is not None and config.mode == "physical":
        pix0 = const(np.asarray(det.pix0_vector_m, dtype=np.float64))
    elif pivot == "SAMPLE":
        # PHYSICS.md §1.2: pix0 built in the unrotated frame, then swung with the detector
        pix0 = -fclose * f0 - sclose * s0 + close * o0
        pix0 = rotate_axis(rmat @ pix0, axis, twotheta)
    else:
        # BEAM pivot keeps the direct-beam spot at (Fbeam, Sbeam)
        pix0 = -fbeam * fdet - sbeam * sdet + distance * beam

    # nanoBragg.c: near point and direct-beam position after the rotations
    fclose = -torch.dot(pix0, fdet)
    sclose = -torch.dot(pix0, sdet)
    close = torch.dot(pix0, odet)
    if not float(close.detach()) > 0.0:
        raise InputError(f"detector lies behind the sample (close distance {float(close.detach()) * 1000:g} mm)",
                         field="pix0_vector" if det.pix0_vector_m is not None else "distance")
    impact = close / ratio * beam - pix0
    fbeam = torch.dot(fdet, impact)
    sbeam = torch.dot(sdet, impact)
    distance = close / ratio

    n_layers, layer_step, mu = sensor_layers(det)
    values = {
        "Xbeam": float(xbeam.detach()) * 1000, "Ybeam": float(ybeam.detach()) * 1000,
        "Fbeam": float(fbeam.detach()) * 1000, "Sbeam": float(sbeam.detach()) * 1000,
        "Xclose": xclose * 1000, "Yclose": yclose * 1000,
        "Fclose": float(fclose.detach()) * 1000, "Sclose": float(sclose.detach()) * 1000,
        # XDS origin in pixels: ORGX = Fclose/Δ + 0.5 (PHYSICS.md §1.2)
        "ORGX": float(fclose.detach()) / pixel + 0.5, "ORGY": float(sclose.detach()) / pixel + 0.5,
        "distance": float(distance.detach()) * 1000, "close_distance": float(close.detach()) * 1000,
        "detsize_f": detsize_f * 1000, "detsize_s": detsize_s * 1000,
        # PHYSICS.md §1.2: DIALS_ORIGIN = 1000*(pix0_z, pix0_y, -pix0_x) mm
        "dials_origin_x": float(pix0[2].detach()) * 1000, "dials_origin_y": float(pix0[1].detach()) * 1000,
        "dials_origin_z": -float(pix0[0].detach()) * 1000,
        "twotheta_deg": float(twotheta.detach()) * 180.0 / math.pi, "ratio": float(ratio.detach()),
    }
    return DetectorGeometry(
        fdet=fdet, sdet=sdet, odet=odet, pix0=pix0, beam=beam, polar=const(vec["polar"]),
        spindle=const(vec["spindle"]), close_distance=close, distance=distance, pixel_size=pixel,
        fpixels=fpixels, spixels=spixels, curved=det.curved, point_pixel=det.point_pixel,
        n_layers=n_layers, layer_step=layer_step, mu=mu, roi=_roi(det, fpixels, spixels),
        mask=_mask(det, fpixels, spixels, device), values=values, convention=convention, pivot=pivot,
        twotheta_axis=axis)


def subpixel_positions(geom: DetectorGeometry, s_index: Tensor, f_index: Tensor, oversample: int, *,
                       component_major: bool = False) -> Tensor:
    """Lab positions (n, oversample², n_layers, 3) in metres of the subpixel centres of pixels (s, f).

    PHYSICS.md §1.2: ``Fdet = δ(f·n + j) + δ/2``, ``Sdet = δ(s·n + i) + δ/2`` (δ = Δ/n), ``Odet = t·Δz``,
    ``P = Fdet·f̂ + Sdet·ŝ + Odet·ô + pix0``. Subpixels are ordered slow sub-index i major, fast j minor.
    Curved detector: ``P = R_f̂(P_z/L)·R_ŝ(P_y/L)·(L·b̂)`` with L = ``geom.distance``.
    ``s_index``, ``f_index``: (n,) integer pixel indices. ``component_major``: the same values laid
    out (3, n, oversample², n_layers), contiguous (the simulator's layout: elementwise work on long
    rows rather than on a trailing axis of 3); otherwise a view of that layout.
    """
    if oversample < 1:
        raise InputError(f"oversample must be >= 1, got {oversample}", field="oversample")
    dtype, device = geom.pix0.dtype, geom.pix0.device
    n = oversample
    delta = geom.pixel_size / n
    sub = torch.arange(n, dtype=dtype, device=device)
    fd = delta * (f_index.to(dtype=dtype, device=device)[:, None] * n + sub) + delta / 2.0  # (N, j)
    sd = delta * (s_index.to(dtype=dtype, device=device)[:, None] * n + sub) + delta / 2.0  # (N, i)
    count = fd.shape[0]
    fs = torch.stack([fd[:, None, :].expand(count, n, n), sd[:, :, None].expand(count, n, n)]).view(2, -1)
    basis = torch.stack([geom.fdet, geom.sdet], 1)                                       # (3, 2)
    od = torch.arange(geom.n_layers, dtype=dtype, device=device) * geom.layer_step
    offset = geom.pix0[:, None] + geom.odet[:, None] * od                                # (3, T)
    if geom.n_layers == 1:
        pos = torch.addmm(offset, basis, fs).view(3, count, n * n, 1)
    else:
        pos = (basis @ fs).view(3, count, n * n, 1) + offset[:, None, None, :]
    if geom.curved:
        # nanoBragg.c -curved_det: rotate L*beam about s by P_y/L, then about f by P_z/L
        length = geom.distance
        flat = pos.movedim(0, -1)
        start = (length * geom.beam).expand_as(flat)
        turned = rotate_axis(start, geom.sdet, flat[..., 1] / length)
        pos = rotate_axis(turned, geom.fdet, flat[..., 2] / length).movedim(-1, 0).contiguous()
    return pos if component_major else pos.movedim(0, -1)


def solid_angle(geom: DetectorGeometry, positions: Tensor, r: Tensor | None = None) -> Tensor:
    """Pixel solid angle (...) in sr at ``positions`` (..., 3) m: ``Δ²/R²·(L_close/R)`` (PHYSICS.md §1.2).

    ``-point_pixel``: ``1/R²`` (m⁻², nanoBragg drops Δ²). ``r``: |positions| (...) in m when the
    caller has it already.
    """
    if r is None:
        r = torch.sqrt(dot3(positions, positions))
    if geom.point_pixel:
        return 1.0 / (r * r)
    return (geom.pixel_size ** 2) * geom.close_distance / (r * r * r)


def solid_angle_factors(geom: DetectorGeometry, r_inv: Tensor) -> tuple[Tensor, ...]:
    """Factors whose product is :func:`solid_angle`, from ``r_inv`` = 1/|position| (...) in 1/m.

    ``(Δ²·L_close, 1/R, 1/R, 1/R)``, or ``(1/R, 1/R)`` with ``-point_pixel``: for product.py, which
    keeps 1/R once for the backward pass instead of every partial product.
    """
    if geom.point_pixel:
        return r_inv, r_inv
    return (geom.pixel_size ** 2) * geom.close_distance, r_inv, r_inv, r_inv


def absorbs(geom: DetectorGeometry) -> bool:
    """Whether the sensor absorbs in layers (else every capture fraction is 1): PHYSICS.md §1.7."""
    return geom.layer_step != 0.0 and geom.mu != 0.0


def capture_fractions(geom: DetectorGeometry, diffracted: Tensor, *, component_major: bool = False) -> Tensor:
    """Fraction of photons absorbed in each sensor layer, (..., n_layers), for unit ``diffracted`` (..., 3).

    PHYSICS.md §1.7: parallax ``ρ = d̂·ô``, ``capture_t = exp(−t·Δz·μ/ρ) − exp(−(t+1)·Δz·μ/ρ)``;
    all ones (one layer) without sensor thickness. ``component_major``: ``diffracted`` is (3, ...).
    """
    shape = (diffracted.shape[1:] if component_major else diffracted.shape[:-1]) + (geom.n_layers,)
    if not absorbs(geom):
        return torch.ones(shape, dtype=diffracted.dtype, device=diffracted.device)
    rho = dot3(diffracted, geom.odet, component_major=component_major).unsqueeze(-1)
    depth = torch.arange(geom.n_layers, dtype=diffracted.dtype, device=diffracted.device) * geom.layer_step
    scale = geom.mu / rho
    return torch.exp(-depth * scale) - torch.exp(-(depth + geom.layer_step) * scale)


def oscillation_deg(config: SimulationConfig) -> float:
    """Resolved oscillation range in degrees (nanoBragg.c default sampling logic for phi)."""
    crystal = config.crystal
    if crystal.osc_deg is not None and crystal.osc_deg >= 0.0:
        return crystal.osc_deg
    if crystal.phistep_deg is not None and crystal.phistep_deg > 0.0:
        return crystal.phistep_deg
    return 1.0 if crystal.phisteps is not None else 0.0  # -phisteps alone: osc = 1 degree


def smv_header_fields(config: SimulationConfig, geom: DetectorGeometry) -> dict[str, str]:
    """nanoBragg's SMV header keywords and values (PHYSICS.md §1.12), formatted with C's ``%g``.

    Keys in nanoBragg's order; lengths in mm, WAVELENGTH in Å, angles in degrees. ``DIALS_ORIGIN`` is
    ``"x,y,z"`` (nanoBragg writes that line without a trailing ';').
    """
    v = geom.values
    pixel_mm = geom.pixel_size * 1000.0
    wavelength = DEFAULT_WAVELENGTH_A if config.beam.wavelength_A is None else config.beam.wavelength_A
    phi0 = config.crystal.phi0_deg

    def g(x: float) -> str:
        return "%g" % x

    return {
        "HEADER_BYTES": "512",
        "DIM": "2",
        "BYTE_ORDER": "little_endian" if sys.byteorder == "little" else "big_endian",
        "TYPE": "unsigned_short",
        "SIZE1": str(geom.fpixels),
        "SIZE2": str(geom.spixels),
        "PIXEL_SIZE": g(pixel_mm),
        "DISTANCE": g(v["distance"]),
        "WAVELENGTH": g(wavelength),
        "BEAM_CENTER_X": g(v["Xbeam"]),
        "BEAM_CENTER_Y": g(v["Ybeam"]),
        "ADXV_CENTER_X": g(v["Fbeam"]),
        "ADXV_CENTER_Y": g(v["detsize_s"] - v["Sbeam"]),
        "MOSFLM_CENTER_X": g(v["Sbeam"] - 0.5 * pixel_mm),
        "MOSFLM_CENTER_Y": g(v["Fbeam"] - 0.5 * pixel_mm),
        "DENZO_X_BEAM": g(v["Sbeam"]),
        "DENZO_Y_BEAM": g(v["Fbeam"]),
        "DIALS_ORIGIN": ",".join(g(v[k]) for k in ("dials_origin_x", "dials_origin_y", "dials_origin_z")),
        "XDS_ORGX": g(v["ORGX"]),
        "XDS_ORGY": g(v["ORGY"]),
        "CLOSE_DISTANCE": g(v["close_distance"]),
        "PHI": g(phi0),
        "OSC_START": g(phi0),
        "OSC_RANGE": g(oscillation_deg(config)),
        "TWOTHETA": g(v["twotheta_deg"]),
        "DETECTOR_SN": "000",
        "BEAMLINE": "fake",
    }
