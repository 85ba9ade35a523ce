"""mzTab 1.0 writer (Casanovo's layout), CSV writer and the round trip through the reader."""

import csv
import math

import pytest

from equipoise.errors import InputError
from equipoise.peptide.mztab import PSH_COLUMNS, read_mztab, write_csv, write_mztab
from equipoise.peptide.psm import PSM
from equipoise.peptide.vocab import DEFAULT_VOCABULARY


def _psms() -> list[PSM]:
    v = DEFAULT_VOCABULARY
    t1 = v.tokenize("[Acetyl]-PEPC[Carbamidomethyl]M[Oxidation]K")
    return [PSM(1, t1, 0.87, [0.9] * len(t1), 2, v.precursor_mz(t1, 2) * (1 + 3e-6), title="scan 7",
                retention_time_s=12.5),
            PSM(0, ["A", "K"], 0.5, [0.4, 0.6], 3, 300.0),
            PSM(2, [], -1.0, [], 2, 400.0)]


def test_mztab_layout_and_round_trip(tmp_path) -> None:
    out = write_mztab(tmp_path / "r.mztab", _psms(), ms_run=tmp_path / "in.mgf", config={"beams": 5})
    lines = out.read_text().splitlines()
    assert lines[0] == "MTD\tmzTab-version\t1.0.0"
    assert any(line.startswith("MTD\tsoftware[1]-setting[1]\tbeams = 5") for line in lines)
    assert any(line == "MTD\tfixed_mod[1]-site\tC" for line in lines)
    psh = next(line for line in lines if line.startswith("PSH")).split("\t")
    assert tuple(psh[1:]) == PSH_COLUMNS
    rows = [line.split("\t") for line in lines if line.startswith("PSM")]
    assert len(rows) == 3 and all(len(r) == len(psh) for r in rows)
    col = {c: i for i, c in enumerate(psh)}
    assert [r[col["spectra_ref"]] for r in rows] == ["ms_run[1]:index=0", "ms_run[1]:index=1", "ms_run[1]:index=2"]
    assert rows[1][col["sequence"]] == "[Acetyl]-PEPC[Carbamidomethyl]M[Oxidation]K"
    assert rows[2][col["sequence"]] == "null"
    back = read_mztab(out)
    assert [p.spectrum_index for p in back] == [0, 1, 2]
    assert back[1].tokens == _psms()[0].tokens and back[1].aa_scores == pytest.approx([0.9] * 7)
    assert back[1].retention_time_s == 12.5 and back[1].precursor_error_ppm == pytest.approx(3.0, abs=1e-3)
    assert back[2].tokens == [] and back[2].calc_mz is None


def test_csv_columns(tmp_path) -> None:
    out = write_csv(tmp_path / "r.csv", _psms())
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["spectrum_index", "title", "sequence", "score", "aa_scores", "precursor_error_ppm"]
    assert rows[1]["title"] == "scan 7" and math.isclose(float(rows[1]["precursor_error_ppm"]), 3.0, abs_tol=1e-3)
    assert rows[2]["sequence"] == "" and rows[2]["precursor_error_ppm"] == ""


def test_psm_checks_and_bad_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="aa_scores"):
        PSM(0, ["A", "K"], 0.5, [0.5], 2, 100.0)
    with pytest.raises(InputError, match="not writable|cannot write"):
        write_mztab(tmp_path / "no" / "x.mztab", _psms(), ms_run="in.mgf")
    bad = tmp_path / "bad.mztab"
    bad.write_text("MTD\tmzTab-version\t1.0.0\n")
    with pytest.raises(InputError, match="PSH"):
        read_mztab(bad)
    out = write_mztab(tmp_path / "r.mztab", _psms(), ms_run="in.mgf")
    out.write_text(out.read_text().replace("PEPC[Carbamidomethyl]", "PEPS[Phospho]"))
    with pytest.raises(InputError, match="Phospho"):
        read_mztab(out)
