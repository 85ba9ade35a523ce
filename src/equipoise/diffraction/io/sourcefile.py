"""nanoBragg ``-sourcefile``: one source per line, columns ``X Y Z weight λ``.

X Y Z is the source position (m; only its direction matters, the incident direction is
``-position/|position|``), weight is read but ignored by nanoBragg, λ is in metres as nanoBragg reads it and prints its own
source list (``1e-10`` for 1 Å; PHYSICS.md §1.8). A λ above 1e-6 m cannot be an X-ray wavelength in
metres (it is almost certainly Å): it is rejected rather than silently simulated at a 1 m wavelength.
Missing trailing columns are NaN here; the simulator substitutes nanoBragg's defaults
(−10 m·b̂, 1, λ0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from equipoise.diffraction.io._text import numeric_lines, parse_floats
from equipoise.errors import InputError

COLUMNS = ("X", "Y", "Z", "weight", "lambda")
MAX_WAVELENGTH_M = 1e-6  # 1 µm: anything longer is not an X-ray wavelength in metres


def read_sourcefile(path: str | Path) -> np.ndarray:
    """Return an (n, 5) float64 array of ``X Y Z weight λ`` (m, m, m, −, m); NaN where a column is missing."""
    rows = []
    for line, tokens in numeric_lines(path):
        if len(tokens) > len(COLUMNS):
            raise InputError(f"expected at most 5 columns 'X Y Z weight lambda', found {len(tokens)}",
                             path=path, line=line)
        values = parse_floats(tokens, path=path, line=line, what="numbers 'X Y Z weight lambda'")
        rows.append(values + [float("nan")] * (len(COLUMNS) - len(values)))
    if not rows:
        raise InputError("no sources found (expected lines 'X Y Z weight lambda')", path=path)
    sources = np.array(rows, dtype=np.float64)
    lam = sources[:, 4]
    if np.any(lam[~np.isnan(lam)] <= 0):
        raise InputError("source wavelengths (column 5, metres) must be positive", path=path)
    too_long = np.flatnonzero(lam > MAX_WAVELENGTH_M)
    if too_long.size:
        raise InputError(f"source wavelength {lam[too_long[0]]:g} in column 5 is not in metres "
                         f"(expected e.g. 1e-10 for 1 Å, as nanoBragg); convert Å to m", path=path,
                         line=int(too_long[0]) + 1, field="lambda")
    return sources
