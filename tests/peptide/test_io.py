"""MGF/mzML reading, malformed input, skip_bad, Casanovo preprocessing."""

from pathlib import Path

import numpy as np
import pytest

from equipoise.errors import InputError
from equipoise.peptide.io import Spectrum, preprocess, read_spectra, write_mgf

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "peptide" / "real_annotated_64.mgf"

GOOD = """BEGIN IONS
TITLE=first
PEPMASS=451.25348
CHARGE=2+
RTINSECONDS=10.5
SCANS=7
SEQ=[Acetyl]-PEPC[Carbamidomethyl]K
100.0 5.0
200.0 10.0
END IONS
"""


def _block(**replace: str) -> str:
    text = GOOD
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def test_read_good_mgf(tmp_path) -> None:
    p = tmp_path / "a.mgf"
    p.write_text(GOOD + GOOD.replace("first", "second").replace("200.0 10.0", "150.0 1.0\n120.0 2.0"))
    f = read_spectra(p)
    assert len(f.spectra) == 2 and not f.skipped
    s = f.spectra[0]
    assert (s.index, s.title, s.charge, s.scan, s.retention_time_s) == (0, "first", 2, "7", 10.5)
    assert s.precursor_mz == pytest.approx(451.25348)
    assert s.tokens == ["[Acetyl]-", "P", "E", "P", "C[Carbamidomethyl]", "K"]
    assert np.all(np.diff(f.spectra[1].mz) > 0)  # sorted


@pytest.mark.parametrize("bad,field", [
    ({"PEPMASS=451.25348\n": ""}, "PEPMASS"),
    ({"CHARGE=2+\n": ""}, "CHARGE"),
    ({"100.0 5.0\n200.0 10.0\n": ""}, "peaks"),
    ({"200.0 10.0": "200.0 ten"}, "peaks"),
    ({"PEPC[Carbamidomethyl]K": "PEPS[Phospho]K"}, "SEQ"),
])
def test_malformed_names_file_spectrum_field(tmp_path, bad, field) -> None:
    p = tmp_path / "bad.mgf"
    p.write_text(GOOD.replace("first", "ok") + _block(**bad))
    with pytest.raises(InputError) as info:
        read_spectra(p)
    msg = str(info.value)
    assert str(p) in msg and "spectrum 1" in msg and "TITLE=first" in msg and field in msg
    with pytest.warns(UserWarning, match="skipped"):
        f = read_spectra(p, skip_bad=True)
    assert [s.index for s in f.spectra] == [0] and [s.index for s in f.skipped] == [1]
    assert field in f.skipped[0].reason


def test_missing_and_unknown_files(tmp_path) -> None:
    with pytest.raises(InputError, match="no such"):
        read_spectra(tmp_path / "none.mgf")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="format"):
        read_spectra(tmp_path / "x.txt")
    p = tmp_path / "open.mgf"
    p.write_text(GOOD.replace("END IONS\n", ""))
    with pytest.raises(InputError, match="END IONS"):
        read_spectra(p)


def test_preprocess_like_casanovo() -> None:
    mz = np.array([30.0, 100.0, 200.0, 449.5, 451.0, 600.0, 700.0, 3000.0])
    inten = np.array([50.0, 4.0, 0.001, 9.0, 99.0, 16.0, 1.0, 7.0])
    s = Spectrum(0, 451.25348, 2, mz, inten)
    out_mz, out_i = preprocess(s)
    # m/z range, precursor (+-2 Da at z=2 and z=1 ~ 901.5), 1% of base peak removed
    assert out_mz.tolist() == [100.0, 600.0, 700.0]
    assert np.linalg.norm(out_i) == pytest.approx(1.0)
    assert out_i[1] / out_i[0] == pytest.approx(2.0)  # sqrt(16)/sqrt(4)
    from equipoise.peptide.io import Preprocessing
    m2, _ = preprocess(s, Preprocessing(n_peaks=2))
    assert m2.tolist() == [100.0, 600.0]
    m3, i3 = preprocess(Spectrum(0, 451.0, 2, np.array([451.0]), np.array([1.0])))
    assert m3.tolist() == [0.0] and i3.tolist() == [1.0]


def test_write_read_round_trip(tmp_path) -> None:
    s = Spectrum(0, 500.0, 3, np.array([100.0, 200.5]), np.array([1.0, 2.0]), title="t",
                 tokens=["M[Oxidation]", "K"])
    p = write_mgf(tmp_path / "o.mgf", [s])
    back = read_spectra(p).spectra[0]
    assert back.tokens == s.tokens and back.charge == 3 and np.allclose(back.mz, s.mz)


def test_mzml(tmp_path) -> None:
    from psims.mzml.writer import MzMLWriter

    p = tmp_path / "a.mzML"
    with MzMLWriter(open(p, "wb"), close=True) as w:
        w.controlled_vocabularies()
        with w.run(id="r"):
            with w.spectrum_list(count=2):
                w.write_spectrum([100.0, 200.0], [1.0, 3.0], id="scan=5", params=["MSn spectrum", {"ms level": 2}],
                                 scan_start_time=1.5,
                                 precursor_information={"mz": 451.25, "charge": 2, "intensity": 1.0})
                w.write_spectrum([100.0], [1.0], id="scan=6", params=["MSn spectrum", {"ms level": 2}],
                                 precursor_information={"mz": 300.0, "intensity": 1.0})
    with pytest.raises(InputError, match="charge"):
        read_spectra(p)
    with pytest.warns(UserWarning):
        f = read_spectra(p, skip_bad=True)
    s = f.spectra[0]
    assert (s.charge, s.scan, s.title) == (2, "5", "scan=5") and s.precursor_mz == pytest.approx(451.25)
    assert s.retention_time_s == pytest.approx(90.0) and s.mz.tolist() == [100.0, 200.0]


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/data/peptide/real_annotated_64.mgf not present")
def test_real_file() -> None:
    f = read_spectra(REAL)
    assert len(f.spectra) == 64 and all(s.tokens for s in f.spectra)
    assert {s.charge for s in f.spectra} <= {1, 2, 3, 4, 5}


def test_global_mgf_header_supplies_charge(tmp_path) -> None:
    p = tmp_path / "g.mgf"
    p.write_text("CHARGE=3+\n" + GOOD.replace("CHARGE=2+\n", ""))
    assert read_spectra(p).spectra[0].charge == 3
