"""``equipoise xtal rfactor`` on a tiny synthetic case; bad input exits 2 with the file named."""

from __future__ import annotations

import json

from equipoise.cli import main
from equipoise.xtal.synthetic import random_structure, simulated_reflections, write_mtz


def test_rfactor_command(tmp_path, capsys):
    st = random_structure(10, (10, 11, 12, 90, 90, 90), "P 21 21 21", seed=7)
    refl = simulated_reflections(st, d_min=2.0, noise=0.02)
    st.write_pdb(str(tmp_path / "m.pdb"))
    write_mtz(refl, tmp_path / "d.mtz", free_value=1)            # phenix convention
    out = tmp_path / "out"
    assert main(["xtal", "rfactor", str(tmp_path / "m.pdb"), str(tmp_path / "d.mtz"), "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "R-work" in text and "R-free" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["r_work"] < 0.06 and summary["n_free"] == int(refl.free.sum())
    assert any("phenix (1 = free)" in n for n in summary["notes"])
    assert (out / "maps.mtz").exists() and (out / "run.log").exists()


def test_rfactor_bad_input(tmp_path, capsys):
    st = random_structure(6, (10, 11, 12, 90, 90, 90), "P 21 21 21", seed=8)
    st.write_pdb(str(tmp_path / "m.pdb"))
    (tmp_path / "d.mtz").write_bytes(b"not an mtz")
    assert main(["xtal", "rfactor", str(tmp_path / "m.pdb"), str(tmp_path / "d.mtz"), "--quiet"]) == 2
    assert "d.mtz" in capsys.readouterr().err
