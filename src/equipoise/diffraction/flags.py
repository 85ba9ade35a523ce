"""nanoBragg command lines -> :class:`SimulationConfig`.

Every flag that ``nanoBragg.c`` parses is accepted with the same name, values and units (the
aliases it matches too, e.g. ``-wave`` for ``-lambda``, ``-mosaic_dom`` for ``-mosaic_domains``),
plus a few equipoise-only flags (``-mode``, ``-mosaic_sampling``, ``-memory_budget``, ``-device``,
``-dtype``). Values are stored raw, in the flag's unit; defaults that depend on other flags are
left ``None`` for the simulator to resolve (see ``config.py``).

Stricter than nanoBragg, on purpose:

* an unknown or misspelt flag is an :class:`InputError` that suggests the closest known flag
  (nanoBragg silently ignores it, and its ``strstr`` matching makes ``-pgmscale`` also set
  ``-scale``, ``-twotheta_axis`` also set ``-twotheta``, ``-misset_seed`` also set ``-misset``);
* a flag with too few values, a non-numeric value or a nonsensical one (zero wavelength,
  negative pixel ...) is an InputError naming the flag and what it expects;
* a stray value that belongs to no flag is an error.

Order semantics follow nanoBragg: the last occurrence of a flag wins; ``-fdet_vector`` and the
other vector flags switch the convention to CUSTOM and a later ``-mosflm``/``-xds``... switches it
back; the pivot that ``-distance``/``-Xbeam`` (BEAM) or ``-close_distance``/``-Xclose``/``-ORGX``/
``-twotheta`` (SAMPLE) or ``-pivot`` imply is recorded in ``detector.pivot`` (nanoBragg honours it
for CUSTOM only). Header geometry of ``-mask`` and ``-img`` SMV files is applied before any flag,
as in nanoBragg. The seeds of ``-seed``, ``-mosaic_seed`` and ``-misset_seed`` are stored negated
(``-N``), nanoBragg's internal generator state.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equipoise.diffraction.config import SimulationConfig
from equipoise.errors import InputError

#: Å·eV, nanoBragg's -energy conversion (PHYSICS.md §1.8)
HC_EV_A = 12398.42


class IgnoredFlagWarning(UserWarning):
    """A nanoBragg flag that is accepted for compatibility but has no effect in equipoise."""


@dataclass
class _State:
    """Parse state: the config being filled plus what needs combining across flags."""

    cfg: SimulationConfig
    base_dir: Path
    pivot: str | None = None
    n_cells: list[float] | None = None
    size_mm: list[float | None] | None = None
    rot: list[float] | None = None
    hkl_path: Path | None = None

    def path(self, name: str) -> Path:
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.base_dir / p


Apply = Callable[[_State, list[Any]], None]


@dataclass(frozen=True)
class FlagSpec:
    """One nanoBragg flag: its names, the kinds of its values and what it sets.

    ``values`` has one letter per value: ``f`` number, ``i`` integer, ``w`` word, ``p`` file path,
    ``a`` "inf" or a number. ``check`` constrains numbers: ``pos`` (> 0), ``nonneg`` (>= 0),
    ``vec`` (not the zero vector) or ``""``. ``target`` and ``unit`` document it (flags table).
    """

    names: tuple[str, ...]
    values: str
    apply: Apply
    target: str
    unit: str = ""
    check: str = ""
    choices: tuple[str, ...] = ()


def _set(path: str, convert: Callable[[list[Any]], Any] | None = None) -> Apply:
    section, _, name = path.rpartition(".")

    def apply(state: _State, values: list[Any]) -> None:
        obj = getattr(state.cfg, section) if section else state.cfg
        setattr(obj, name, convert(values) if convert else values[0])

    return apply


def _tuple(values: list[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _negated(values: list[Any]) -> int:
    return -int(values[0])


def _combine(*applies: Apply) -> Apply:
    def apply(state: _State, values: list[Any]) -> None:
        for a in applies:
            a(state, values)

    return apply


def _pivot(which: str) -> Apply:
    def apply(state: _State, values: list[Any]) -> None:
        state.pivot = which

    return apply


def _convention(name: str, pivot: str) -> Apply:
    # PHYSICS.md §1.2/§1.9: the convention flag also sets the parse-time pivot (-dials sets BEAM)
    return _combine(_set("detector.convention", lambda v: name), _pivot(pivot))


def _custom(path: str) -> Apply:
    """A vector flag: store the vector and switch to the CUSTOM convention (PHYSICS.md §1.2)."""
    return _combine(_set(path, _tuple), _set("detector.convention", lambda v: "CUSTOM"))


def _n_cells(axes: tuple[int, ...]) -> Apply:
    def apply(state: _State, values: list[Any]) -> None:
        n = state.n_cells or [1.0, 1.0, 1.0]  # nanoBragg's default Na = Nb = Nc = 1
        for axis in axes:
            n[axis] = float(values[0])
        state.n_cells = n

    return apply


def _size(axes: tuple[int, ...]) -> Apply:
    def apply(state: _State, values: list[Any]) -> None:
        size = state.size_mm or [None, None, None]
        for axis in axes:
            size[axis] = float(values[0])
        state.size_mm = size

    return apply


def _rot(axis: int) -> Apply:
    def apply(state: _State, values: list[Any]) -> None:
        rot = state.rot or list(state.cfg.detector.rot_deg)
        rot[axis] = float(values[0])
        state.rot = rot

    return apply


def _misset(state: _State, values: list[Any]) -> None:  # handled specially: "random" or 3 numbers
    if values == ["random"]:
        state.cfg.crystal.misset_random = True
        state.cfg.crystal.misset_deg = None
    else:
        state.cfg.crystal.misset_random = False
        state.cfg.crystal.misset_deg = _tuple(values)  # type: ignore[assignment]


def _hkl(state: _State, values: list[Any]) -> None:
    state.hkl_path = state.path(values[0])


def _mat(state: _State, values: list[Any]) -> None:
    from equipoise.diffraction.io.matrix import read_mosflm_matrix

    path = state.path(values[0])
    state.cfg.crystal.a_matrix = read_mosflm_matrix(path)
    state.cfg.crystal.a_matrix_source = str(path)


def _sourcefile(state: _State, values: list[Any]) -> None:
    from equipoise.diffraction.io.sourcefile import read_sourcefile

    path = state.path(values[0])
    state.cfg.beam.sources = read_sourcefile(path)
    state.cfg.beam.sources_file = str(path)


def _lambda_from_energy(values: list[Any]) -> float:
    return HC_EV_A / float(values[0])  # PHYSICS.md §1.8: λ = 12398.42/E Å


def _detector_abs(values: list[Any]) -> float:
    return math.inf if values[0] == "inf" else float(values[0])


def _ignored(reason: str) -> Apply:
    def apply(state: _State, values: list[Any]) -> None:
        pass

    apply.__doc__ = reason
    return apply


def _memory(values: list[Any]) -> int:
    return int(float(values[0]) * (1 << 20))


def _image_header(kind: str) -> Apply:
    """-mask / -img: handled in a pre-pass (header geometry first, flags override), see _apply_header."""
    return _ignored(f"{kind} is read before the other flags")


_TRUE = lambda v: True  # noqa: E731
_FALSE = lambda v: False  # noqa: E731

#: every flag, in the order of the documentation table
FLAGS: tuple[FlagSpec, ...] = (
    # --- crystal ---------------------------------------------------------------------------
    FlagSpec(("-cell",), "ffffff", _set("crystal.cell", _tuple), "crystal.cell", "Å, deg", "pos"),
    FlagSpec(("-mat",), "p", _mat, "crystal.a_matrix", "MOSFLM A matrix file"),
    FlagSpec(("-misset",), "fff", _misset, "crystal.misset_deg / misset_random", "deg, or 'random'"),
    FlagSpec(("-misset_seed",), "i", _set("crystal.misset_seed", _negated), "crystal.misset_seed", "stored as -N"),
    FlagSpec(("-N",), "i", _n_cells((0, 1, 2)), "crystal.n_cells", "unit cells", "pos"),
    FlagSpec(("-Na",), "i", _n_cells((0,)), "crystal.n_cells[0]", "unit cells", "pos"),
    FlagSpec(("-Nb",), "i", _n_cells((1,)), "crystal.n_cells[1]", "unit cells", "pos"),
    FlagSpec(("-Nc",), "i", _n_cells((2,)), "crystal.n_cells[2]", "unit cells", "pos"),
    FlagSpec(("-xtalsize", "-xtal_size", "-samplesize", "-sample_size"), "f", _size((0, 1, 2)),
             "crystal.size_mm", "mm", "pos"),
    FlagSpec(("-xtal_x", "-xtal_thick", "-sample_x", "-sample_thick"), "f", _size((0,)),
             "crystal.size_mm[0]", "mm", "pos"),
    FlagSpec(("-xtal_y", "-xtal_width", "-sample_y", "-sample_width", "-width"), "f", _size((1,)),
             "crystal.size_mm[1]", "mm", "pos"),
    FlagSpec(("-xtal_z", "-xtal_height", "-xtal_heigh", "-sample_z", "-sample_height", "-sample_heigh",
              "-height", "-heigh"), "f", _size((2,)), "crystal.size_mm[2]", "mm", "pos"),
    FlagSpec(("-square_xtal",), "", _set("crystal.shape", lambda v: "square"), "crystal.shape = square"),
    FlagSpec(("-round_xtal",), "", _set("crystal.shape", lambda v: "round"), "crystal.shape = round"),
    FlagSpec(("-gauss_xtal",), "", _set("crystal.shape", lambda v: "gauss"), "crystal.shape = gauss"),
    FlagSpec(("-tophat_spots", "-binary_spots"), "", _set("crystal.shape", lambda v: "tophat"),
             "crystal.shape = tophat"),
    FlagSpec(("-fudge",), "f", _set("crystal.fudge"), "crystal.fudge", "", "pos"),
    FlagSpec(("-mosaic", "-mosaic_spread", "-mosaic_spr", "-mosaicity"), "f", _set("crystal.mosaic_spread_deg"),
             "crystal.mosaic_spread_deg", "deg", "nonneg"),
    FlagSpec(("-mosaic_domains", "-mosaic_dom", "-mosaic_domain"), "i", _set("crystal.mosaic_domains"),
             "crystal.mosaic_domains", "", "pos"),
    FlagSpec(("-mosaic_seed",), "i", _set("crystal.mosaic_seed", _negated), "crystal.mosaic_seed", "stored as -N"),
    FlagSpec(("-mosaic_sampling",), "w", _set("crystal.mosaic_sampling"), "crystal.mosaic_sampling",
             "equipoise only", choices=("nanobragg", "quadrature")),
    FlagSpec(("-phi",), "f", _set("crystal.phi0_deg"), "crystal.phi0_deg", "deg"),
    FlagSpec(("-osc",), "f", _set("crystal.osc_deg"), "crystal.osc_deg", "deg", "nonneg"),
    FlagSpec(("-phistep",), "f", _set("crystal.phistep_deg"), "crystal.phistep_deg", "deg", "nonneg"),
    FlagSpec(("-phisteps",), "i", _set("crystal.phisteps"), "crystal.phisteps", "", "pos"),
    FlagSpec(("-spindle_axis",), "fff", _custom("crystal.spindle_axis"), "crystal.spindle_axis (CUSTOM)",
             "vector", "vec"),
    FlagSpec(("-hkl",), "p", _hkl, "crystal.hkl", "text file h k l F"),
    FlagSpec(("-default_F",), "f", _set("crystal.default_F"), "crystal.default_F", "electrons", "nonneg"),
    FlagSpec(("-interpolate",), "", _set("crystal.interpolate", _TRUE), "crystal.interpolate = True"),
    FlagSpec(("-nointerpolate",), "", _set("crystal.interpolate", _FALSE), "crystal.interpolate = False"),
    # --- beam ------------------------------------------------------------------------------
    FlagSpec(("-lambda", "-wave", "-wavelength"), "f", _set("beam.wavelength_A"), "beam.wavelength_A", "Å", "pos"),
    FlagSpec(("-energy",), "f", _set("beam.wavelength_A", _lambda_from_energy), "beam.wavelength_A = 12398.42/E",
             "eV", "pos"),
    FlagSpec(("-fluence",), "f", _set("beam.fluence"), "beam.fluence", "photons/m²", "pos"),
    FlagSpec(("-flux",), "f", _set("beam.flux"), "beam.flux", "photons/s", "nonneg"),
    FlagSpec(("-exposure",), "f", _set("beam.exposure_s"), "beam.exposure_s", "s", "pos"),
    FlagSpec(("-beamsize",), "f", _set("beam.beamsize_mm"), "beam.beamsize_mm", "mm", "pos"),
    FlagSpec(("-polar",), "f", _combine(_set("beam.polarization"), _set("beam.nopolar", _FALSE)),
             "beam.polarization", "Kahn factor"),
    FlagSpec(("-nopolar",), "", _set("beam.nopolar", _TRUE), "beam.nopolar = True"),
    FlagSpec(("-polar_vector",), "fff", _custom("beam.polar_vector"), "beam.polar_vector (CUSTOM)", "vector", "vec"),
    FlagSpec(("-beam_vector",), "fff", _custom("beam.beam_vector"), "beam.beam_vector (CUSTOM)", "vector", "vec"),
    FlagSpec(("-dispersion",), "f", _set("beam.dispersion_pct"), "beam.dispersion_pct", "%", "nonneg"),
    FlagSpec(("-dispsteps",), "i", _set("beam.dispsteps"), "beam.dispsteps", "", "pos"),
    FlagSpec(("-divergence",), "f", _set("beam.divergence_mrad"), "beam.divergence_mrad", "mrad", "nonneg"),
    FlagSpec(("-hdivrange",), "f", _set("beam.hdivrange_mrad"), "beam.hdivrange_mrad", "mrad", "nonneg"),
    FlagSpec(("-vdivrange",), "f", _set("beam.vdivrange_mrad"), "beam.vdivrange_mrad", "mrad", "nonneg"),
    FlagSpec(("-hdivstep",), "f", _set("beam.hdivstep_mrad"), "beam.hdivstep_mrad", "mrad", "nonneg"),
    FlagSpec(("-vdivstep",), "f", _set("beam.vdivstep_mrad"), "beam.vdivstep_mrad", "mrad", "nonneg"),
    FlagSpec(("-hdivsteps",), "i", _set("beam.hdivsteps"), "beam.hdivsteps", "", "pos"),
    FlagSpec(("-vdivsteps",), "i", _set("beam.vdivsteps"), "beam.vdivsteps", "", "pos"),
    FlagSpec(("-divsteps",), "i", _combine(_set("beam.hdivsteps"), _set("beam.vdivsteps")),
             "beam.hdivsteps, beam.vdivsteps", "", "pos"),
    FlagSpec(("-round_div",), "", _set("beam.round_div", _TRUE), "beam.round_div = True"),
    FlagSpec(("-square_div",), "", _set("beam.round_div", _FALSE), "beam.round_div = False"),
    FlagSpec(("-sourcefile",), "p", _sourcefile, "beam.sources", "text file X Y Z weight λ"),
    # --- detector --------------------------------------------------------------------------
    FlagSpec(("-mosflm",), "", _convention("MOSFLM", "BEAM"), "detector.convention = MOSFLM"),
    FlagSpec(("-xds",), "", _convention("XDS", "SAMPLE"), "detector.convention = XDS"),
    FlagSpec(("-dials",), "", _convention("DIALS", "BEAM"), "detector.convention = DIALS"),
    FlagSpec(("-adxv",), "", _convention("ADXV", "BEAM"), "detector.convention = ADXV"),
    FlagSpec(("-denzo",), "", _convention("DENZO", "BEAM"), "detector.convention = DENZO"),
    FlagSpec(("-pivot",), "w", lambda s, v: setattr(s, "pivot", v[0].upper()), "detector.pivot",
             "beam|sample", choices=("beam", "sample")),
    FlagSpec(("-pixel",), "f", _set("detector.pixel_mm"), "detector.pixel_mm", "mm", "pos"),
    FlagSpec(("-detpixels",), "i", _combine(_set("detector.fpixels"), _set("detector.spixels")),
             "detector.fpixels, detector.spixels", "pixels", "pos"),
    FlagSpec(("-detpixels_f", "-detpixels_x"), "i", _set("detector.fpixels"), "detector.fpixels", "pixels", "pos"),
    FlagSpec(("-detpixels_s", "-detpixels_y"), "i", _set("detector.spixels"), "detector.spixels", "pixels", "pos"),
    FlagSpec(("-detsize",), "f", _combine(_set("detector.detsize_f_mm"), _set("detector.detsize_s_mm")),
             "detector.detsize_f_mm, detector.detsize_s_mm", "mm", "pos"),
    FlagSpec(("-detsize_f", "-detsize_x"), "f", _set("detector.detsize_f_mm"), "detector.detsize_f_mm", "mm", "pos"),
    FlagSpec(("-detsize_s", "-detsize_y"), "f", _set("detector.detsize_s_mm"), "detector.detsize_s_mm", "mm", "pos"),
    FlagSpec(("-distance",), "f", _combine(_set("detector.distance_mm"), _pivot("BEAM")), "detector.distance_mm",
             "mm", "pos"),
    FlagSpec(("-close_distance",), "f", _combine(_set("detector.close_distance_mm"), _pivot("SAMPLE")),
             "detector.close_distance_mm", "mm", "pos"),
    FlagSpec(("-Xbeam",), "f", _combine(_set("detector.xbeam_mm"), _pivot("BEAM")), "detector.xbeam_mm", "mm"),
    FlagSpec(("-Ybeam",), "f", _combine(_set("detector.ybeam_mm"), _pivot("BEAM")), "detector.ybeam_mm", "mm"),
    FlagSpec(("-Xclose",), "f", _combine(_set("detector.xclose_mm"), _pivot("SAMPLE")), "detector.xclose_mm", "mm"),
    FlagSpec(("-Yclose",), "f", _combine(_set("detector.yclose_mm"), _pivot("SAMPLE")), "detector.yclose_mm", "mm"),
    FlagSpec(("-ORGX",), "f", _combine(_set("detector.orgx_px"), _pivot("SAMPLE")), "detector.orgx_px", "pixels"),
    FlagSpec(("-ORGY",), "f", _combine(_set("detector.orgy_px"), _pivot("SAMPLE")), "detector.orgy_px", "pixels"),
    FlagSpec(("-detector_rotx",), "f", _rot(0), "detector.rot_deg[0]", "deg"),
    FlagSpec(("-detector_roty",), "f", _rot(1), "detector.rot_deg[1]", "deg"),
    FlagSpec(("-detector_rotz",), "f", _rot(2), "detector.rot_deg[2]", "deg"),
    FlagSpec(("-twotheta",), "f", _combine(_set("detector.twotheta_deg"), _pivot("SAMPLE")),
             "detector.twotheta_deg", "deg"),
    FlagSpec(("-twotheta_axis",), "fff", _custom("detector.twotheta_axis"), "detector.twotheta_axis (CUSTOM)",
             "vector", "vec"),
    FlagSpec(("-fdet_vector",), "fff", _custom("detector.fdet_vector"), "detector.fdet_vector (CUSTOM)",
             "vector", "vec"),
    FlagSpec(("-sdet_vector",), "fff", _custom("detector.sdet_vector"), "detector.sdet_vector (CUSTOM)",
             "vector", "vec"),
    FlagSpec(("-odet_vector",), "fff", _custom("detector.odet_vector"), "detector.odet_vector (CUSTOM)",
             "vector", "vec"),
    FlagSpec(("-pix0_vector", "-pix0_vector_mm"), "fff", _custom("detector.pix0_vector_m"),
             "detector.pix0_vector_m (CUSTOM)", "m (also for _mm, as nanoBragg)"),
    FlagSpec(("-curved_det",), "", _set("detector.curved", _TRUE), "detector.curved = True"),
    FlagSpec(("-point_pixel",), "", _set("detector.point_pixel", _TRUE), "detector.point_pixel = True"),
    FlagSpec(("-oversample",), "i", _set("detector.oversample"), "detector.oversample", "subpixels per axis", "pos"),
    FlagSpec(("-oversample_thick",), "", _set("detector.oversample_thick", _TRUE), "detector.oversample_thick"),
    FlagSpec(("-oversample_polar",), "", _set("detector.oversample_polar", _TRUE), "detector.oversample_polar"),
    FlagSpec(("-oversample_omega",), "", _set("detector.oversample_omega", _TRUE), "detector.oversample_omega"),
    FlagSpec(("-roi",), "iiii", _set("detector.roi", lambda v: tuple(int(x) for x in v)), "detector.roi",
             "xmin xmax ymin ymax (pixels, inclusive)", "nonneg"),
    FlagSpec(("-mask",), "p", _image_header("-mask"), "detector.mask (+ header geometry)", "SMV file, 0 = skip"),
    FlagSpec(("-img",), "p", _image_header("-img"), "header geometry only", "SMV file"),
    FlagSpec(("-dmin",), "f", _set("detector.dmin_A"), "detector.dmin_A", "Å", "pos"),
    FlagSpec(("-detector_thick",), "f", _set("detector.thickness_um"), "detector.thickness_um", "µm", "nonneg"),
    FlagSpec(("-detector_abs", "-detector_absorb", "-detector_absorption"), "a",
             _set("detector.absorption_um", _detector_abs), "detector.absorption_um", "µm (inf or 0 = off)",
             "nonneg"),
    FlagSpec(("-detector_thicksteps", "-thicksteps"), "i", _set("detector.thicksteps"), "detector.thicksteps",
             "", "pos"),
    # --- background, output, noise ---------------------------------------------------------
    FlagSpec(("-water",), "f", _set("water_um"), "water_um", "µm", "nonneg"),
    FlagSpec(("-floatfile", "-floatimage"), "p", _set("output.floatfile"), "output.floatfile", "raw float32"),
    FlagSpec(("-intfile", "-intimage"), "p", _set("output.intfile"), "output.intfile", "SMV"),
    FlagSpec(("-pgmfile", "-pgmimage"), "p", _combine(_set("output.pgmfile"), _set("output.write_pgm", _TRUE)),
             "output.pgmfile", "PGM"),
    FlagSpec(("-noisefile", "-noiseimage"), "p",
             _combine(_set("output.noisefile"), _set("output.write_noise", _TRUE)), "output.noisefile", "SMV"),
    FlagSpec(("-nopgm",), "", _set("output.write_pgm", _FALSE), "output.write_pgm = False"),
    FlagSpec(("-nonoise",), "", _set("output.write_noise", _FALSE), "output.write_noise = False"),
    FlagSpec(("-scale",), "f", _set("output.scale"), "output.scale", "intfile ADU/photon", "pos"),
    FlagSpec(("-adc",), "f", _set("output.adc"), "output.adc", "ADU", "nonneg"),
    FlagSpec(("-pgmscale",), "f", _combine(_set("output.pgmscale"), _set("output.write_pgm", _TRUE)),
             "output.pgmscale", "grey levels/photon", "pos"),
    FlagSpec(("-seed",), "i", _set("output.seed", _negated), "output.seed", "stored as -N"),
    # --- accepted for compatibility, no effect -----------------------------------------------
    FlagSpec(("-printout",), "", _ignored("console printing"), "(no effect)"),
    FlagSpec(("-printout_pixel",), "ii", _ignored("debug printout of one pixel"), "(no effect)", "fast slow"),
    FlagSpec(("-progress",), "", _ignored("progress meter: use --quiet"), "(no effect)"),
    FlagSpec(("-noprogress",), "", _ignored("progress meter: use --quiet"), "(no effect)"),
    FlagSpec(("-coherent",), "", _ignored("not used by nanoBragg's still-image loop"), "(no effect)"),
    FlagSpec(("-stol", "-4stol", "-Q"), "p", _ignored("F(stol) tables are parsed but unused by nanoBragg.c"),
             "(no effect)", "file"),
    FlagSpec(("-stolout",), "p", _ignored("F(stol) table output is not written"), "(no effect)", "file"),
    FlagSpec(("-density", "-sample_den"), "f", _ignored("only used for nanoBragg's printed molecule count"),
             "(no effect)", "g/cm³"),
    FlagSpec(("-MW", "-molecular_weight", "-molec"), "f", _ignored("only used for nanoBragg's printout"),
             "(no effect)", "Da"),
    # --- equipoise only ----------------------------------------------------------------------
    FlagSpec(("-mode",), "w", _set("mode"), "mode", "physical|nanobragg", choices=("physical", "nanobragg")),
    FlagSpec(("-memory_budget",), "f", _set("memory_budget_bytes", _memory), "memory_budget_bytes", "MiB", "pos"),
    FlagSpec(("-device",), "w", _set("device"), "device", "cpu|cuda|cuda:N"),
    FlagSpec(("-dtype",), "w", _set("dtype"), "dtype", "float32|float64", choices=("float32", "float64")),
)

FLAG_INDEX: dict[str, FlagSpec] = {name: spec for spec in FLAGS for name in spec.names}
#: flags whose values nanoBragg does not use in the simulation: they only warn
IGNORED_FLAGS = frozenset(n for s in FLAGS if s.target == "(no effect)" for n in s.names)

_KIND_WORDS = {"f": "a number", "i": "an integer", "w": "a word", "p": "a file name", "a": "a number or 'inf'"}
_CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "pos": (lambda x: x > 0, "a positive value"),
    "nonneg": (lambda x: x >= 0, "a value >= 0"),
}
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
#: config field ("section.name") -> the constraint its flag checks ("pos", "nonneg", "vec")
FIELD_CHECKS: dict[str, str] = {}
for _spec in FLAGS:
    if _spec.check:
        FIELD_CHECKS.setdefault(_spec.target, _spec.check)


def violates(check: str, values: Sequence[float]) -> str | None:
    """What ``values`` should have been when they break ``check`` ("pos", "nonneg", "vec"), else None."""
    if check in _CHECKS:
        test, words = _CHECKS[check]
        return None if all(test(v) for v in values) else words
    if check == "vec" and all(v == 0 for v in values):
        return "a non-zero vector"
    return None


def suggest_flag(name: str) -> str | None:
    """The known flag closest to ``name`` (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(name, FLAG_INDEX, n=1, cutoff=0.6)
    if not matches and name.lower() != name:
        matches = [n for n in FLAG_INDEX if n.lower() == name.lower()]
    return matches[0] if matches else None


def _convert(flag: str, kind: str, token: str, spec: FlagSpec) -> Any:
    expected = f"{flag} expects {len(spec.values)} value(s) ({spec.unit or spec.target})"
    if kind == "w":
        if spec.choices and token.lower() not in spec.choices:
            raise InputError(f"expected one of {', '.join(spec.choices)}, found {token!r}", field=flag)
        return token.lower() if spec.choices else token
    if kind == "p":
        if token.startswith("-") and len(token) > 1:
            raise InputError(f"expected a file name, found the flag-like {token!r} ({expected})", field=flag)
        return token
    if kind == "a" and token.lower() in ("inf", "infinity"):
        return "inf"
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"expected {_KIND_WORDS[kind]}, found {token!r} ({expected})", field=flag) from None
    if not math.isfinite(value):
        raise InputError(f"expected a finite number, found {token!r}", field=flag)
    if kind == "i":
        if value != math.floor(value):
            raise InputError(f"expected an integer, found {token!r}", field=flag)
        return int(value)
    return value


def _check(flag: str, spec: FlagSpec, values: list[Any]) -> None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    words = violates(spec.check, numbers)
    if words:
        found = " ".join(f"{v:g}" for v in numbers)
        raise InputError(f"expected {words} ({spec.unit or spec.target}), found {found}", field=flag)
    if flag == "-cell":
        if not all(0 < a < 180 for a in numbers[3:]):
            raise InputError(f"cell angles must lie strictly between 0 and 180 deg, found {numbers[3:]}", field=flag)
    if flag == "-roi" and (numbers[0] > numbers[1] or numbers[2] > numbers[3]):
        raise InputError(f"expected xmin <= xmax and ymin <= ymax, found {' '.join(map(str, numbers))}", field=flag)
    if flag == "-device" and not _DEVICE.match(values[0]):
        raise InputError(f"expected cpu, cuda or cuda:N, found {values[0]!r}", field=flag)


def _split(argv: Sequence[str]) -> list[tuple[str, FlagSpec, list[str]]]:
    """Group argv into (flag, spec, raw value tokens); InputError for unknown flags and stray values."""
    groups = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        spec = FLAG_INDEX.get(flag)
        if spec is None:
            if not flag.startswith("-") or _looks_numeric(flag):
                where = f" after {argv[i - 1]!r}" if i else ""
                raise InputError(f"unexpected value {flag!r}{where}: it belongs to no flag "
                                 "(did the previous flag get too many values?)")
            hint = suggest_flag(flag)
            raise InputError(f"unknown flag {flag!r}" + (f"; did you mean {hint!r}?" if hint else ""), field=flag)
        count = len(spec.values)
        if flag == "-misset" and i + 1 < len(argv) and "rand" in argv[i + 1].lower():
            groups.append((flag, spec, ["random"]))
            i += 2
            continue
        tokens = list(argv[i + 1:i + 1 + count])
        if len(tokens) < count:
            raise InputError(f"expected {count} value(s) ({spec.unit or spec.target}), found {len(tokens)}",
                             field=flag)
        groups.append((flag, spec, tokens))
        i += 1 + count
    return groups


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _apply_header(state: _State, flag: str, path: Path) -> None:
    """Import geometry from an SMV header as nanoBragg does before parsing flags (PHYSICS.md §1.2).

    For ``-mask`` nanoBragg stores ``Ybeam = detsize_s − BEAM_CENTER_Y`` but for ``-img``
    ``Ybeam = BEAM_CENTER_Y``; TWOTHETA is read into a variable nanoBragg never uses, so it is
    not imported. ``-mask`` also sets ``detector.mask`` (non-zero pixels are simulated).
    """
    from equipoise.diffraction.io.smv import read_smv

    header, data = read_smv(path)
    det, crystal, beam = state.cfg.detector, state.cfg.crystal, state.cfg.beam
    det.spixels, det.fpixels = data.shape

    def number(key: str) -> float | None:
        if key not in header:
            return None
        try:
            return float(header[key])
        except ValueError:
            raise InputError(f"expected a number, found {header[key]!r}", path=path, field=key) from None

    if (v := number("PIXEL_SIZE")) is not None:
        det.pixel_mm = v
    for key, name in (("DISTANCE", "distance_mm"), ("CLOSE_DISTANCE", "close_distance_mm"),
                      ("BEAM_CENTER_X", "xbeam_mm"), ("ORGX", "orgx_px"), ("ORGY", "orgy_px")):
        if (v := number(key)) is not None:
            setattr(det, name, v)
    if (v := number("BEAM_CENTER_Y")) is not None:
        det.ybeam_mm = det.pixel_mm * det.spixels - v if flag == "-mask" else v
    if (v := number("WAVELENGTH")) is not None:
        beam.wavelength_A = v
    if (v := number("PHI")) is not None:
        crystal.phi0_deg = v
    if (v := number("OSC_RANGE")) is not None:
        crystal.osc_deg = v
    if flag == "-mask":
        det.mask = data != 0
        det.mask_file = str(path)


def parse_nanobragg_args(argv: Sequence[str], *, base_dir: Path | None = None,
                         config: SimulationConfig | None = None) -> SimulationConfig:
    """Parse nanoBragg flags (``argv`` without the program name) into a :class:`SimulationConfig`.

    Files named by ``-hkl``, ``-mat``, ``-sourcefile``, ``-mask`` and ``-img`` are read relative
    to ``base_dir`` (default: the current directory); output file names are kept as given.
    ``config`` (optional) is a starting configuration that the flags override (used to combine a
    TOML file with flags). Flags without effect in equipoise emit an :class:`IgnoredFlagWarning`.
    Raises InputError for an unknown flag (with the closest known one), a missing, non-numeric
    or nonsensical value, or a malformed input file.
    """
    state = _State(cfg=config if config is not None else SimulationConfig(),
                   base_dir=Path.cwd() if base_dir is None else Path(base_dir))
    groups = _split(list(argv))
    parsed = []
    for flag, spec, tokens in groups:
        values = tokens if tokens == ["random"] and flag == "-misset" else [
            _convert(flag, kind, token, spec) for kind, token in zip(spec.values, tokens)]
        _check(flag, spec, values)
        parsed.append((flag, spec, values))
    for header_flag in ("-mask", "-img"):  # nanoBragg reads -mask, then -img, before the other flags
        paths = [values[0] for flag, spec, values in parsed if spec.names[0] == header_flag]
        if paths:
            _apply_header(state, header_flag, state.path(paths[-1]))
    for flag, spec, values in parsed:
        if flag in IGNORED_FLAGS:
            warnings.warn(f"{flag}: accepted for nanoBragg compatibility but has no effect "
                          f"({spec.apply.__doc__})", IgnoredFlagWarning, stacklevel=2)
        spec.apply(state, values)
    cfg = state.cfg
    if state.n_cells is not None:
        cfg.crystal.n_cells = tuple(state.n_cells)  # type: ignore[assignment]
    if state.size_mm is not None:
        cfg.crystal.size_mm = tuple(state.size_mm)  # type: ignore[assignment]
    if state.rot is not None:
        cfg.detector.rot_deg = tuple(state.rot)  # type: ignore[assignment]
    if state.pivot is not None:
        cfg.detector.pivot = state.pivot  # type: ignore[assignment]
    if state.hkl_path is not None:
        from equipoise.diffraction.io.hkl import read_hkl

        cfg.crystal.hkl = read_hkl(state.hkl_path, default_F=cfg.crystal.default_F)
    return cfg


def split_command_line(text: str) -> list[str]:
    """Split a nanoBragg command line (shell quoting, ``\\`` continuations, ``#`` comments) and drop
    the program name when the first word is not a flag."""
    words = shlex.split(text.replace("\\\n", " "), comments=True)
    if words and not words[0].startswith("-"):
        words = words[1:]
    return words


def parse_command_file(path: Path | str) -> SimulationConfig:
    """Parse a file holding one nanoBragg command line (e.g. a golden ``command.txt``).

    Input files are read relative to the file's folder; ``-hkl NAME`` falls back to ``NAME.gz``.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"cannot read command file: {exc}", path=p) from exc
    try:
        return parse_nanobragg_args(split_command_line(text), base_dir=p.parent)
    except ValueError as exc:
        if isinstance(exc, InputError) and exc.path is not None:
            raise
        raise InputError(str(exc), path=p) from exc
