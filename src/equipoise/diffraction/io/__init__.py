"""File formats of nanoBragg: HKL text, SMV images, raw float32, PGM, .npy, MOSFLM matrices, source lists.

Everything here is numpy-only (no torch), so that the command line stays quick to start. Every
reader raises :class:`equipoise.errors.InputError` naming the file (and line, where there is one)
when the input is malformed.
"""

from equipoise.diffraction.io.hkl import read_hkl
from equipoise.diffraction.io.images import (
    ImageStats,
    image_stats,
    read_npy,
    read_raw_float32,
    write_pgm,
    write_raw_float32,
)
from equipoise.diffraction.io.matrix import read_mosflm_matrix
from equipoise.diffraction.io.smv import read_smv, write_smv
from equipoise.diffraction.io.sourcefile import read_sourcefile

__all__ = [
    "ImageStats",
    "image_stats",
    "read_hkl",
    "read_mosflm_matrix",
    "read_npy",
    "read_raw_float32",
    "read_smv",
    "read_sourcefile",
    "write_pgm",
    "write_raw_float32",
    "write_smv",
]
