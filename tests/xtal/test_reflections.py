"""Reflections: column detection, --labin, free-flag conventions, French-Wilson, checks."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
import torch

from equipoise.errors import InputError
from equipoise.xtal.reflections import Reflections, french_wilson

from tests.xtal.shared_data import data_file

CELL = gemmi.UnitCell(20.0, 22.0, 24.0, 90, 90, 90)
SG = gemmi.SpaceGroup("P 21 21 21")


def _hkl(d_min: float = 3.0) -> np.ndarray:
    hkl = np.asarray(gemmi.make_miller_array(CELL, SG, d_min, 0, True))
    return hkl[~np.asarray(SG.operations().systematic_absences(hkl), dtype=bool)]


def _write(path, columns: list[tuple[str, str, np.ndarray]], hkl: np.ndarray) -> str:
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = SG
    mtz.set_cell_for_all(CELL)
    mtz.add_dataset("t")
    for label, kind, _ in columns:
        mtz.add_column(label, kind)
    mtz.set_data(np.column_stack([hkl] + [c for _, _, c in columns]).astype(np.float32))
    mtz.write_to_file(str(path))
    return str(path)


def _sf_cif(tags: list[str], rows: str) -> str:
    """SF-mmCIF text in CELL/SG with a _refln loop of h, k, l and ``tags``."""
    head = "\n".join(["data_r"] + [f"_cell.{k} {v}" for k, v in zip(
        ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"), CELL.parameters)])
    loop = "\n".join(["loop_"] + [f"_refln.{t}" for t in ["index_h", "index_k", "index_l", *tags]])
    return f"{head}\n_symmetry.space_group_name_H-M '{SG.hm}'\n{loop}\n{rows}\n"


def _flags(n: int, free_value: int, work_value: int, every: int = 10) -> np.ndarray:
    flags = np.full(n, float(work_value))
    flags[::every] = free_value
    return flags


@pytest.mark.parametrize("free_value,work_value,expected", [(0, 1, "CCP4"), (1, 0, "phenix")])
def test_free_convention_detected_from_counts(tmp_path, free_value, work_value, expected):
    hkl = _hkl()
    n = len(hkl)
    path = _write(tmp_path / "a.mtz", [("FP", "F", np.full(n, 10.0)), ("SIGFP", "Q", np.ones(n)),
                                       ("FreeR_flag", "I", _flags(n, free_value, work_value))], hkl)
    refl = Reflections.from_file(path)
    assert expected in refl.free_convention
    assert int(refl.free.sum()) == len(range(0, n, 10))
    assert refl.labels == ["FP", "SIGFP", "FreeR_flag"]
    assert any("free flags" in note for note in refl.notes)


def test_ccp4_many_flag_values_and_override(tmp_path):
    hkl = _hkl()
    n = len(hkl)
    flags = np.arange(n) % 20.0
    path = _write(tmp_path / "a.mtz", [("F-obs", "F", np.full(n, 5.0)), ("SIGF-obs", "Q", np.ones(n)),
                                       ("R-free-flags", "I", flags)], hkl)
    assert int(Reflections.from_file(path).free.sum()) == int((flags == 0).sum())
    assert int(Reflections.from_file(path, free=3).free.sum()) == int((flags == 3).sum())


def test_labin_override_and_intensities(tmp_path):
    hkl = _hkl()
    n = len(hkl)
    i_obs = np.linspace(10.0, 1000.0, n)
    path = _write(tmp_path / "a.mtz", [("FP", "F", np.sqrt(i_obs)), ("SIGFP", "Q", np.ones(n)),
                                       ("I", "J", i_obs), ("SIGI", "Q", np.ones(n)),
                                       ("FREE", "I", _flags(n, 0, 1))], hkl)
    assert not Reflections.from_file(path).from_intensities
    refl = Reflections.from_file(path, labin="I,SIGI,FREE")
    assert refl.from_intensities
    # strong intensities: French-Wilson amplitude ~ sqrt(I)
    assert torch.allclose(refl.f_obs, torch.sqrt(torch.as_tensor(i_obs, dtype=torch.float64)), rtol=1e-2)


def test_french_wilson_weak_and_negative():
    i = np.array([-5.0, 0.0, 2.0, 100.0])
    f, sig = french_wilson(i, np.full(4, 3.0), np.full(4, 2.0), np.zeros(4, bool), np.ones(4))
    assert (f > 0).all() and (sig > 0).all()
    assert f[0] < f[2] < f[3]
    assert abs(f[3] - 10.0) < 0.3


def test_errors_name_file_and_field(tmp_path):
    hkl = _hkl()
    n = len(hkl)
    sig = np.ones(n)
    sig[3] = 0.0
    path = _write(tmp_path / "bad.mtz", [("FP", "F", np.full(n, 5.0)), ("SIGFP", "Q", sig),
                                         ("FREE", "I", _flags(n, 0, 1))], hkl)
    with pytest.raises(InputError, match="SIGFP") as err:
        Reflections.from_file(path)
    assert "bad.mtz" in str(err.value)
    noflag = _write(tmp_path / "nf.mtz", [("FP", "F", np.full(n, 5.0)), ("SIGFP", "Q", np.ones(n))], hkl)
    with pytest.raises(InputError, match="free"):
        Reflections.from_file(noflag)
    with pytest.raises(InputError, match="--labin"):
        Reflections.from_file(noflag, labin="FP,NOPE")
    values = np.full(n, 5.0)
    values[2] = np.inf
    inf = _write(tmp_path / "inf.mtz", [("FP", "F", values), ("SIGFP", "Q", np.ones(n)),
                                         ("FREE", "I", _flags(n, 0, 1))], hkl)
    with pytest.raises(InputError, match="infinite"):
        Reflections.from_file(inf)
    with pytest.raises(InputError, match="not found"):
        Reflections.from_file(tmp_path / "missing.mtz")


def test_check_model_space_group_and_cell(tmp_path):
    hkl = _hkl()
    n = len(hkl)
    refl = Reflections.from_file(_write(tmp_path / "a.mtz", [("FP", "F", np.full(n, 5.0)), ("SIGFP", "Q", np.ones(n)),
                                                              ("FREE", "I", _flags(n, 0, 1))], hkl))
    refl.check_model(CELL, SG)
    with pytest.raises(InputError, match="space group"):
        refl.check_model(CELL, gemmi.SpaceGroup("P 1 21 1"), "m.pdb")
    with pytest.raises(InputError, match="cell b"):
        refl.check_model(gemmi.UnitCell(20.0, 25.0, 24.0, 90, 90, 90), SG, "m.pdb")


def test_sf_mmcif(tmp_path):
    hkl = _hkl()[:50]
    rows = "\n".join(f"{h} {k} {l} {10 + i % 7}.0 1.0 {'f' if i % 10 == 0 else 'o'}" for i, (h, k, l) in enumerate(hkl))
    path = tmp_path / "r-sf.cif"
    path.write_text(_sf_cif(["F_meas_au", "F_meas_sigma_au", "status"], rows))
    refl = Reflections.from_file(path)
    assert refl.n == 50 and int(refl.free.sum()) == 5
    assert refl.labels[:2] == ["F_meas_au", "F_meas_sigma_au"]


@pytest.mark.slow
def test_real_data_files():
    refl = Reflections.from_file(data_file("1a0f/1a0f_data.mtz"))
    assert refl.n == 25970 and int(refl.free.sum()) == 500 and "0 = free" in refl.free_convention
    twinned = Reflections.from_file(data_file("1l2h.mtz.gz"))
    assert twinned.from_intensities and torch.isfinite(twinned.f_obs).all()


def test_anomalous_pairs_only_are_merged(tmp_path):
    """A file with only F(+)/F(-) (MTZ types G/L) is read as their inverse-variance weighted
    mean; a missing mate leaves the other alone; centric rows take F(+) alone."""
    hkl = _hkl()
    n = len(hkl)
    rng = np.random.default_rng(3)
    fp, fm = 10 + 5 * rng.random(n), 10 + 5 * rng.random(n)
    sp, sm = 0.5 + rng.random(n), 0.5 + rng.random(n)
    fm[::7] = np.nan                                    # (-) not measured
    path = _write(tmp_path / "anom.mtz", [("FREE", "I", _flags(n, 0, 1)), ("F(+)", "G", fp), ("SIGF(+)", "L", sp),
                                          ("F(-)", "G", fm), ("SIGF(-)", "L", sm)], hkl)
    refl = Reflections.from_file(path)
    assert refl.labels[:2] == ["F(+/-)", "SIGF(+/-)"] and refl.n == n
    assert any("anomalous pairs" in note for note in refl.notes)
    fp32, fm32 = fp.astype(np.float32), fm.astype(np.float32)
    sp32, sm32 = sp.astype(np.float32), sm.astype(np.float32)
    centric = np.asarray(SG.operations().centric_flag_array(hkl), dtype=bool)
    both = ~np.isnan(fm32) & ~centric
    w1, w2 = 1 / sp32.astype(np.float64) ** 2, 1 / sm32.astype(np.float64) ** 2
    want = np.where(both, (w1 * fp32 + w2 * np.nan_to_num(fm32)) / (w1 + np.where(both, w2, 0)), fp32)
    want_sigma = np.where(both, 1 / np.sqrt(w1 + w2), sp32)
    order = {tuple(h): i for i, h in enumerate(hkl.tolist())}
    got = np.empty(n)
    got_sigma = np.empty(n)
    for k, h in enumerate(refl.hkl.tolist()):
        got[order[tuple(h)]], got_sigma[order[tuple(h)]] = refl.f_obs[k].item(), refl.sigma_f[k].item()
    assert centric.any() and both.any()
    assert np.allclose(got, want, rtol=1e-6) and np.allclose(got_sigma, want_sigma, rtol=1e-6)


def test_anomalous_intensities_in_sf_mmcif_go_through_french_wilson(tmp_path):
    hkl = _hkl()[:60]
    rows = "\n".join(f"{h} {k} {l} {100 + i}.0 5.0 {'?' if i % 5 == 0 else f'{104 + i}.0'} "
                     f"{'?' if i % 5 == 0 else '5.0'} {'f' if i % 10 == 0 else 'o'}"
                     for i, (h, k, l) in enumerate(hkl))
    path = tmp_path / "anom-sf.cif"
    path.write_text(_sf_cif(["pdbx_I_plus", "pdbx_I_plus_sigma", "pdbx_I_minus", "pdbx_I_minus_sigma", "status"],
                            rows))
    refl = Reflections.from_file(path)
    assert refl.labels[:2] == ["I(+/-)", "SIGI(+/-)"] and refl.from_intensities and refl.n == 60
    assert torch.all(refl.f_obs > 0)

