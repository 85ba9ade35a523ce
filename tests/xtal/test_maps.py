"""maps.mtz: Coot's labels, coefficients 2mFo-DFc / mFo-DFc with model phases."""

from __future__ import annotations

import gemmi
import numpy as np
import torch

from equipoise.xtal.maps import MAP_LABELS, map_coefficients, write_map_mtz


def test_coefficients_and_file(tmp_path):
    f_obs = torch.tensor([10.0, 20.0, 5.0], dtype=torch.float64)
    f_model = torch.polar(torch.tensor([8.0, 22.0, 6.0], dtype=torch.float64),
                          torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    fom = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    d = torch.tensor([0.95, 0.9, 0.85], dtype=torch.float64)
    centric = torch.tensor([False, True, False])
    free = torch.tensor([False, False, True])
    two, diff = map_coefficients(f_obs, f_model, fom, d, centric, free)
    assert abs(float(two[0].abs()) - (2 * 0.9 * 10 - 0.95 * 8)) < 1e-12
    assert abs(float(two[1].abs()) - 0.8 * 20) < 1e-12                      # centric: mFo
    assert abs(float(two[2].abs()) - 0.85 * 6) < 1e-12 and float(diff[2].abs()) == 0.0   # free: DFc
    assert abs(float(torch.angle(two[0])) - 0.5) < 1e-12
    hkl = torch.tensor([[1, 0, 0], [0, 2, 0], [1, 1, 1]])
    path = write_map_mtz(tmp_path / "maps.mtz", hkl, gemmi.UnitCell(10, 11, 12, 90, 90, 90),
                         gemmi.SpaceGroup("P 21 21 21"), f_obs, f_obs * 0.1, free, fom, two, diff)
    mtz = gemmi.read_mtz_file(str(path))
    labels = [c.label for c in mtz.columns]
    assert all(label in labels for label in MAP_LABELS)
    fwt = np.array(mtz.column_with_label("FWT"), copy=False)
    assert np.allclose(fwt, two.abs().numpy(), rtol=1e-5)
    assert [c.type for c in mtz.columns if c.label in MAP_LABELS] == ["F", "P", "F", "P"]
