"""Configuration of a still-image diffraction simulation, in nanoBragg's user units.

A :class:`SimulationConfig` holds what a nanoBragg command line says: every field is in the unit
of the corresponding nanoBragg flag (Å, degrees, mm, µm, mrad, %, eV ...) and ``None`` means "flag
not given: use nanoBragg's default, resolved by the simulator" (several defaults depend on other
flags, e.g. the beam centre on the detector size and the convention, or the oversampling on the
crystal size). The configuration is plain data with no tensors; the simulator turns it into
tensors (``equipoise.diffraction.simulate``), and refinement overrides selected quantities with
tensors that require gradients.

The flag that sets each field is given in its comment. The parser of nanoBragg command lines
lives in ``equipoise.diffraction.flags``; TOML files use the same field names, grouped by the
section names ``crystal``, ``beam``, ``detector``, ``output`` (see ``docs/diffraction.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Convention = Literal["MOSFLM", "XDS", "DIALS", "ADXV", "DENZO", "CUSTOM"]
Pivot = Literal["BEAM", "SAMPLE"]
LatticeShape = Literal["square", "round", "gauss", "tophat"]
MosaicSampling = Literal["nanobragg", "quadrature"]
Mode = Literal["physical", "nanobragg"]


@dataclass
class HKLGrid:
    """Structure-factor amplitudes on a dense Miller-index grid (nanoBragg's ``Fhkl`` array).

    ``values[i, j, k]`` is F (electrons) of reflection ``(lower[0]+i, lower[1]+j, lower[2]+k)``;
    grid points not listed in the file hold ``default_F`` (or 0 when ``default_F`` is 0), exactly as
    nanoBragg fills them. ``values`` has shape (nh, nk, nl), float64.
    """

    lower: tuple[int, int, int]
    values: np.ndarray
    source: str | None = None  # the file it was read from, for error messages and headers

    @property
    def upper(self) -> tuple[int, int, int]:
        """Largest (h, k, l) on the grid, inclusive."""
        return tuple(lo + n - 1 for lo, n in zip(self.lower, self.values.shape))  # type: ignore[return-value]


@dataclass
class CrystalConfig:
    """Unit cell, orientation, size, mosaicity, rotation and structure factors."""

    cell: tuple[float, float, float, float, float, float] | None = None  # -cell a b c alpha beta gamma (Å, deg)
    a_matrix: np.ndarray | None = None  # -mat: MOSFLM A matrix (3x3, rows a*_x b*_x c*_x ..., Å^-1 * λ)
    a_matrix_source: str | None = None  # file the A matrix came from
    misset_deg: tuple[float, float, float] | None = None  # -misset rx ry rz (deg)
    misset_random: bool = False  # -misset random
    misset_seed: int | None = None  # -misset_seed (default: -seed)
    n_cells: tuple[float, float, float] | None = None  # -N / -Na -Nb -Nc (unit cells per axis)
    size_mm: tuple[float | None, float | None, float | None] | None = None  # -xtalsize / -xtal_x/y/z (mm)
    shape: LatticeShape = "square"  # -square_xtal / -round_xtal / -gauss_xtal / -tophat_spots
    fudge: float = 1.0  # -fudge
    mosaic_spread_deg: float = 0.0  # -mosaic (deg)
    mosaic_domains: int | None = None  # -mosaic_domains (default 10 if spread > 0, else 1)
    mosaic_seed: int = -12345678  # -mosaic_seed N is stored as -N, as nanoBragg does
    mosaic_sampling: MosaicSampling = "nanobragg"  # nanoBragg's random domains or a deterministic quadrature
    phi0_deg: float = 0.0  # -phi
    osc_deg: float | None = None  # -osc
    phistep_deg: float | None = None  # -phistep
    phisteps: int | None = None  # -phisteps
    spindle_axis: tuple[float, float, float] | None = None  # -spindle_axis (default from convention)
    default_F: float = 0.0  # -default_F (electrons)
    hkl: HKLGrid | None = None  # -hkl file
    interpolate: bool | None = None  # -interpolate / -nointerpolate (None: auto, on when any N <= 2)


@dataclass
class BeamConfig:
    """Wavelength, fluence, polarization, divergence and dispersion."""

    wavelength_A: float | None = None  # -lambda / -wave (Å); -energy E (eV) sets 12398.42/E
    fluence: float | None = None  # -fluence (photons/m^2); default 1.25932015286227e29
    flux: float | None = None  # -flux (photons/s)
    exposure_s: float | None = None  # -exposure (s)
    beamsize_mm: float | None = None  # -beamsize (mm, square beam; default 0.1)
    polarization: float = 0.0  # -polar K (Kahn factor; nanoBragg's effective default is 0)
    nopolar: bool = False  # -nopolar: P = 1
    polar_vector: tuple[float, float, float] | None = None  # -polar_vector (switches to CUSTOM)
    beam_vector: tuple[float, float, float] | None = None  # -beam_vector (switches to CUSTOM)
    dispersion_pct: float = 0.0  # -dispersion (%)
    dispsteps: int | None = None  # -dispsteps
    divergence_mrad: float | None = None  # -divergence (sets both ranges)
    hdivrange_mrad: float | None = None  # -hdivrange
    vdivrange_mrad: float | None = None  # -vdivrange
    hdivstep_mrad: float | None = None  # -hdivstep
    vdivstep_mrad: float | None = None  # -vdivstep
    hdivsteps: int | None = None  # -hdivsteps (and -divsteps)
    vdivsteps: int | None = None  # -vdivsteps (and -divsteps)
    round_div: bool = True  # -round_div (default) / -square_div
    sources: np.ndarray | None = None  # -sourcefile: (n, 5) columns X Y Z weight λ (m, m, m, -, m); NaN = missing
    sources_file: str | None = None


@dataclass
class DetectorConfig:
    """Detector geometry, sampling and sensor."""

    convention: Convention = "MOSFLM"  # -mosflm -xds -dials -adxv -denzo, or CUSTOM via vector flags
    pivot: Pivot | None = None  # -pivot beam|sample (only honoured for CUSTOM, as in nanoBragg)
    pixel_mm: float = 0.1  # -pixel (mm)
    fpixels: int | None = None  # -detpixels / -detpixels_f / -detpixels_x
    spixels: int | None = None  # -detpixels / -detpixels_s / -detpixels_y
    detsize_f_mm: float | None = None  # -detsize / -detsize_f / -detsize_x (mm; default 102.4)
    detsize_s_mm: float | None = None  # -detsize / -detsize_s / -detsize_y (mm)
    distance_mm: float | None = None  # -distance (mm; default 100)
    close_distance_mm: float | None = None  # -close_distance (mm)
    xbeam_mm: float | None = None  # -Xbeam (mm)
    ybeam_mm: float | None = None  # -Ybeam (mm)
    xclose_mm: float | None = None  # -Xclose (mm)
    yclose_mm: float | None = None  # -Yclose (mm)
    orgx_px: float | None = None  # -ORGX (pixels)
    orgy_px: float | None = None  # -ORGY (pixels)
    rot_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # -detector_rotx/roty/rotz (deg)
    twotheta_deg: float = 0.0  # -twotheta (deg)
    twotheta_axis: tuple[float, float, float] | None = None  # -twotheta_axis (switches to CUSTOM)
    fdet_vector: tuple[float, float, float] | None = None  # -fdet_vector (switches to CUSTOM)
    sdet_vector: tuple[float, float, float] | None = None  # -sdet_vector (switches to CUSTOM)
    odet_vector: tuple[float, float, float] | None = None  # -odet_vector (switches to CUSTOM)
    pix0_vector_m: tuple[float, float, float] | None = None  # -pix0_vector (m; switches to CUSTOM)
    curved: bool = False  # -curved_det
    point_pixel: bool = False  # -point_pixel
    oversample: int | None = None  # -oversample (None: nanoBragg's automatic choice)
    roi: tuple[int, int, int, int] | None = None  # -roi xmin xmax ymin ymax (inclusive pixel indices)
    mask: np.ndarray | None = None  # -mask: (spixels, fpixels), 0 = skip pixel
    mask_file: str | None = None
    dmin_A: float | None = None  # -dmin (Å)
    thickness_um: float | None = None  # -detector_thick (µm)
    absorption_um: float | None = None  # -detector_abs (µm attenuation depth; inf or 0 = off)
    thicksteps: int | None = None  # -detector_thicksteps / -thicksteps
    oversample_thick: bool = False  # -oversample_thick: capture per subpixel (nanobragg mode: C running-sum bug)
    oversample_polar: bool = False  # -oversample_polar: polarization per subpixel/source (idem)
    oversample_omega: bool = False  # -oversample_omega: solid angle per subpixel (idem)


@dataclass
class OutputConfig:
    """Files to write and their scaling (only used by the command line)."""

    floatfile: str | None = None  # -floatfile (raw float32)
    intfile: str | None = None  # -intfile (SMV, unsigned short)
    pgmfile: str | None = None  # -pgmfile (8-bit PGM)
    noisefile: str | None = None  # -noisefile (SMV with Poisson noise)
    scale: float | None = None  # -scale (intfile scale; default 55000/max)
    adc: float = 40.0  # -adc (ADC offset)
    pgmscale: float | None = None  # -pgmscale
    seed: int | None = None  # -seed (noise)
    write_pgm: bool = True  # -nopgm sets False; -pgmfile / -pgmscale set True (last flag wins)
    write_noise: bool = True  # -nonoise sets False; -noisefile sets True (last flag wins)


@dataclass
class SimulationConfig:
    """Everything a nanoBragg command line specifies.

    ``mode`` selects ``"physical"`` (default: correct physics) or ``"nanobragg"`` (reproduce the
    C program's documented quirks: detector capture taken from the last layer only, solid angle
    and polarization from the first subpixel). ``memory_budget_bytes`` bounds the peak memory of
    chunked evaluation, forward and backward.
    """

    crystal: CrystalConfig = field(default_factory=CrystalConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    water_um: float = 0.0  # -water (µm)
    mode: Mode = "physical"
    memory_budget_bytes: int = 1 << 30
    device: str | None = None  # -device cpu|cuda[:N] (command line only; None: cpu)
    dtype: Literal["float32", "float64"] | None = None  # -dtype (command line only; None: float64)
