"""The refinement demonstration meets its success criteria and writes its record and figure."""

from __future__ import annotations

import json
import math

import numpy as np

from equipoise.cli import main
from equipoise.diffraction.demo import TRUTH


def test_demo_command_meets_criteria_and_writes_record(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["diffraction", "demo", "--out", str(out_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "truth" in out and "refined" in out and "mosaic spread (deg)" in out and "misset z (deg)" in out
    assert "[ok] mosaic within 0.1 deg" in out and "FAILED" not in out

    summary = json.loads((out_dir / "summary.json").read_text())
    p = summary["parameters"]
    assert summary["final_loss"] * 10 <= summary["initial_loss"]
    assert abs(p["mosaic_spread_deg"] - TRUTH["mosaic_spread_deg"]) < 0.1
    assert max(abs(a - b) for a, b in zip(p["misset_deg"], TRUTH["misset_deg"])) < 0.1  # the aim, not just 1 deg
    assert summary["iterations"] <= 100
    assert all(math.isfinite(v) for v in [summary["initial_loss"], summary["final_loss"], *p["misset_deg"]])
    for line in (out_dir / "record.jsonl").read_text().splitlines():
        entry = json.loads(line)
        assert math.isfinite(entry["loss"])
        assert all(f["kind"] != "nonfinite" for f in entry.get("flags", []))
    assert np.isfinite(np.load(out_dir / "refined.npy")).all()
    assert (out_dir / "demo.png").stat().st_size > 10_000
    assert (out_dir / "plots" / "loss.png").is_file()
