"""nanoBragg's ran1 generator and the mosaic / random-misset draws (PHYSICS.md, random numbers)."""

import numpy as np

from equipoise.diffraction.rng import Ran1, mosaic_draws, random_misset_umat, umat_to_misset_deg


def test_ran1_first_values_are_park_miller_with_shuffle():
    rng = Ran1(-1)
    vals = [rng() for _ in range(1000)]
    assert all(0.0 < v < 1.0 for v in vals)
    assert abs(np.mean(vals) - 0.5) < 0.03
    # same seed, same sequence; the state is per object
    again = Ran1(-1)
    assert [again() for _ in range(5)] == vals[:5]
    # values are single precision
    assert all(float(np.float32(v)) == v for v in vals[:20])


def test_mosaic_angles_match_nanobragg_listing():
    # PHYSICS.md §1.10: spread 0.5 deg, seed -12345678 -> these domain angles (deg)
    _, fracs = mosaic_draws(10, -12345678)
    expected = [0, 0.474, 0.400, 0.499, 0.495, 0.321, 0.487, 0.498, 0.454, 0.395]
    assert np.allclose(np.round(fracs * 0.5, 3), expected, atol=1e-9)


def test_mosaic_axes_are_unit_and_first_domain_identity():
    axes, fracs = mosaic_draws(50, -777)
    assert np.allclose(np.linalg.norm(axes, axis=1), 1.0)
    assert fracs[0] == 0.0 and np.all(fracs <= 1.0) and np.all(fracs[1:] > 0)


def test_random_misset_is_a_rotation_and_decomposes():
    u = random_misset_umat(1234)
    assert np.allclose(u @ u.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(u), 1.0)
    rx, ry, rz = np.radians(umat_to_misset_deg(u))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    assert np.allclose(mz @ my @ mx, u, atol=1e-10)
