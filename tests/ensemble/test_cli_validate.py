"""``equipoise ensemble validate`` and ``baseline`` end to end on small files; the gate."""

from __future__ import annotations

import json

from tests.ensemble.backbones import ideal_ensemble
from equipoise.cli import main
from equipoise.ensemble.io import read_ensemble, write_ensemble
from equipoise.ensemble.validation import gate


def test_validate_against_itself_passes_and_writes_json_and_plots(tmp_path, capsys):
    path = write_ensemble(ideal_ensemble(6, 10, spread_deg=6.0), tmp_path / "ens.pdb")
    report = tmp_path / "report.json"
    assert main(["ensemble", "validate", str(path), "--reference", str(path), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["gate"]["passed"] and data["distribution"]["precision"] == 1.0
    assert data["geometry"]["bond_rmsd_A"] < 1e-3 and len(data["distribution"]["rmsf_samples"]) == 10
    names = sorted(p.name for p in (tmp_path / "report_plots").iterdir())
    assert names == ["pairwise_rmsd.png", "pca.png", "ramachandran.png", "rmsf.png"]
    assert "gate: PASSED" in capsys.readouterr().out


def test_baseline_command_and_a_failing_gate(tmp_path):
    path = write_ensemble(ideal_ensemble(10, 10, spread_deg=15.0), tmp_path / "ens.pdb")
    out = tmp_path / "base.pdb"
    assert main(["ensemble", "baseline", str(path), "--kind", "pca", "--n", "7", "--holdout", "0.2",
                 "--out", str(out)]) == 0
    assert read_ensemble(out).n_models == 7 and read_ensemble(tmp_path / "base_holdout.pdb").n_models == 2
    stretched = read_ensemble(path)
    stretched.coords *= 1.05  # every bond 5% long
    bad = write_ensemble(stretched, tmp_path / "bad.pdb")
    assert main(["ensemble", "validate", str(bad), "--reference", str(path)]) == 1


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["ensemble", "validate", str(tmp_path / "absent.pdb")]) == 2
    assert "file not found" in capsys.readouterr().err
    path = write_ensemble(ideal_ensemble(4, 6), tmp_path / "ens.pdb")
    assert main(["ensemble", "baseline", str(path), "--kind", "pca", "--holdout", "1.5", "--out",
                 str(tmp_path / "b.pdb")]) == 2


def test_gate_thresholds():
    geometry = {"bond_rmsd_A": 0.01, "angle_rmsd_deg": 4.0, "rama_outliers": 0.015,
                "clashes_per_1000_atoms": 0.5, "chain_breaks": 0}
    reference = {"geometry": {"angle_rmsd_deg": 3.5, "rama_outliers": 0.01}}
    dist = {"pairwise_rmsd_ratio": 1.08, "rmsf_pearson": 0.95, "precision": 0.92, "recall": 0.91}
    assert gate({"geometry": geometry, "distribution": dist}, reference)["passed"]
    for key, value in (("angle_rmsd_deg", 4.6), ("rama_outliers", 0.021), ("bond_rmsd_A", 0.021),
                       ("clashes_per_1000_atoms", 1.1), ("chain_breaks", 1)):
        result = gate({"geometry": {**geometry, key: value}, "distribution": dist}, reference)
        assert not result["passed"] and not result["checks"][key]["passed"]
    for key, value in (("pairwise_rmsd_ratio", 0.88), ("rmsf_pearson", 0.89), ("precision", 0.89), ("recall", 0.5)):
        result = gate({"geometry": geometry, "distribution": {**dist, key: value}}, reference)
        assert not result["passed"] and result["geometry_passed"] and result["distribution_passed"] is False
    alone = gate({"geometry": geometry})
    assert alone["passed"] and alone["checks"]["angle_rmsd_deg"]["passed"] is None
