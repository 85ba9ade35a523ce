"""``equipoise diffraction ...`` sub-commands.

``equipoise diffraction simulate <nanoBragg flags>`` runs any nanoBragg command line unchanged
(after replacing the program name) and writes the files nanoBragg would: ``-floatfile``
(default ``floatimage.bin``), ``-intfile`` (``intimage.img``), ``-pgmfile`` (``image.pgm``, unless
``-nopgm``) and ``-noisefile`` (``noiseimage.img``, unless ``-nonoise``), in the current directory.
``--config FILE.toml`` starts from a TOML description; flags given as well override it.

Registration imports neither torch nor the simulator, so ``equipoise --help`` stays fast; the
handlers import them. Refinement commands register themselves through
``equipoise.diffraction.refine_cli.register(subparsers)`` when that module exists.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REFINE_MODULE = "equipoise.diffraction.refine_cli"

_EPILOG = """\
FLAGS are nanoBragg's, with its names, values and units, e.g.
  equipoise diffraction simulate -cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 \\
      -N 5 -distance 100 -detpixels 256 -pixel 0.4 -floatfile img.bin -nonoise
Equipoise-only flags: -mode physical|nanobragg, -mosaic_sampling nanobragg|quadrature,
-memory_budget MB, -device cpu|cuda, -dtype float32|float64. See docs/diffraction.md.
"""


class _ActionParser(argparse.ArgumentParser):
    """Parser of one ``diffraction`` action; with ``raw_flags`` set, every token that is not one of
    its own ``--`` options (or -h) is collected verbatim into that attribute, so that nanoBragg's
    single-dash flags (``-cell``, ``-N``, negative numbers ...) reach our own parser untouched."""

    def __init__(self, *args: Any, raw_flags: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw_flags = raw_flags

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self.raw_flags is None or args is None:
            return super().parse_known_args(args, namespace)
        own: list[str] = []
        raw: list[str] = []
        tokens = list(args)
        i = 0
        while i < len(tokens):
            token = tokens[i]
            name = token.split("=", 1)[0]
            if token in ("-h", "--help") or (token.startswith("--") and name in self._option_string_actions):
                own.append(token)
                action = self._option_string_actions.get(name)
                if action is not None and action.nargs != 0 and "=" not in token and i + 1 < len(tokens):
                    own.append(tokens[i + 1])
                    i += 1
            elif token.startswith("--") and token != "--":
                self.error(f"unknown option {token!r} (nanoBragg flags take a single dash)")
            elif token != "--":
                raw.append(token)
            i += 1
        ns, extra = super().parse_known_args(own, namespace)
        setattr(ns, self.raw_flags, raw)
        return ns, extra


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``diffraction`` command and its sub-commands to ``subparsers``."""
    parser = subparsers.add_parser("diffraction", help="nanoBragg-compatible still-image simulator and refinement",
                                   description="nanoBragg-compatible differentiable still-image simulator.")
    actions = parser.add_subparsers(dest="diffraction_command", metavar="ACTION", parser_class=_ActionParser)
    actions.required = True
    sim = actions.add_parser(
        "simulate", raw_flags="flags", help="simulate an image from a nanoBragg command line",
        description="Simulate a still diffraction image from nanoBragg flags and write nanoBragg's files.",
        usage="equipoise diffraction simulate [--config FILE.toml] [--quiet] [FLAGS ...]",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("--config", metavar="FILE.toml", help="TOML simulation description (flags override it)")
    sim.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    sim.add_argument("--allow-zero-image", action="store_true",
                     help="write an image that is zero everywhere (no -hkl and no -default_F, or nothing "
                          "diffracts) with a warning instead of stopping with an error")
    sim.set_defaults(handler=_simulate)
    if importlib.util.find_spec(REFINE_MODULE) is not None:
        importlib.import_module(REFINE_MODULE).register(actions)


def _simulate(args: argparse.Namespace) -> int:
    run_simulation(list(args.flags), config_file=None if args.config is None else Path(args.config),
                   quiet=bool(args.quiet), allow_zero=bool(args.allow_zero_image))
    return 0


def load_config(flags: Sequence[str], config_file: Path | None = None, *,
                base_dir: Path | None = None) -> tuple[Any, list[str]]:
    """Config from a TOML file and/or nanoBragg flags (flags win); returns (config, warning texts)."""
    from equipoise.diffraction.flags import parse_nanobragg_args
    from equipoise.diffraction.toml_config import load_toml_config
    from equipoise.errors import InputError

    if config_file is None and not flags:
        raise InputError("no flags given: pass nanoBragg flags (e.g. -cell ... -default_F 100 -lambda 1) "
                         "or --config FILE.toml")
    start = load_toml_config(config_file) if config_file is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = parse_nanobragg_args(flags, base_dir=base_dir, config=start)
    return config, [str(w.message) for w in caught]


def _resolve_runtime(config: Any) -> tuple[Any, Any]:
    """(torch dtype, torch device) from ``-dtype``/``-device`` (defaults float64, cpu)."""
    import torch

    from equipoise.errors import InputError

    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    device = torch.device(config.device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA device is available", field="-device")
    return dtype, device


def _output_paths(config: Any) -> dict[str, str]:
    """Files to write, nanoBragg's defaults where not named (PHYSICS.md §1.12)."""
    out = config.output
    paths = {"float": out.floatfile or "floatimage.bin", "int": out.intfile or "intimage.img"}
    if out.write_pgm:
        paths["pgm"] = out.pgmfile or "image.pgm"
    if out.write_noise:
        paths["noise"] = out.noisefile or "noiseimage.img"
    return paths


def _computed_pixels(geom: Any) -> Any:
    """(slow, fast) bool numpy array of the pixels nanoBragg simulates: inside the ROI and the mask."""
    import numpy as np

    fmin, fmax, smin, smax = geom.roi
    selected = np.zeros((geom.spixels, geom.fpixels), dtype=bool)
    selected[smin:smax + 1, fmin:fmax + 1] = True
    if geom.mask is not None:
        selected &= geom.mask.detach().cpu().numpy().astype(bool)
    return selected


def _vec(t: Any) -> str:
    return " ".join(f"{float(x):.6g}" for x in t)


def _print_setup(console: Any, config: Any, geom: Any, sources: Any, simulator: Any) -> None:
    """nanoBragg-like summary of the resolved geometry and sources."""
    v = geom.values
    c = config.crystal
    console.print(f"{geom.convention} convention, pivot {geom.pivot}, mode {config.mode}")
    if c.cell is not None:
        console.print("Unit Cell: " + " ".join(f"{x:g}" for x in c.cell))
    if c.hkl is not None:
        console.print(f"structure factors from {c.hkl.source}: h {c.hkl.lower[0]}..{c.hkl.upper[0]}, "
                      f"k {c.hkl.lower[1]}..{c.hkl.upper[1]}, l {c.hkl.lower[2]}..{c.hkl.upper[2]} "
                      f"(all others = {c.default_F:g})")
    else:
        console.print(f"all structure factors = {c.default_F:g}")
    wl = sources.wavelength.detach().cpu()
    console.print(f"  created a total of {len(wl)} sources, wavelength {float(wl.min()) * 1e10:.6g}"
                  f"..{float(wl.max()) * 1e10:.6g} A")
    console.print(f"  distance={v['distance']:.6g} close_distance={v['close_distance']:.6g} "
                  f"detsize={v['detsize_f']:.6g}x{v['detsize_s']:.6g} pixel={geom.pixel_size * 1000:.6g} mm "
                  f"({geom.fpixels}x{geom.spixels} pixels)")
    console.print(f"  sensor in {geom.n_layers} layer(s) of {geom.layer_step * 1e6:.6g} um, mu={geom.mu:.6g} 1/m")
    console.print(f"  Xbeam={v['Xbeam']:.6g} Ybeam={v['Ybeam']:.6g}  Fbeam={v['Fbeam']:.6g} Sbeam={v['Sbeam']:.6g} mm")
    console.print(f"  Xclose={v['Xclose']:.6g} Yclose={v['Yclose']:.6g}  Fclose={v['Fclose']:.6g} "
                  f"Sclose={v['Sclose']:.6g} mm  ORGX={v['ORGX']:.6g} ORGY={v['ORGY']:.6g} px")
    console.print(f"  DIRECTION_OF_DETECTOR_X-AXIS= {_vec(geom.fdet)}")
    console.print(f"  DIRECTION_OF_DETECTOR_Y-AXIS= {_vec(geom.sdet)}")
    console.print(f"  DIRECTION_OF_DETECTOR_Z-AXIS= {_vec(geom.odet)}")
    console.print(f"  INCIDENT_BEAM_DIRECTION= {_vec(geom.beam)}")
    console.print(f"  spindle ROTATION_AXIS= {_vec(geom.spindle)}")
    console.print(f"  POLARIZATION_AXIS= {_vec(geom.polar)}")
    console.print(f"  pix0_vector= {_vec(geom.pix0)} m")
    fmin, fmax, smin, smax = geom.roi
    console.print(f"  roi: {fmin} <= x <= {fmax} && {smin} <= y <= {smax}")
    console.print(f"  {simulator.oversample}x{simulator.oversample} pixel oversample steps")


def run_simulation(flags: Sequence[str], *, config_file: Path | None = None, quiet: bool = False,
                   allow_zero: bool = False) -> dict[str, str]:
    """Simulate the image a nanoBragg command line describes and write its files.

    ``flags`` excludes the program name; input files are read relative to the current directory,
    outputs written there. Returns {"float"|"int"|"pgm"|"noise": path written}. Before any work:
    every output path must be writable, and an image that would be zero everywhere (no ``-hkl``
    and ``-default_F`` 0) is an InputError; ``allow_zero`` makes both zero-image cases (that one,
    and an image that comes out all zero) a warning with the reason instead.
    """
    import numpy as np
    import torch
    from rich.console import Console

    from equipoise.diffraction import io
    from equipoise.diffraction.geometry import detector_geometry, smv_header_fields
    from equipoise.diffraction.noise import int_image, intfile_scale, noise_image
    from equipoise.diffraction.run_settings import check_output_file
    from equipoise.diffraction.simulate import Simulator
    from equipoise.errors import InputError
    from equipoise.diffraction.sources import beam_sources

    console = Console(quiet=quiet, highlight=False)
    errors = Console(stderr=True, highlight=False)
    config, notes = load_config(flags, config_file)
    det = config.detector
    if det.oversample_thick or det.oversample_polar or det.oversample_omega:
        notes.append("-oversample_thick/-oversample_polar/-oversample_omega are recorded but nanoBragg's "
                     "running-sum treatment is not reproduced (physical mode evaluates every factor per subpixel)")
    for note in notes:
        errors.print(f"warning: {note}")
    paths = _output_paths(config)
    for kind, path in paths.items():
        check_output_file(path, f"-{kind}file")
    if config.crystal.hkl is None and not config.crystal.default_F:
        reason = ("neither -hkl nor -default_F is given: every structure factor is 0, so the image would be "
                  "zero everywhere; give -hkl FILE or -default_F F (electrons)")
        if not allow_zero:
            raise InputError(reason, field="-default_F")
        errors.print(f"warning: {reason} (written anyway: --allow-zero-image)")
    dtype, device = _resolve_runtime(config)
    with torch.no_grad():
        geom = detector_geometry(config, dtype=dtype, device=device)
        sources = beam_sources(config, geom, dtype=dtype, device=device)
        simulator = Simulator(config, dtype=dtype, device=device)
        console.print("equipoise diffraction simulate (nanoBragg-compatible)")
        _print_setup(console, config, geom, sources, simulator)
        # the spinner only on a terminal (importing it costs ~0.1 s of start-up)
        busy = (console.status(f"simulating {geom.spixels}x{geom.fpixels} pixels on {device} ...", spinner="dots")
                if console.is_terminal and not quiet else contextlib.nullcontext())
        with busy:
            image = simulator().detach().cpu().numpy().astype(np.float32)
    computed = _computed_pixels(geom)
    stats = io.image_stats(image, computed)
    if not np.any(image) and config.crystal.default_F:
        reason = "the simulated image is zero everywhere (no Bragg spot or background reaches a computed pixel)"
        if not allow_zero:
            raise InputError(f"{reason}; check the geometry, -roi and -mask, or pass --allow-zero-image",
                             field="image")
        errors.print(f"warning: {reason} (written anyway: --allow-zero-image)")
    slow_i, fast_i = stats.max_index
    console.print(f"max_I = {stats.max_I:g}  at pixel (fast {fast_i}, slow {slow_i})")
    console.print(f"mean= {stats.mean:g} rms= {stats.rms:g} rmsd= {stats.rmsd:g}")

    io.write_raw_float32(paths["float"], image)
    console.print(f"writing {paths['float']} as {image.size} 4-byte floats")
    scale = intfile_scale(stats.max_I, config.output.scale)
    header = smv_header_fields(config, geom)
    console.print(f"intfile_scale = {scale:g}")
    io.write_smv(paths["int"], int_image(image, scale, config.output.adc), header)
    console.print(f"writing {paths['int']} as 2-byte integers")
    if "pgm" in paths:
        pgm_scale = config.output.pgmscale or io.images.pgm_scale_default(stats)
        io.write_pgm(paths["pgm"], image, pgm_scale)
        console.print(f"writing {paths['pgm']} as 1-byte integers (pgm_scale = {pgm_scale:g})")
    if "noise" in paths:
        noisy = noise_image(image, seed=config.output.seed, adc=config.output.adc)
        io.write_smv(paths["noise"], noisy.pixels, header)
        console.print(f"writing {paths['noise']} as 2-byte integers (seed {noisy.seed}, "
                      f"{noisy.overloads} overloads)")
    return paths
