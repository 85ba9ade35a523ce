"""TOML files -> :class:`SimulationConfig`.

Sections ``[crystal]``, ``[beam]``, ``[detector]``, ``[output]`` hold the fields of the config
dataclasses under their own names and units (``wavelength_A``, ``distance_mm`` ...); the top level
holds ``water_um``, ``mode``, ``memory_budget_bytes``, ``device`` and ``dtype``. File-valued
fields take a path relative to the TOML file: ``crystal.hkl`` (``h k l F`` file),
``crystal.a_matrix`` (MOSFLM ``.mat``, or a 3x3 array), ``beam.sources`` (source file, or rows of
``X Y Z weight λ``), ``detector.mask`` (SMV image or ``.npy``, non-zero = simulate). Unknown keys,
wrong types and nonsensical values are InputErrors naming the key and the file.

Example::

    mode = "physical"
    [crystal]
    cell = [100, 100, 100, 90, 90, 90]
    n_cells = [5, 5, 5]
    default_F = 100
    [beam]
    wavelength_A = 6.2
    [detector]
    distance_mm = 100
    fpixels = 256
    spixels = 256
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

from equipoise.diffraction import config as config_module
from equipoise.diffraction.config import HKLGrid, SimulationConfig
from equipoise.diffraction.flags import FIELD_CHECKS, violates
from equipoise.errors import InputError

SECTIONS = ("crystal", "beam", "detector", "output")


def _file_field(key: str, value: Any, base: Path, where: Path) -> Any:
    """Read the file-valued fields (paths relative to the TOML file's folder)."""
    from equipoise.diffraction import io

    if key == "crystal.a_matrix":
        if isinstance(value, str):
            return io.read_mosflm_matrix(base / value)
        matrix = np.asarray(value, dtype=np.float64)
        if matrix.shape != (3, 3):
            raise InputError(f"expected a 3x3 array or a .mat file name, found shape {matrix.shape}",
                             path=where, field=key)
        return matrix
    if key == "beam.sources":
        if isinstance(value, str):
            return io.read_sourcefile(base / value)
        rows = [list(map(float, r)) + [float("nan")] * (5 - len(r)) for r in value]
        if not rows or any(len(r) != 5 for r in rows):
            raise InputError("expected rows of at most 5 numbers 'X Y Z weight lambda'", path=where, field=key)
        return np.array(rows, dtype=np.float64)
    if key == "detector.mask":
        if not isinstance(value, str):
            raise InputError("expected the file name of an SMV image or .npy array", path=where, field=key)
        p = base / value
        data = io.read_npy(p) if p.suffix == ".npy" else io.read_smv(p)[1]
        return np.asarray(data) != 0
    raise AssertionError(key)  # pragma: no cover


def _convert(key: str, hint: Any, value: Any, where: Path) -> Any:
    """Check ``value`` against the field's type ``hint`` and convert lists to tuples."""
    def fail(expected: str) -> InputError:
        return InputError(f"expected {expected}, found {value!r}", path=where, field=key)

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _convert(key, options[0], value, where)
        if all(a in (int, float) for a in options):
            return _convert(key, float, value, where)
        raise AssertionError(f"unsupported type of {key}: {hint}")  # pragma: no cover
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise fail("one of " + ", ".join(map(repr, choices)))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list) or len(value) != len(args):
            raise fail(f"a list of {len(args)} numbers")
        return tuple(_convert(key, a, v, where) for a, v in zip(args, value))
    raise AssertionError(f"unsupported type of {key}: {hint}")  # pragma: no cover


def _fill(obj: Any, prefix: str, table: dict[str, Any], base: Path, where: Path) -> None:
    hints = typing.get_type_hints(type(obj), vars(config_module))
    names = {f.name for f in dataclasses.fields(obj)} - set(SECTIONS)
    for name, value in table.items():
        key = f"{prefix}{name}"
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"unknown key {key!r}{hint}", path=where, field=key)
        if key in ("crystal.a_matrix", "beam.sources", "detector.mask"):
            converted = _file_field(key, value, base, where)
        elif key == "crystal.hkl":
            if not isinstance(value, str):
                raise InputError("expected the file name of an 'h k l F' file", path=where, field=key)
            converted = value  # read after default_F is known
        else:
            converted = _convert(key, hints[name], value, where)
            check = FIELD_CHECKS.get(key, "")
            numbers = [v for v in (converted if isinstance(converted, tuple) else (converted,))
                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if (words := violates(check, numbers)) is not None:
                raise InputError(f"expected {words}, found {value!r}", path=where, field=key)
        setattr(obj, name, converted)


def load_toml_config(path: str | Path) -> SimulationConfig:
    """Read a TOML simulation description into a :class:`SimulationConfig` (see the module docstring)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"cannot read TOML file: {exc}", path=p) from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"malformed TOML: {exc}", path=p) from exc
    cfg = SimulationConfig()
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    for section in SECTIONS:
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise InputError(f"expected a [{section}] table, found {table!r}", path=p, field=section)
        _fill(getattr(cfg, section), f"{section}.", table, p.parent, p)
    _fill(cfg, "", top, p.parent, p)
    hkl = cfg.crystal.hkl
    if isinstance(hkl, str):
        from equipoise.diffraction.io.hkl import read_hkl

        cfg.crystal.hkl = read_hkl(p.parent / hkl, default_F=cfg.crystal.default_F)
    elif hkl is not None and not isinstance(hkl, HKLGrid):  # pragma: no cover
        raise AssertionError(hkl)
    return cfg
