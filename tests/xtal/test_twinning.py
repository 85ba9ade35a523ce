"""Twinning statistics: a synthetic merohedral twin is detected with its fraction; 1l2h is too."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from equipoise.xtal.reflections import Reflections
from equipoise.xtal.synthetic import random_structure, simulated_reflections
from equipoise.xtal.twinning import twin_statistics
from tests.xtal.shared_data import data_file


def _stats(refl, intensity):
    return twin_statistics(refl.hkl.numpy(), intensity, refl.d.numpy(), refl.centric.numpy(), refl.cell,
                           refl.spacegroup)


def test_synthetic_twin_fraction():
    st = random_structure(40, (20.0, 20.0, 28.0, 90, 90, 90), "P 43", seed=9)
    refl = simulated_reflections(st, d_min=1.8, noise=0.0, k_sol=0.0)
    intensity = refl.f_obs.numpy() ** 2
    untwinned = _stats(refl, intensity)
    assert not untwinned.twinned and abs(untwinned.mean_abs_l - 0.5) < 0.05
    law = gemmi.find_twin_laws(refl.cell, refl.spacegroup, 3.0, False)[0]
    asu = gemmi.ReciprocalAsu(refl.spacegroup)
    ops = refl.spacegroup.operations()
    index = {tuple(h): i for i, h in enumerate(refl.hkl.tolist())}
    partner = np.array([index.get(tuple(asu.to_asu(law.apply_to_hkl(h), ops)[0]), i)
                        for i, h in enumerate(refl.hkl.tolist())])
    alpha = 0.3
    twinned = _stats(refl, (1 - alpha) * intensity + alpha * intensity[partner])
    assert twinned.twinned
    assert abs(twinned.laws[0]["alpha_h"] - alpha) < 0.05
    assert twinned.mean_abs_l < untwinned.mean_abs_l


@pytest.mark.slow
def test_1l2h_twin_detected():
    refl = Reflections.from_file(data_file("1l2h.mtz.gz"))
    report = _stats(refl, refl.f_obs.numpy() ** 2)
    assert report.twinned
    law = max(report.laws, key=lambda t: t["alpha_h"])
    assert law["law"] == "-h,k,-l" and 0.25 < law["alpha_h"] < 0.4
    assert "TWINNING LIKELY" in report.summary()
