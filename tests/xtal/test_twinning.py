"""Twinning statistics: synthetic twins of known law and fraction, 1l2h flagged, 1a0f not."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import gemmi
import numpy as np
import pytest
import torch

from equipoise.cli import main
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.synthetic import random_structure, simulated_reflections, write_mtz
from equipoise.xtal.twinning import HklLookup, twin_laws, twin_statistics, twin_statistics_arrays
from tests.xtal.shared_data import data_file

CELL = gemmi.UnitCell(40.0, 40.0, 56.0, 90, 90, 90)
SG = gemmi.SpaceGroup("P 43")


def _wilson_set(seed: int = 0, d_min: float = 2.2):
    """Unique hkl of CELL/SG to d_min with untwinned Wilson intensities (acentric exponential,
    centric chi^2 with one degree of freedom), mean epsilon * exp(-B s^2 / 2) with B = 20 Å^2."""
    rng = np.random.default_rng(seed)
    ops = SG.operations()
    hkl = np.asarray(gemmi.make_miller_array(CELL, SG, d_min), dtype=np.int64)
    hkl = hkl[~np.asarray(ops.systematic_absences(hkl.astype(np.int32)), dtype=bool)]
    d = np.asarray(CELL.calculate_d_array(hkl.astype(np.int32)))
    centric = np.asarray(ops.centric_flag_array(hkl.astype(np.int32)), dtype=bool)
    epsilon = np.asarray(ops.epsilon_factor_array(hkl.astype(np.int32)), dtype=np.float64)
    mean = 1000.0 * epsilon * np.exp(-20.0 / (2.0 * d ** 2))
    intensity = mean * np.where(centric, rng.standard_normal(len(d)) ** 2, rng.exponential(size=len(d)))
    return hkl, intensity, d, centric, epsilon


def _twin(hkl, intensity, alpha):
    """(1 - alpha) I(h) + alpha I(T h) for the lattice's one twin law T (-h,k,-l for P43)."""
    (op, kind, _), = twin_laws(CELL, SG)
    assert kind == "merohedral"
    mate = HklLookup(hkl, SG).find(hkl @ (np.array(op.rot) // op.DEN))
    mate = np.where(mate >= 0, mate, np.arange(len(hkl)))
    return (1.0 - alpha) * intensity + alpha * intensity[mate], op


def _stats(hkl, intensity, d, centric, epsilon, noise=0.0, seed=1):
    rng = np.random.default_rng(seed)
    sigma = noise * intensity + 0.01 * intensity.mean()
    observed = intensity + sigma * rng.standard_normal(len(d))
    return twin_statistics_arrays(hkl, observed, sigma, d, centric, epsilon, CELL, SG)


def test_lookup_finds_symmetry_and_friedel_mates():
    hkl, *_ = _wilson_set(d_min=4.0)
    look = HklLookup(hkl, SG)
    ops = SG.operations()
    for row in (0, 7, len(hkl) // 2, len(hkl) - 1):
        for op in ops.sym_ops:
            mate = np.array(op.apply_to_hkl([int(x) for x in hkl[row]]))
            assert look.find(np.stack([mate, -mate])).tolist() == [row, row]
    assert look.find(np.array([[0, 0, 1], [999, 0, 0]])).tolist() == [-1, -1]  # absent (43 screw), outside


@pytest.mark.parametrize("alpha", [0.0, 0.15, 0.3, 0.45])
def test_synthetic_twin_fraction(alpha):
    hkl, intensity, d, centric, epsilon = _wilson_set()
    twinned, op = _twin(hkl, intensity, alpha)
    s = _stats(hkl, twinned, d, centric, epsilon, noise=0.05)
    (law,) = s.laws
    assert law.law == op.as_hkl().triplet() == "-h,k,-l" and law.kind == "merohedral"
    assert abs(law.alpha_h - alpha) < 0.03, law
    assert abs(law.alpha_britton - alpha) < 0.03, law
    # <|L|> and <I^2>/<I>^2 fall from 0.5 and 2.0 towards 0.375 and 1.5 (Padilla & Yeates 2003)
    low, high = {0.0: (0.485, 0.515), 0.15: (0.41, 0.44), 0.3: (0.39, 0.41), 0.45: (0.375, 0.395)}[alpha]
    assert low < s.mean_abs_l < high, s
    # I = (1 - a) I1 + a I2 with independent exponential I1, I2: <I^2>/<I>^2 = 2 - 2 a (1 - a)
    assert abs(s.i2_ratio - (2.0 - 2.0 * alpha * (1.0 - alpha))) < 0.05, s  # measured 2.02 1.74 1.57 1.49
    if alpha == 0.0:
        assert not s.twinned and s.verdict().startswith("no sign of twinning")
    else:
        assert s.twinned and "data look twinned" in s.verdict() and "twin law -h,k,-l" in s.verdict()


def test_noise_does_not_fake_twinning():
    """Noisy untwinned data (30 % errors) stay untwinned: pairs are selected on I1 + I2 only."""
    hkl, intensity, d, centric, epsilon = _wilson_set(seed=3)
    s = _stats(hkl, intensity, d, centric, epsilon, noise=0.3)
    assert not s.twinned and abs(s.mean_abs_l - 0.5) < 0.03 and s.laws[0].alpha_h < 0.05


def test_pseudo_merohedral_law():
    """P 21 21 21 with a ~ b (1A0F's cell) has the pseudo-merohedral law -k,-h,-l."""
    laws = twin_laws(gemmi.UnitCell(90.65, 95.39, 51.21, 90, 90, 90), gemmi.SpaceGroup("P 21 21 21"))
    assert [(op.as_hkl().triplet(), kind) for op, kind, _ in laws] == [("-k,-h,-l", "pseudo-merohedral")]
    assert twin_laws(gemmi.UnitCell(90.65, 95.39, 51.21, 90, 90, 90), gemmi.SpaceGroup("P 21 21 21"), 1.0) == []


def test_1l2h_twinned():
    s = twin_statistics(Reflections.from_file(data_file("1l2h.mtz.gz")))
    assert s.source == "intensities" and s.twinned
    assert 0.38 < s.mean_abs_l < 0.42 and s.i2_ratio < 1.8
    (law,) = s.laws
    assert law.law == "-h,k,-l" and law.kind == "merohedral"
    assert 0.28 < law.alpha_h < 0.37 and 0.28 < law.alpha_britton < 0.37
    assert re.match(r"data look twinned: L-test <\|L\|> 0\.4\d, twin law -h,k,-l, estimated fraction 0\.3\d "
                    r"\(H-test\); without a twin model \(refine --twin auto\|on\) R-factors will be high$", s.verdict())


def test_1a0f_not_twinned():
    s = twin_statistics(Reflections.from_file(data_file("1a0f/1a0f_data.mtz")))
    assert s.source == "F^2" and not s.twinned
    assert abs(s.mean_abs_l - 0.5) < 0.02 and abs(s.i2_ratio - 2.0) < 0.15
    assert s.laws[0].law == "-k,-h,-l" and s.laws[0].alpha_h < 0.05
    assert s.verdict().startswith("no sign of twinning")


def test_rfactor_command_reports_twinning(tmp_path, capsys):
    """A model's data twinned by -h,k,-l with fraction 0.3: the log line and summary.json."""
    st = random_structure(40, (20.0, 20.0, 28.0, 90, 90, 90), "P 43", seed=9)
    refl = simulated_reflections(st, d_min=1.8, noise=0.01, k_sol=0.0)
    f2 = refl.f_obs.numpy() ** 2
    (op, _, _), = twin_laws(refl.cell, refl.spacegroup)
    hkl = refl.hkl.numpy()
    mate = HklLookup(hkl, refl.spacegroup).find(hkl @ (np.array(op.rot) // op.DEN))
    twinned = np.sqrt(0.7 * f2 + 0.3 * f2[np.where(mate >= 0, mate, np.arange(len(hkl)))])
    st.write_pdb(str(tmp_path / "m.pdb"))
    write_mtz(replace(refl, f_obs=torch.as_tensor(twinned)), tmp_path / "d.mtz")
    out = tmp_path / "out"
    assert main(["xtal", "rfactor", str(tmp_path / "m.pdb"), str(tmp_path / "d.mtz"), "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "twinning: data look twinned: L-test <|L|>" in text and "R-factors will be high" in text
    assert "data look twinned" in (out / "run.log").read_text()
    twin = json.loads((out / "summary.json").read_text())["twinning"]
    assert twin["twinned"] and twin["source"] == "F^2" and twin["laws"][0]["law"] == "-h,k,-l"
    assert abs(twin["laws"][0]["alpha_h"] - 0.3) < 0.06
    fit = twin["twin_model"]  # the true model with its fitted twin fraction explains the data
    assert abs(fit["alpha"] - 0.3) < 0.02 and fit["r_work"] < 0.5 * fit["r_work_untwinned"], fit
    assert "with a twin model (law -h,k,-l, fraction 0.3" in text


def test_5e5z_uses_its_intensities_and_is_not_twinned():
    refl = Reflections.from_file(data_file("5e5z.mtz.gz"))
    assert refl.labels[0] == "FP" and refl.i_obs is not None and refl.i_obs.shape == refl.f_obs.shape
    s = twin_statistics(refl)
    assert s.source == "intensities" and s.laws == [] and not s.twinned
