"""Refinement API, transforms, image loading, stage plans and the ``refine`` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from equipoise.cli import main
from equipoise.diffraction import io
from equipoise.diffraction.flags import parse_nanobragg_args
from equipoise.diffraction.refine import (REFINABLE, ImageModel, evaluate_loss, final_model_config, load_image,
                                          parse_refine, plan_stages, refine, starting_config)
from equipoise.diffraction.simulate import Simulator
from equipoise.diffraction.transforms import Above, CubicCell, Interval, Positive, Shift, Split
from equipoise.errors import InputError

#: a small, fast problem: 24x24 pixels, 3 mosaic domains
SMALL = ("-cell 100 100 100 90 90 90 -N 5 -default_F 100 -mosaic_domains 3 -lambda 1 -detpixels 24 "
         "-pixel 0.2 -distance 100 -fluence 1e28").split()


def small_config(mosaic: float = 0.5, misset=(0.0, 0.0, 0.0), extra=()) -> object:
    return parse_nanobragg_args(SMALL + ["-mosaic", str(mosaic), "-misset", *map(str, misset), *extra])


@pytest.fixture(scope="module")
def small_observed() -> np.ndarray:
    with torch.no_grad():
        return Simulator(small_config(0.5, (1.0, -1.0, 0.5)))().numpy()


# ------------------------------------------------------------------ transforms
@pytest.mark.parametrize("transform, values", [
    (Shift((1.0, 2.0), 0.5), [3.0, -4.0]),
    (Positive(0.2), [0.8]),
    (Above(1.0, 1.0), [1.001, 5.0, 400.0]),
    (Interval(0.0, 180.0), [1.0, 90.0, 179.0]),
    (Split(((2, Positive((1.0, 2.0))), (1, Interval(0.0, 180.0)))), [3.0, 0.5, 60.0]),
    (CubicCell(100.0, 0.01), [102.0, 102.0, 102.0, 90.0, 90.0, 90.0]),
])
def test_transform_round_trip_and_gradient(transform, values):
    u = torch.tensor(transform.inverse(values, "x"), dtype=torch.float64, requires_grad=True)
    out = transform(u)
    np.testing.assert_allclose(out.detach().numpy(), values, rtol=1e-10)
    (grad,) = torch.autograd.grad(out.sum(), u)
    assert bool((grad.abs() > 0).all())  # smooth, strictly monotone: no dead gradient


def test_bounded_transforms_keep_bounds_and_gradients_far_out():
    u = torch.tensor([-30.0, 30.0], dtype=torch.float64, requires_grad=True)
    for transform, low in ((Above(1.0), 1.0), (Positive(0.2), 0.0), (Interval(0.0, 180.0), 0.0)):
        out = transform(u)
        assert bool((out > low).all())
        (grad,) = torch.autograd.grad(out.sum(), u)
        assert bool((grad > 0).all())


def test_transform_inverse_rejects_out_of_bounds():
    with pytest.raises(InputError, match="> 0"):
        Positive(1.0).inverse([-1.0], "mosaic_spread_deg")
    with pytest.raises(InputError, match=r"\(0, 180\)"):
        Interval(0.0, 180.0).inverse([200.0], "cell")


# ------------------------------------------------------------------ names, images, stages
def test_parse_refine_orders_and_rejects_unknown_names():
    assert parse_refine("misset,mosaic") == ["mosaic", "misset"]
    with pytest.raises(InputError) as err:
        parse_refine("mosaic,mosiac,foo")
    text = str(err.value)
    assert "mosiac" in text and "foo" in text and "--refine" in text
    assert all(name in text for name in REFINABLE)


def test_load_image_formats_and_errors(tmp_path):
    image = np.arange(24 * 24, dtype=np.float32).reshape(24, 24)
    io.write_raw_float32(tmp_path / "a.bin", image)
    np.save(tmp_path / "a.npy", image)
    io.write_smv(tmp_path / "a.img", image.astype(np.uint16))
    for name in ("a.bin", "a.npy", "a.img"):
        np.testing.assert_array_equal(load_image(tmp_path / name, (24, 24)), image)
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "a.bin", (32, 32))
    assert "a.bin" in str(err.value) and "4096 bytes" in str(err.value) and "found 2304" in str(err.value)
    with pytest.raises(InputError, match=r"\(32, 32\).*found \(24, 24\)"):
        load_image(tmp_path / "a.npy", (32, 32))
    bad = image.copy()
    bad[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match=r"1 NaN/Inf pixel.*slow 3, fast 4"):
        load_image(tmp_path / "nan.npy", (24, 24))


def test_plans_release_misset_first_and_balance_restraint_per_stage():
    stages = plan_stages(["mosaic", "misset", "cell", "scale"], strategy="staged", restraint=True)
    assert [s.name for s in stages] == ["orient", "mosaic", "cell", "all"]
    assert stages[0].free == ["misset", "scale"]
    assert stages[2].terms == ["data", "cell_restraint"]
    assert type(stages[3].balancer).__name__ == "GradNormRatioBalancer"
    assert [s.name for s in plan_stages(["mosaic", "misset"])] == ["orient", "all"]
    assert [s.name for s in plan_stages(["mosaic", "misset"], strategy="joint")] == ["all"]


def test_model_needs_a_positive_starting_mosaic():
    with pytest.raises(InputError, match="-mosaic > 0"):
        ImageModel(small_config(0.0), ["mosaic"])


def test_every_refinable_parameter_starts_at_its_config_value_and_has_a_gradient():
    model = ImageModel(small_config(0.5, (1.0, -1.0, 0.5), ["-twotheta", "1"]), list(REFINABLE))
    start = model.values()
    assert start["mosaic_spread_deg"] == pytest.approx(0.5) and start["n_cells"] == pytest.approx([5, 5, 5])
    assert start["distance_mm"] == pytest.approx(100.0) and start["wavelength_A"] == pytest.approx(1.0)
    assert start["cell"] == pytest.approx([100, 100, 100, 90, 90, 90]) and start["twotheta_deg"] == pytest.approx(1)
    for v in model.variables.values():
        v.requires_grad_(True)
    image = model()
    grads = torch.autograd.grad((image * image).sum(), list(model.variables.values()))
    for name, g in zip(model.variables, grads):
        assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0, name


# ------------------------------------------------------------------ refine
def test_refine_recovers_misset_and_mosaic_on_a_small_problem(small_observed):
    result = refine(small_observed, small_config(0.3), "mosaic,misset", strategy="joint")
    assert result.final_loss * 100 < result.initial_loss
    assert abs(result.parameters["mosaic_spread_deg"] - 0.5) < 0.05
    np.testing.assert_allclose(result.parameters["misset_deg"], [1.0, -1.0, 0.5], atol=0.05)
    assert result.start["mosaic_spread_deg"] == pytest.approx(0.3)
    assert np.isfinite(result.image).all() and result.image.shape == (24, 24)


def test_refine_scale_background_lsq_and_mask(small_observed):
    observed = 2.0 * small_observed + 0.5
    mask = np.ones_like(observed)
    mask[:, :4] = 0  # ignored columns: garbage there must not matter
    observed[:, :4] = 1e6
    result = refine(observed, small_config(0.5, (1.0, -1.0, 0.5)), "scale,background", loss="lsq", mask=mask)
    assert result.parameters["scale"] == pytest.approx(2.0, rel=1e-3)
    assert result.parameters["background"] == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(InputError, match="every pixel is masked"):
        refine(observed, small_config(), "misset", mask=np.zeros_like(observed))
    with pytest.raises(InputError, match="--loss lsq"):
        refine(observed - 10.0, small_config(), "misset")


def test_balancer_weights_recomputed_per_stage_in_record(small_observed, tmp_path):
    """cell + restraint, staged: each stage start logs its weights with reasons computed on its free groups."""
    config = starting_config(small_config(0.5, (1.0, -1.0, 0.5)), cell=(100.5, 100.5, 100.5, 90.0, 90.0, 90.0))
    refine(small_observed, config, "misset,cell", strategy="staged", steps=3, out_dir=tmp_path, plots=False)
    lines = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    starts = [e for e in lines if e.get("stage_step") == 0]
    assert [e["stage"] for e in starts] == ["orient", "cell", "all"]
    assert all("reasons" in e for e in starts)
    assert "cell_restraint" not in starts[0]["terms"]  # cell frozen: restraint inactive
    cell_reason, all_reason = starts[1]["reasons"]["cell_restraint"], starts[2]["reasons"]["cell_restraint"]
    assert "['cell']" in cell_reason  # computed on the cell stage's free groups only
    assert "ratio 0.1" in all_reason and "['misset', 'cell']" in all_reason  # the moved cell: a real ratio
    assert starts[1]["terms"]["cell_restraint"]["weight"] != starts[2]["terms"]["cell_restraint"]["weight"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["orient", "cell", "all"]
    assert {"parameters", "initial_loss", "final_loss", "iterations", "converged"} <= set(summary)
    assert len(summary["parameters"]["cell"]) == 6


def test_capture_last_stage_uses_the_finer_mosaic_model(small_observed, tmp_path):
    """The capture plan's ``all`` stage (spread released) fits ``data_final``, the model with at least
    ``final_mosaic_domains`` domains; the orientation stages keep the configured 3; 0 turns it off."""
    result = refine(small_observed, small_config(0.3, (1.0, -1.0, 0.5)), "mosaic,misset", search=None, steps=2,
                    final_mosaic_domains=8, out_dir=tmp_path, plots=False)
    lines = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    starts = {e["stage"]: set(e["terms"]) for e in lines if e.get("stage_step") == 0}
    assert starts == {"orient_low": {"data_low"}, "orient": {"data"}, "all": {"data_final"}}
    with torch.no_grad():  # final_loss is the 8-domain model's loss at the refined values
        fine = starting_config(small_config(result.parameters["mosaic_spread_deg"], result.parameters["misset_deg"]),
                               mosaic_domains=8)
        assert result.final_loss == pytest.approx(evaluate_loss(small_observed, fine), rel=1e-6)
    errors = result.quality["standard_errors"]
    assert set(errors) == {"mosaic_spread_deg", "misset_deg"} and len(errors["misset_deg"]) == 3
    assert all(0.0 < e < math.inf for e in [errors["mosaic_spread_deg"], *errors["misset_deg"]]), errors
    plain = refine(small_observed, small_config(0.3, (1.0, -1.0, 0.5)), "mosaic,misset", search=None, steps=2,
                   final_mosaic_domains=0)
    assert [s["name"] for s in plain.stages] == ["orient_low", "orient", "all"]
    assert final_model_config(small_config(), ["mosaic"], final_mosaic_domains=0).crystal.mosaic_domains == 3
    assert final_model_config(small_config(), ["misset"]).crystal.mosaic_domains == 3  # spread fixed: no change


# ------------------------------------------------------------------ command line
def test_cli_refine_writes_summary_images_and_plots(small_observed, tmp_path, capsys):
    image = tmp_path / "obs.bin"
    io.write_raw_float32(image, small_observed)
    out = tmp_path / "run"
    start = SMALL + ["-mosaic", "0.3", "-misset", "0.5", "-0.5", "0"]
    code = main(["diffraction", "refine", str(image), *start, "--refine", "mosaic,misset", "--out", str(out),
                 "--strategy", "joint", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["parameters"]["mosaic_spread_deg"] - 0.5) < 0.05
    np.testing.assert_allclose(summary["parameters"]["misset_deg"], [1.0, -1.0, 0.5], atol=0.05)
    assert summary["final_loss"] < summary["initial_loss"] and summary["iterations"] > 0
    assert isinstance(summary["converged"], bool)
    assert np.load(out / "refined.npy").shape == (24, 24)
    assert (out / "refined.bin").stat().st_size == 24 * 24 * 4
    assert {p.name for p in (out / "plots").iterdir()} == {"images.png", "parameters.png", "loss.png"}
    assert (out / "record.jsonl").is_file()  # one term per stage: no shares or weights plots
    assert "mosaic_spread_deg" in capsys.readouterr().out


def test_cli_refine_errors(small_observed, tmp_path, capsys):
    image = tmp_path / "obs.bin"
    io.write_raw_float32(image, small_observed[:20])
    start = SMALL + ["-mosaic", "0.3"]
    assert main(["diffraction", "refine", str(image), *start, "--refine", "mosaic", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "obs.bin" in err and "24x24" in err and "found 1920 bytes" in err
    assert main(["diffraction", "refine", str(image), *start, "--refine", "mosaic,cel", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'cel'" in err and "beam_center" in err


def test_registration_does_not_import_torch():
    from equipoise.diffraction.refine_cli import REFINE_NAMES

    assert REFINE_NAMES == tuple(REFINABLE)  # the torch-free copy used by --help
    code = ("import sys; from equipoise.cli import build_parser; p = build_parser(); "
            "p.parse_args(['diffraction', 'demo', '--out', 'x']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
