"""Orientation search before refinement: grid, rescue of a start outside the gradient basin, records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from equipoise.cli import main
from equipoise.diffraction import io
from equipoise.diffraction.demo import TRUTH, check_criteria, demo_configs
from equipoise.diffraction.flags import parse_nanobragg_args
from equipoise.diffraction.orientation_search import misset_grid, parse_search
from equipoise.diffraction.refine import ImageModel, refine, starting_config
from equipoise.diffraction.simulate import Simulator
from equipoise.errors import InputError


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_misset_grid_is_the_ball_of_the_cubic_grid_origin_first():
    grid = misset_grid(10.0, 5.0)
    norms = np.linalg.norm(grid, axis=1)
    assert np.array_equal(grid[0], [0.0, 0.0, 0.0]) and bool((np.diff(norms) >= 0).all())
    assert len(grid) == 33 and norms.max() <= 10.0  # k = 2: the 33 points of Z^3 with |x| <= 2
    assert len(np.unique(grid, axis=0)) == len(grid)
    np.testing.assert_allclose(np.sort(np.unique(grid)), [-10, -5, 0, 5, 10])


def test_parse_search_and_errors():
    assert parse_search("15,5") == (15.0, 5.0)
    assert parse_search("12") == (12.0, 4.0)
    for bad in ("5,10", "x", "10,0", "1,2,3"):
        with pytest.raises(InputError, match="--search-misset"):
            parse_search(bad)


def test_search_needs_the_misset_refined():
    truth, start = demo_configs()
    with pytest.raises(InputError, match="misset"):
        refine(np.ones((64, 64)), start, "mosaic", search=(5.0, 5.0))


def test_search_rescues_a_start_10_degrees_off_and_is_recorded(tmp_path):
    """10° from the truth along the demo's misset direction the gradient fit ends in the wrong
    minimum (mosaic ~3°); the orientation search (radius 12°, step 6°) lands in the right basin."""
    truth, start = demo_configs()
    with torch.no_grad():
        observed = Simulator(truth)().numpy()
    t = np.asarray(TRUTH["misset_deg"])
    config = starting_config(start, misset_deg=tuple(t - 10.0 * t / np.linalg.norm(t)))
    plain = refine(observed, config, ("mosaic", "misset"), strategy="joint")
    assert not check_criteria(plain)[0]["misset within 1 deg"]

    result = refine(observed, config, ("mosaic", "misset"), strategy="joint", search=(12.0, 6.0), out_dir=tmp_path)
    criteria, errors = check_criteria(result)
    assert all(criteria.values()), (criteria, errors)
    assert max(errors["misset_deg"]) < 0.01
    assert result.start["misset_deg"] == pytest.approx(list(config.crystal.misset_deg))  # the user's start
    summary = json.loads((tmp_path / "summary.json").read_text())
    found = summary["search"]
    assert found["range_deg"] == 12.0 and found["step_deg"] == 6.0 and found["points"] == 33
    assert found["model"]["n_cells"] == 3.0 and len(found["candidates"]) == 3
    assert np.linalg.norm(np.asarray(found["best_misset_deg"]) - t) < 4.0  # inside the gradient basin
    assert found["best_loss"] < found["start_loss"] and found["evaluations"] == 33 + 3 * 33
    assert [s["name"] for s in summary["stages"]] == ["all"]  # the refinement after it is a core stage
    assert json.loads((tmp_path / "config.json").read_text())["config"]["search"]["best_misset_deg"] == \
        found["best_misset_deg"]


def test_cli_search_and_cubic_cell(tmp_path):
    flags = ("-cell 100 100 100 90 90 90 -N 5 -default_F 100 -mosaic_domains 3 -lambda 1 -detpixels 24 "
             "-pixel 0.2 -distance 100 -fluence 1e28 -mosaic 0.5").split()
    with torch.no_grad():
        observed = Simulator(parse_nanobragg_args(flags + ["-misset", "1", "-1", "0.5"]))().numpy()
    image = tmp_path / "obs.bin"
    io.write_raw_float32(image, observed)
    out = tmp_path / "run"
    code = main(["diffraction", "refine", str(image), *flags, "-misset", "0", "0", "0", "-cell", "100.5", "100.5",
                 "100.5", "90", "90", "90", "--refine", "misset,cell", "--cell-constraint", "cubic",
                 "--search-misset", "2,1", "--steps", "3", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["points"] == 33 and summary["search"]["range_deg"] == 2.0
    cell = summary["parameters"]["cell"]
    assert cell[0] == cell[1] == cell[2] and cell[3:] == [90.0, 90.0, 90.0]
    assert main(["diffraction", "refine", str(image), *flags, "--refine", "misset", "--search-misset", "1,2",
                 "--out", str(out)]) == 2


def test_cubic_constraint_refines_one_length():
    config = starting_config(demo_configs()[1], cell=(101.0, 101.0, 101.0, 90.0, 90.0, 90.0))
    model = ImageModel(config, ["cell"], cell_constraint="cubic")
    assert tuple(model.variables["cell"].shape) == (1,)
    assert model.values()["cell"] == pytest.approx([101.0, 101.0, 101.0, 90.0, 90.0, 90.0])
    with pytest.raises(InputError, match="cubic"):
        ImageModel(starting_config(config, cell=(101.0, 102.0, 101.0, 90.0, 90.0, 90.0)), ["cell"],
                   cell_constraint="cubic")
