"""``equipoise xtal geometry``: table, JSON, errors as exit code 2."""

import json

from equipoise.cli import main
from tests.xtal.shared_data import data_file, monlib_or_skip


def test_geometry_command_prints_table_and_json(tmp_path, capsys):
    monlib_or_skip()
    out = tmp_path / "geom.json"
    assert main(["xtal", "geometry", str(data_file("5e5z.pdb.gz")), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bond" in text and "rmsZ" in text and "nonbonded" in text
    report = json.loads(out.read_text())
    assert report["statistics"]["bond"]["n"] == 46 and report["statistics"]["bond"]["rmsd"] < 0.02


def test_geometry_command_bad_input_exit_code(tmp_path, capsys):
    assert main(["xtal", "geometry", str(tmp_path / "missing.pdb")]) == 2
    assert "not found" in capsys.readouterr().err
