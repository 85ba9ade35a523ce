"""X-ray sources of nanoBragg: wavelength, divergence x dispersion grid or -sourcefile, polarization, fluence.

Follows nanoBragg.c (PHYSICS.md §1.1, §1.6, §1.8). Differentiable with respect to ``"wavelength_A"``
and ``"fluence"`` (see "Python API" in ``docs/diffraction.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.geometry import DEFAULT_WAVELENGTH_A, DetectorGeometry
from equipoise.diffraction.params import param_tensor
from equipoise.diffraction.rotations import dot3, rotate_axis
from equipoise.errors import InputError

SOURCE_DISTANCE_M = 10.0  # nanoBragg.c: source_distance = 10.0 (m)
DEFAULT_FLUENCE = 1.25932015286227e29  # photons/m^2, r_e^2 * fluence = 1 (PHYSICS.md §1.1)
DEFAULT_BEAMSIZE_M = 1e-4  # nanoBragg.c: beamsize = 1e-4 (m)


@dataclass
class Sources:
    """Incident beams in nanoBragg's order: unit directions ``incident`` (n, 3) and ``wavelength`` (n,) in m.

    ``incident = −source_position/|source_position|`` (PHYSICS.md §1.3). ``position`` (n, 3) m holds
    the source positions nanoBragg prints ("created a total of N sources").
    """

    incident: Tensor
    wavelength: Tensor
    position: Tensor


def _steps(range_: float, step: float, steps: int) -> tuple[float, float, int]:
    """nanoBragg.c's default-sampling logic for (range, step, steps); negative = not given.

    Shared by divergence (h and v) and dispersion; followed by the sanity check that collapses to a
    single step when range, step or steps is not positive.
    """
    if steps <= 0:
        if range_ < 0.0:
            if step <= 0.0:
                range_, step, steps = 0.0, 0.0, 1
            else:
                range_, steps = step, 2
        else:
            if step <= 0.0:
                step, steps = range_, 2
            else:
                steps = math.ceil(range_ / step)
    else:
        if range_ < 0.0:
            if step <= 0.0:
                range_ = 1.0  # nanoBragg.c: "user cares only about number of steps" (1 rad for divergence)
                step = range_ / steps
            else:
                range_, steps = step, 2
        elif step <= 0.0:
            steps = max(steps, 2)
            step = range_ / (steps - 1)
    if range_ <= 0.0 or step <= 0.0 or steps <= 0:
        return 0.0, 0.0, 1
    return range_, step, steps


def divergence_grid(config: SimulationConfig) -> list[tuple[float, float]]:
    """Accepted (hdiv, vdiv) angles in radians, nanoBragg order (h outer, v inner) (PHYSICS.md §1.8).

    ``-round_div`` (default) drops points with ``4·[(h² − hstep²/4·(1 − hsteps%2))/hrange² + (v …)/vrange²]
    > 1.1``; a zero range gives a NaN test in C, which keeps the point.
    """
    beam = config.beam

    def mrad(x: float | None) -> float:
        return -1.0 if x is None else x / 1000.0

    hrange = mrad(beam.hdivrange_mrad if beam.hdivrange_mrad is not None else beam.divergence_mrad)
    vrange = mrad(beam.vdivrange_mrad if beam.vdivrange_mrad is not None else beam.divergence_mrad)
    hrange, hstep, hsteps = _steps(hrange, mrad(beam.hdivstep_mrad), beam.hdivsteps or -1)
    vrange, vstep, vsteps = _steps(vrange, mrad(beam.vdivstep_mrad), beam.vdivsteps or -1)

    def term(x: float, step: float, steps: int, range_: float) -> float:
        if range_ == 0.0:
            return math.nan
        return (x * x - step * step / 4.0 * (1 - steps % 2)) / range_ / range_

    points = []
    for i in range(hsteps):
        for j in range(vsteps):
            hdiv = hstep * i - hrange / 2.0
            vdiv = vstep * j - vrange / 2.0
            test = term(hdiv, hstep, hsteps, hrange) + term(vdiv, vstep, vsteps, vrange)
            if beam.round_div and test * 4.0 > 1.1:
                continue
            points.append((hdiv, vdiv))
    return points


def dispersion_factors(config: SimulationConfig) -> list[float]:
    """Wavelength multipliers ``1 + i·dispstep − dispersion/2`` (PHYSICS.md §1.8)."""
    pct = config.beam.dispersion_pct
    if pct < 0.0 or not math.isfinite(pct):
        raise InputError(f"dispersion must be >= 0 %, got {pct!r}", field="dispersion")
    dispersion, step, steps = _steps(pct / 100.0, -1.0, config.beam.dispsteps or -1)
    return [1.0 + step * i - dispersion / 2.0 for i in range(steps)]


def wavelength_m(config: SimulationConfig, params: Mapping[str, Tensor] | None = None, *,
                 dtype: torch.dtype, device: torch.device) -> Tensor:
    """Central wavelength λ0 () in metres from ``params["wavelength_A"]`` or -lambda/-energy (default 1 Å)."""
    default = DEFAULT_WAVELENGTH_A if config.beam.wavelength_A is None else config.beam.wavelength_A
    lam = param_tensor(params, "wavelength_A", default, dtype=dtype, device=device)
    if not float(lam.detach()) > 0.0 or not math.isfinite(float(lam.detach())):
        raise InputError(f"wavelength must be > 0 A, got {float(lam.detach())!r}", field="lambda")
    return lam * 1e-10


def beam_sources(config: SimulationConfig, geom: DetectorGeometry,
                 params: Mapping[str, Tensor] | None = None, *,
                 dtype: torch.dtype, device: torch.device) -> Sources:
    """Sources in nanoBragg order (PHYSICS.md §1.8); differentiable w.r.t. ``params["wavelength_A"]``.

    With ``-sourcefile`` (``config.beam.sources``, (n, 5): X Y Z [m] weight λ [m], NaN = missing) the rows
    are used as given, missing positions → −10 m·b̂, missing λ → λ0; weights are ignored as in nanoBragg.
    Otherwise every accepted divergence point (position −10 m·b̂ rotated about p̂ by vdiv, then about
    unit(b̂ × p̂) by hdiv) is repeated for each dispersion wavelength.
    """
    device = torch.device(device)
    lam0 = wavelength_m(config, params, dtype=dtype, device=device)
    beam = geom.beam.to(dtype=dtype, device=device)
    polar = geom.polar.to(dtype=dtype, device=device)
    table = config.beam.sources
    if table is not None:
        rows = np.asarray(table, dtype=np.float64)
        where = config.beam.sources_file
        if rows.ndim != 2 or rows.shape[1] != 5 or rows.shape[0] == 0:
            raise InputError(f"source table must have shape (n, 5), got {rows.shape}", path=where,
                             field="sourcefile")
        default_pos = (-SOURCE_DISTANCE_M * beam).detach().cpu().numpy()
        pos_np = np.where(np.isnan(rows[:, :3]), default_pos[None, :], rows[:, :3])
        norms = np.sqrt((pos_np ** 2).sum(1))
        if np.any(norms == 0.0) or not np.all(np.isfinite(norms)):
            bad = int(np.flatnonzero((norms == 0.0) | ~np.isfinite(norms))[0])
            raise InputError(f"source position {tuple(pos_np[bad])} is zero or not finite", path=where,
                             line=bad + 1, field="sourcefile")
        lam_col = rows[:, 4]
        if np.any(lam_col[~np.isnan(lam_col)] <= 0.0):
            bad = int(np.flatnonzero(lam_col <= 0.0)[0])
            raise InputError(f"source wavelength must be > 0 m, got {lam_col[bad]:g}", path=where,
                             line=bad + 1, field="sourcefile")
        given = torch.as_tensor(np.nan_to_num(lam_col, nan=1.0), dtype=dtype, device=device)
        missing = torch.as_tensor(np.isnan(lam_col), dtype=torch.bool, device=device)
        wavelength = torch.where(missing, lam0.expand_as(given), given)
        position = torch.as_tensor(pos_np, dtype=dtype, device=device)
    else:
        points = divergence_grid(config)
        factors = dispersion_factors(config)
        vert = torch.linalg.cross(beam, polar)
        vnorm = torch.linalg.norm(vert)
        angles = torch.as_tensor(points, dtype=dtype, device=device).reshape(-1, 2)
        if float(vnorm.detach()) == 0.0 and bool(torch.any(angles[:, 0] != 0.0)):
            raise InputError("beam and polarization vectors are parallel; horizontal divergence is undefined",
                             field="polar_vector")
        vert = vert / vnorm if float(vnorm.detach()) > 0.0 else vert
        start = (-SOURCE_DISTANCE_M * beam).expand(angles.shape[0], 3)
        turned = rotate_axis(start, polar, angles[:, 1])  # about p̂ by vdiv
        turned = rotate_axis(turned, vert, angles[:, 0])  # then about unit(b̂ × p̂) by hdiv
        nfac = len(factors)
        position = turned[:, None, :].expand(-1, nfac, 3).reshape(-1, 3)
        fac = torch.as_tensor(factors, dtype=dtype, device=device)
        wavelength = (lam0 * fac)[None, :].expand(angles.shape[0], nfac).reshape(-1)
    incident = -position / torch.linalg.norm(position, dim=-1, keepdim=True)
    return Sources(incident=incident, wavelength=wavelength, position=position)


def polarization_factor(incident: Tensor, diffracted: Tensor, polar: Tensor, kahn: float | Tensor, *,
                        nopolar: bool = False, component_major: bool = False) -> Tensor:
    """Polarization factor (...) for unit ``incident`` and ``diffracted`` (..., 3) and axis ``polar`` (3,).

    PHYSICS.md §1.6 / nanoBragg.c ``polarization_factor``: ``P = ½[1 + cos²2θ − K·cos(2ψ)·sin²2θ]`` with
    ``cos2θ = î·d̂``, ``B̂ = unit(p̂ × î)``, ``Ê = unit(î × B̂)``, ``ψ = −atan2(d̂·B̂, d̂·Ê)``;
    here
    ``cos 2ψ = (e² − b²)/(e² + b²)`` (e = d̂·Ê, b = d̂·B̂), which has the same value and defined
    gradients; ψ = 0 where nanoBragg's atan2(0, 0) is. ``nopolar``: P = 1.
    ``component_major``: ``diffracted`` is (3, ...) and ``incident`` one direction (3,), giving (...),
    or S directions (S, 3), giving (..., S) (see rotations.dot3).
    """
    def along(v: Tensor) -> Tensor:
        return dot3(diffracted, v, component_major=component_major)

    cos2t = along(incident)
    if nopolar:
        return torch.ones_like(cos2t)
    cos2t_sqr = cos2t * cos2t
    sin2t_sqr = 1.0 - cos2t_sqr
    if not isinstance(kahn, Tensor) and kahn == 0.0:
        return 0.5 * (1.0 + cos2t_sqr)

    def safe_unit(v: Tensor) -> Tensor:
        n2 = dot3(v, v).unsqueeze(-1)
        ok = n2 > 0
        return torch.where(ok, v / torch.sqrt(torch.where(ok, n2, torch.ones_like(n2))), torch.zeros_like(v))

    b_in = safe_unit(torch.linalg.cross(polar.expand_as(incident), incident, dim=-1))
    e_in = safe_unit(torch.linalg.cross(incident, b_in, dim=-1))
    e = along(e_in)
    b = along(b_in)
    denom = e * e + b * b
    ok = denom > 0
    cos2psi = torch.where(ok, (e * e - b * b) / torch.where(ok, denom, torch.ones_like(denom)),
                          torch.ones_like(denom))
    return 0.5 * (1.0 + cos2t_sqr - kahn * cos2psi * sin2t_sqr)


def fluence(config: SimulationConfig, params: Mapping[str, Tensor] | None = None, *,
            dtype: torch.dtype, device: torch.device) -> Tensor:
    """Fluence () in photons/m² (PHYSICS.md §1.1).

    ``params["fluence"]``, else nanoBragg.c: ``flux·exposure/beamsize²`` when ``-flux`` ≠ 0 (exposure
    default 1 s, beamsize default 0.1 mm; this overrides ``-fluence``), else ``-fluence``, else
    1.25932015286227e29.
    """
    if params is not None and "fluence" in params:
        value = torch.as_tensor(params["fluence"]).to(dtype=dtype, device=device)
        if not float(value.detach()) >= 0.0:
            raise InputError(f"fluence must be >= 0 photons/m^2, got {float(value.detach())!r}", field="fluence")
        return value
    beam = config.beam
    result = DEFAULT_FLUENCE if beam.fluence is None else beam.fluence
    exposure = 1.0 if beam.exposure_s is None else beam.exposure_s
    if beam.flux is not None and beam.flux != 0.0 and exposure > 0.0:
        size = DEFAULT_BEAMSIZE_M if beam.beamsize_mm is None else beam.beamsize_mm / 1000.0
        if not size > 0.0:
            raise InputError(f"beam size must be > 0 mm to turn flux into fluence, got {beam.beamsize_mm!r}",
                             field="beamsize")
        result = beam.flux * exposure / size / size
    if not result >= 0.0 or math.isinf(result):
        raise InputError(f"fluence must be finite and >= 0 photons/m^2, got {result!r}", field="fluence")
    return torch.tensor(result, dtype=dtype, device=device)
