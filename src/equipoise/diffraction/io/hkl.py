"""nanoBragg's ``-hkl`` structure-factor file: text lines ``h k l F`` (P1, no symmetry expansion).

Differs from nanoBragg on purpose: nanoBragg's ``fscanf`` loop stops silently at the first line
that is not four numbers (PHYSICS.md §1.5); we accept ``#`` comments and blank lines and raise an
:class:`InputError` naming the file and line for any other malformed line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from equipoise.diffraction.config import HKLGrid
from equipoise.diffraction.io._text import numeric_lines, parse_floats, resolve_existing
from equipoise.errors import InputError


def read_hkl(path: str | Path, default_F: float = 0.0) -> HKLGrid:
    """Read an ``h k l F`` file (plain or ``.gz``; ``NAME`` falls back to ``NAME.gz``) into a dense grid.

    Grid points not listed hold ``default_F`` (electrons), as nanoBragg fills its ``Fhkl`` array
    (PHYSICS.md §1.5). A reflection listed twice keeps its last value, as in nanoBragg.
    Returns an :class:`HKLGrid` whose ``values`` has shape (nh, nk, nl), float64.
    """
    source = resolve_existing(path)
    rows: dict[tuple[int, int, int], float] = {}
    for line, tokens in numeric_lines(source):
        if len(tokens) != 4:
            raise InputError(f"expected 4 columns 'h k l F', found {len(tokens)}: {' '.join(tokens)!r}",
                             path=source, line=line)
        h, k, l, F = parse_floats(tokens, path=source, line=line, what="numbers 'h k l F'")
        if not all(x == math.floor(x) for x in (h, k, l)):
            raise InputError(f"Miller indices must be integers, found {tokens[0]} {tokens[1]} {tokens[2]}",
                             path=source, line=line)
        if not math.isfinite(F):
            raise InputError(f"structure factor must be finite, found {tokens[3]}", path=source, line=line)
        rows[(int(h), int(k), int(l))] = F
    if not rows:
        raise InputError("no reflections found (expected lines 'h k l F')", path=source)
    hkl = np.array(list(rows), dtype=np.int64)
    amplitudes = np.array(list(rows.values()), dtype=np.float64)
    lower = hkl.min(axis=0)
    shape = tuple(int(n) for n in hkl.max(axis=0) - lower + 1)
    values = np.full(shape, float(default_F), dtype=np.float64)
    idx = hkl - lower
    values[idx[:, 0], idx[:, 1], idx[:, 2]] = amplitudes
    return HKLGrid(lower=(int(lower[0]), int(lower[1]), int(lower[2])), values=values, source=str(source))
