"""``equipoise xtal refine`` end to end on the 47-atom 5e5z peptide and its real data (1 short cycle)."""

import json

import gemmi

from equipoise.cli import main
from tests.xtal.shared_data import data_file, monlib_or_skip


def test_refine_command_writes_all_outputs(tmp_path, capsys):
    monlib_or_skip()
    out = tmp_path / "out"
    args = ["xtal", "refine", str(data_file("5e5z.pdb.gz")), str(data_file("5e5z.mtz.gz")), "--out", str(out),
            "--cycles", "1", "--xyz-steps", "4", "--b-steps", "3", "--plots", "cycles"]
    assert main(args) == 0
    for name in ("refined.pdb", "refined.cif", "maps.mtz", "summary.json", "refine.log",
                 "plots/r_factors.png", "plots/weights.png", "run/cycle_01/xyz/record.jsonl",
                 "run/cycle_01/b_x1/summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {"start", "cycles", "r_work", "r_free", "bond_rmsd", "angle_rmsd"} <= set(summary)
    assert summary["cycles"][0]["weights"]["b"]["adp"] > 0
    assert "xyz stage's restraint weight" in summary["cycles"][0]["reasons"]["b:adp"]
    mtz = gemmi.read_mtz_file(str(out / "maps.mtz"))
    assert {"FWT", "PHWT", "DELFWT", "PHDELWT"} <= set(mtz.column_labels())
    assert "R-free" in (out / "refine.log").read_text()
    assert summary["twinning"]["twinned"] is False and summary["twinning"]["laws"] == []
    assert "no sign of twinning" in (out / "refine.log").read_text()
    # a second run resumes (nothing left to do) rather than starting over
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming after cycle 1" in capsys.readouterr().out


def test_refine_command_bad_inputs(tmp_path, capsys):
    assert main(["xtal", "refine", str(tmp_path / "none.pdb"), str(tmp_path / "none.mtz"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["xtal", "refine", "m.pdb", "d.mtz", "--out", str(tmp_path), "--cycles", "0"]) == 2


def test_refine_command_with_riding_hydrogens(tmp_path, capsys):
    """--hydrogens add: the refined model carries the hydrogens (ideal on their parents); a rerun of
    that output with the default (auto) keeps them riding; a hydrogen the library does not know
    makes auto remove them all with a note, and --hydrogens riding an error."""
    monlib_or_skip()
    out = tmp_path / "h"
    args = ["xtal", "refine", str(data_file("5e5z.pdb.gz")), str(data_file("5e5z.mtz.gz")), "--out", str(out),
            "--cycles", "1", "--xyz-steps", "3", "--b-steps", "2", "--plots", "none", "--hydrogens", "add"]
    assert main(args) == 0
    n_h = _count_hydrogens(out / "refined.pdb")
    assert n_h > 40
    again = ["xtal", "refine", str(out / "refined.pdb"), str(data_file("5e5z.mtz.gz")), "--out", str(tmp_path / "r"),
             "--cycles", "1", "--xyz-steps", "2", "--b-steps", "2", "--plots", "none"]
    assert main(again) == 0
    assert f"{n_h} hydrogens ride on their heavy atoms (--hydrogens auto)" in (tmp_path / "r" / "refine.log").read_text()
    assert _count_hydrogens(tmp_path / "r" / "refined.pdb") == n_h
    refined = gemmi.read_structure(str(out / "refined.pdb"))
    res = refined[0][0][1]
    odd = gemmi.Atom()
    odd.name, odd.element, odd.pos, odd.occ, odd.b_iso = "HXX", gemmi.Element("H"), res[0].pos, 1.0, 10.0
    res.add_atom(odd)
    refined.write_pdb(str(tmp_path / "odd.pdb"))
    odd_args = ["xtal", "refine", str(tmp_path / "odd.pdb"), str(data_file("5e5z.mtz.gz")), "--cycles", "1",
                "--xyz-steps", "2", "--b-steps", "2", "--plots", "none"]
    assert main([*odd_args, "--out", str(tmp_path / "o")]) == 0
    log = (tmp_path / "o" / "refine.log").read_text()
    assert "HXX" in log and "all hydrogens removed" in log
    assert _count_hydrogens(tmp_path / "o" / "refined.pdb") == 0
    capsys.readouterr()
    assert main([*odd_args, "--out", str(tmp_path / "o2"), "--hydrogens", "riding"]) == 2
    assert "HXX" in capsys.readouterr().err


def _count_hydrogens(path) -> int:
    return sum(cra.atom.is_hydrogen() for cra in gemmi.read_structure(str(path))[0].all())
