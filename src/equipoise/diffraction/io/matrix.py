"""MOSFLM orientation matrix files (nanoBragg ``-mat``).

The first three non-blank lines hold the A matrix, one row each: ``a*_x b*_x c*_x`` /
``a*_y b*_y c*_y`` / ``a*_z b*_z c*_z`` in Å⁻¹ multiplied by the wavelength (MOSFLM's
dimensionless convention; nanoBragg divides by λ, PHYSICS.md §1.10). Any further lines (U matrix,
cell, missetting angles) are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from equipoise.diffraction.io._text import numeric_lines, parse_floats
from equipoise.errors import InputError


def read_mosflm_matrix(path: str | Path) -> np.ndarray:
    """Return the (3, 3) A matrix of a MOSFLM ``.mat`` file; rows as in the file (x, y, z components)."""
    rows: list[list[float]] = []
    for line, tokens in numeric_lines(path):
        if len(rows) == 3:
            break
        if len(tokens) < 3:
            raise InputError(f"expected 3 numbers on matrix row {len(rows) + 1}, found {len(tokens)}",
                             path=path, line=line)
        rows.append(parse_floats(tokens[:3], path=path, line=line, what="a matrix element"))
    if len(rows) < 3:
        raise InputError(f"expected 3 rows of the A matrix, found {len(rows)}", path=path)
    matrix = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-300:
        raise InputError("A matrix is singular or not finite", path=path)
    return matrix
