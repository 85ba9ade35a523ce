"""nanoBragg's random numbers: Numerical Recipes ``ran1`` and the draws built on it.

``ran1`` is the Park-Miller minimal-standard generator with a Bays-Durham shuffle table, exactly
as described in PHYSICS.md ("Random numbers"): IA=16807, IM=2147483647, IQ=127773, IR=2836,
NTAB=32, NDIV=1+(IM-1)/NTAB, output AM*iy rounded to single precision and capped at
RNMX = 1-1.2e-7. A non-positive state (re)loads the shuffle table after 8 warm-up steps.

The draws are made once, in plain Python (a few dozen numbers), and returned as NumPy arrays;
the simulator turns them into tensors of the requested dtype/device. They are *fixed* inputs:
the mosaic domain matrices are a differentiable function of the spread with these draws held
constant (``equipoise.diffraction.crystal.mosaic_matrices``).
"""

from __future__ import annotations

import numpy as np

_IA = 16807
_IM = 2147483647
_IQ = 127773
_IR = 2836
_NTAB = 32
_NDIV = 1 + (_IM - 1) // _NTAB
_AM = 1.0 / _IM
_RNMX = float(np.float32(1.0 - 1.2e-7))  # C compares the float temp with the double RNMX

DEFAULT_MOSAIC_SEED = -12345678  # nanoBragg's default mosaic_seed state (PHYSICS.md §1.10)


def _c_div(a: int, b: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


class Ran1:
    """Numerical Recipes ``ran1`` with its state (``idum``, ``iy``, shuffle table ``iv``).

    ``Ran1(seed)`` starts from the state ``seed`` as nanoBragg passes it (already negated, e.g.
    -12345678). A fresh object has ``iy == 0``, so the first call always loads the table, as the
    C static variables do on the first call of a process.
    """

    def __init__(self, seed: int) -> None:
        self.idum = int(seed)
        self.iy = 0
        self.iv = [0] * _NTAB

    def _step(self) -> None:
        # Schrage's method for IA*idum mod IM without overflow
        k = _c_div(self.idum, _IQ)
        self.idum = _IA * (self.idum - k * _IQ) - _IR * k
        if self.idum < 0:
            self.idum += _IM

    def __call__(self) -> float:
        """Next uniform deviate in (0, 1), rounded to single precision (returned as a Python float)."""
        if self.idum <= 0 or self.iy == 0:
            self.idum = 1 if -self.idum < 1 else -self.idum
            for j in range(_NTAB + 7, -1, -1):
                self._step()
                if j < _NTAB:
                    self.iv[j] = self.idum
            self.iy = self.iv[0]
        self._step()
        j = self.iy // _NDIV
        self.iy = self.iv[j]
        self.iv[j] = self.idum
        temp = float(np.float32(_AM * self.iy))
        return _RNMX if temp > 1.0 - 1.2e-7 else temp


def spherical_cap_draw(rng: Ran1) -> tuple[np.ndarray, float]:
    """One draw of nanoBragg's ``mosaic_rotation_umat``: (unit axis (3,), angle fraction).

    Three deviates r1, r2, r3 = 2*ran1-1 (in this order); axis
    v = (sqrt(1-r2²) sin(πr1), sqrt(1-r2²) cos(πr1), r2); the rotation angle is
    ``spread * frac`` with ``frac = (1-r3²)^(1/3)`` evaluated in single precision (C ``powf``).
    """
    r1 = 2.0 * rng() - 1.0
    r2 = 2.0 * rng() - 1.0
    r3 = 2.0 * rng() - 1.0
    xyrad = np.sqrt(1.0 - r2 * r2)
    axis = np.array([xyrad * np.sin(np.pi * r1), xyrad * np.cos(np.pi * r1), r2], dtype=np.float64)
    frac = float(np.power(np.float32(1.0 - r3 * r3), np.float32(1.0 / 3.0), dtype=np.float32))
    return axis, frac


def mosaic_draws(n_domains: int, seed: int = DEFAULT_MOSAIC_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Axes (n, 3) and angle fractions (n,) of nanoBragg's mosaic domains.

    ``seed`` is the generator state as nanoBragg holds it (``-mosaic_seed N`` is stored as -N).
    Domain 0 is the identity (fraction 0) although its three draws are still consumed
    (PHYSICS.md §1.10). Domain i's rotation is ``spread_rad * frac[i]`` about ``axes[i]``.
    """
    rng = Ran1(seed)
    axes = np.zeros((n_domains, 3), dtype=np.float64)
    fracs = np.zeros(n_domains, dtype=np.float64)
    for i in range(n_domains):
        axes[i], fracs[i] = spherical_cap_draw(rng)
    axes[0] = (0.0, 0.0, 1.0)
    fracs[0] = 0.0
    return axes, fracs


def rodrigues_matrix_np(axis: np.ndarray, angle: float) -> np.ndarray:
    """Active right-handed rotation matrix by ``angle`` (rad) about unit ``axis`` (NumPy, (3, 3))."""
    v = np.asarray(axis, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return c * np.eye(3) + s * vx + (1.0 - c) * np.outer(v, v)


def random_misset_umat(seed: int) -> np.ndarray:
    """The orientation matrix of ``-misset random`` (3, 3), applied to the reciprocal vectors.

    nanoBragg calls ``mosaic_rotation_umat(90.0, umat, &seed)`` with ``seed = -|misset_seed|``;
    the 90 is consumed as *radians* (documented bug C-IMPL-BUG-002), so the angle is
    ``float32(90) * frac`` radians.
    """
    axis, frac = spherical_cap_draw(Ran1(-abs(int(seed))))
    angle = float(np.float32(90.0) * np.float32(frac))
    return rodrigues_matrix_np(axis, angle)


def umat_to_misset_deg(umat: np.ndarray) -> tuple[float, float, float]:
    """Angles (rx, ry, rz) in degrees with ``umat = Rz(rz)·Ry(ry)·Rx(rx)`` (for printing/reuse)."""
    u = np.asarray(umat, dtype=np.float64)
    ry = np.arcsin(np.clip(-u[2, 0], -1.0, 1.0))
    rx = np.arctan2(u[2, 1], u[2, 2])
    rz = np.arctan2(u[1, 0], u[0, 0])
    return tuple(float(np.degrees(x)) for x in (rx, ry, rz))  # type: ignore[return-value]
