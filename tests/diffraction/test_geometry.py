"""Detector geometry against nanoBragg's printed geometry (golden run.log) and unit checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.geometry import (capture_fractions, detector_geometry, smv_header_fields,
                                            solid_angle, subpixel_positions)
from equipoise.errors import InputError
from tests.diffraction.golden import GOLDEN

CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "run.log").exists()) if GOLDEN.is_dir() else []
F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_run_log(text: str) -> dict[str, list[float]]:
    """Numbers nanoBragg prints about the resolved geometry, keyed by label (metres, as printed)."""
    out: dict[str, list[float]] = {}
    patterns = {
        "fdet": r"DIRECTION_OF_DETECTOR_X-AXIS=", "sdet": r"DIRECTION_OF_DETECTOR_Y-AXIS=",
        "odet": r"DIRECTION_OF_DETECTOR_Z-AXIS=", "beam": r"INCIDENT_BEAM_DIRECTION=",
        "spindle": r"spindle ROTATION_AXIS=", "polar_normal": r"POLARIZATION_PLANE_NORMAL=",
        "dials_origin": r"dials origin=", "xds_beam": r"XDS incident beam:",
    }
    for key, label in patterns.items():
        m = re.search(label + r"\s*(" + _NUM + r")\s+(" + _NUM + r")\s+(" + _NUM + r")", text)
        out[key] = [float(m.group(i)) for i in (1, 2, 3)]
    for a, b in (("Xbeam", "Ybeam"), ("Fbeam", "Sbeam"), ("Xclose", "Yclose"), ("Fclose", "Sclose")):
        m = re.search(rf"{a}=({_NUM}) {b}=({_NUM})", text)
        out[a], out[b] = [float(m.group(1))], [float(m.group(2))]
    m = re.search(rf"distance=({_NUM}) detsize=({_NUM})x({_NUM})\s+pixel=({_NUM}) meters \((\d+)x(\d+) pixels\)",
                  text)
    out["distance"], out["detsize"] = [float(m.group(1))], [float(m.group(2)), float(m.group(3))]
    out["pixel"], out["pixels"] = [float(m.group(4))], [float(m.group(5)), float(m.group(6))]
    m = re.search(rf"sensor is ({_NUM}) m thick in (\d+) layers with mu= ({_NUM})", text)
    out["sensor"] = [float(m.group(1)), float(m.group(2)), float(m.group(3))]
    m = re.search(r"roi: (\d+) < x < (\d+) && (\d+) < y < (\d+)", text)
    out["roi"] = [float(m.group(i)) for i in (1, 2, 3, 4)]
    m = re.search(rf"(\d+) phi steps from ({_NUM}) to ({_NUM}) degrees", text)
    out["phi"] = [float(m.group(2)), float(m.group(3))]
    return out


def assert_printed(actual, printed, what: str) -> None:
    """``actual`` agrees with a ``%g`` printout (6 significant digits) to its printed precision."""
    actual = np.atleast_1d(np.asarray(actual, dtype=np.float64))
    for a, p in zip(actual, np.atleast_1d(printed)):
        tol = 1e-9 if p == 0 else 0.51 * 10 ** (math.floor(math.log10(abs(p))) - 5) + 1e-12
        assert abs(a - p) <= tol, f"{what}: computed {a!r}, nanoBragg printed {p!r}"


def golden_config(case: str) -> SimulationConfig:
    from equipoise.diffraction.flags import parse_command_file

    return parse_command_file(GOLDEN / case / "command.txt")


@pytest.mark.skipif(not CASES, reason=f"golden data absent: {GOLDEN} not found")
@pytest.mark.parametrize("case", CASES)
def test_geometry_matches_nanobragg_run_log(case: str) -> None:
    log = parse_run_log((GOLDEN / case / "run.log").read_text())
    config = golden_config(case)
    geom = detector_geometry(config, **F64)
    v = geom.values
    for key in ("fdet", "sdet", "odet", "beam", "spindle"):
        assert_printed(getattr(geom, key).numpy(), log[key], key)
    assert_printed(torch.linalg.cross(geom.beam, geom.polar).numpy(), log["polar_normal"], "polarization normal")
    xds_beam = [float(torch.dot(geom.beam, u)) for u in (geom.fdet, geom.sdet, geom.odet)]
    assert_printed(xds_beam, log["xds_beam"], "XDS incident beam")
    for key in ("Xbeam", "Ybeam", "Fbeam", "Sbeam", "Xclose", "Yclose", "Fclose", "Sclose", "distance"):
        assert_printed(v[key] / 1000.0, log[key], key)
    assert_printed(float(geom.distance), log["distance"], "geom.distance")
    assert_printed([v["dials_origin_x"], v["dials_origin_y"], v["dials_origin_z"]], log["dials_origin"],
                   "dials origin (mm)")
    assert_printed([v["detsize_f"] / 1000, v["detsize_s"] / 1000], log["detsize"], "detsize")
    assert_printed(geom.pixel_size, log["pixel"], "pixel")
    assert [geom.fpixels, geom.spixels] == [int(x) for x in log["pixels"]]
    thick, layers, mu = log["sensor"]
    assert geom.n_layers == int(layers)
    if thick > 0:
        assert_printed((geom.n_layers - 1) * geom.layer_step, thick, "sensor thickness")
        assert_printed(geom.mu, mu, "mu")
    # nanoBragg's roi maxima are inclusive and default to fpixels/spixels (one past the last pixel)
    fmin, fmax, smin, smax = log["roi"]
    assert geom.roi == (int(fmin), min(int(fmax), geom.fpixels - 1), int(smin), min(int(smax), geom.spixels - 1))
    # SMV header values agree with the printed geometry
    header = smv_header_fields(config, geom)
    assert_printed(float(header["DISTANCE"]), log["distance"][0] * 1000, "DISTANCE")
    assert_printed(float(header["BEAM_CENTER_X"]), log["Xbeam"][0] * 1000, "BEAM_CENTER_X")
    assert_printed(float(header["PHI"]) + float(header["OSC_RANGE"]), log["phi"][1], "PHI + OSC_RANGE")
    assert header["DIALS_ORIGIN"] == ",".join("%g" % x for x in log["dials_origin"])


def _mosflm(**detector) -> SimulationConfig:
    config = SimulationConfig()
    config.detector.fpixels = config.detector.spixels = 8
    config.detector.pixel_mm = 1.0
    for key, value in detector.items():
        setattr(config.detector, key, value)
    return config


def test_default_mosflm_geometry() -> None:
    config = SimulationConfig()
    geom = detector_geometry(config, **F64)
    assert (geom.fpixels, geom.spixels) == (1024, 1024)
    assert geom.convention == "MOSFLM" and geom.pivot == "BEAM"
    # direct beam at the corner shared by pixels 512/513 (PHYSICS.md §1.9): Fbeam = Ybeam + Δ/2
    assert geom.values["Fbeam"] == pytest.approx(51.3) and geom.values["Sbeam"] == pytest.approx(51.3)
    assert torch.allclose(geom.pix0, torch.tensor([0.1, 0.0513, -0.0513], **F64))
    assert geom.mask is None and geom.roi == (0, 1023, 0, 1023)


@pytest.mark.parametrize("convention,beam_center", [
    ("MOSFLM", lambda d, px: ((d + px) / 2 + px / 2, (d + px) / 2 + px / 2)),
    ("DENZO", lambda d, px: ((d + px) / 2, (d + px) / 2)),
    ("ADXV", lambda d, px: ((d + px) / 2, d - (d - px) / 2)),
    ("XDS", lambda d, px: (d / 2, d / 2)),
    ("DIALS", lambda d, px: (d / 2, d / 2)),
])
def test_default_beam_centre_per_convention(convention, beam_center) -> None:
    config = _mosflm(convention=convention)
    geom = detector_geometry(config, **F64)
    fbeam, sbeam = beam_center(8.0, 1.0)  # mm, 8 pixels of 1 mm
    assert geom.values["Fbeam"] == pytest.approx(fbeam) and geom.values["Sbeam"] == pytest.approx(sbeam)
    # the direct beam really hits (Fbeam, Sbeam): pix0 + Fbeam f + Sbeam s is parallel to the beam
    hit = geom.pix0 + fbeam / 1000 * geom.fdet + sbeam / 1000 * geom.sdet
    assert torch.allclose(torch.linalg.cross(hit, geom.beam), torch.zeros(3, **F64), atol=1e-15)
    assert geom.pivot == ("SAMPLE" if convention in ("XDS", "DIALS") else "BEAM")


def test_pivot_flag_ignored_except_custom() -> None:
    rotated = dict(rot_deg=(3.0, 4.0, 5.0), twotheta_deg=7.0, xbeam_mm=3.0, ybeam_mm=5.0)
    beam = detector_geometry(_mosflm(**rotated, pivot="BEAM"), **F64)
    sample = detector_geometry(_mosflm(**rotated, pivot="SAMPLE"), **F64)
    assert torch.equal(beam.pix0, sample.pix0)  # convention block forces BEAM for MOSFLM
    custom = dict(rotated, fdet_vector=(0, 0, 1), convention="CUSTOM")
    cbeam = detector_geometry(_mosflm(**custom, pivot="BEAM"), **F64)
    csample = detector_geometry(_mosflm(**custom, pivot="SAMPLE"), **F64)
    assert cbeam.pivot == "BEAM" and csample.pivot == "SAMPLE"
    assert not torch.allclose(cbeam.pix0, csample.pix0)
    # BEAM pivot keeps the beam spot at (Xbeam, Ybeam) = (Fbeam, Sbeam) for CUSTOM
    hit = cbeam.pix0 + 0.003 * cbeam.fdet + 0.005 * cbeam.sdet
    assert torch.allclose(torch.linalg.cross(hit, cbeam.beam), torch.zeros(3, **F64), atol=1e-15)


def test_custom_vectors_are_unitised_and_odet_generated() -> None:
    config = _mosflm(convention="CUSTOM", fdet_vector=(0, 0, 2), sdet_vector=(0, -3, 0), odet_vector=(2, 0, 0))
    geom = detector_geometry(config, **F64)
    assert torch.allclose(geom.fdet, torch.tensor([0.0, 0.0, 1.0], **F64))
    # |odet| != 1 -> nanoBragg replaces it by unit(fdet x sdet) = z x -y = +x
    assert torch.allclose(geom.odet, torch.tensor([1.0, 0.0, 0.0], **F64))
    assert geom.values["Fbeam"] == pytest.approx(4.0)  # CUSTOM: Xbeam = Xclose = detsize/2, no 1/2-pixel offset


def test_detector_size_rounding_and_detpixels() -> None:
    config = SimulationConfig()
    config.detector.detsize_f_mm, config.detector.detsize_s_mm, config.detector.pixel_mm = 100.0, 50.0, 0.3
    geom = detector_geometry(config, **F64)
    assert (geom.fpixels, geom.spixels) == (math.ceil(100 / 0.3 - 0.5), math.ceil(50 / 0.3 - 0.5))
    config.detector.fpixels = 10  # -detpixels_f wins over -detsize_f
    assert detector_geometry(config, **F64).fpixels == 10


def test_subpixel_positions_order_and_layers() -> None:
    config = _mosflm(thickness_um=300.0, absorption_um=500.0, thicksteps=4)
    geom = detector_geometry(config, **F64)
    s, f = torch.tensor([2, 5]), torch.tensor([3, 1])
    pos = subpixel_positions(geom, s, f, 2)
    assert pos.shape == (2, 4, 4, 3)
    delta = geom.pixel_size / 2
    for k in range(4):
        i, j = divmod(k, 2)  # slow sub-index major, fast minor
        fdet = delta * (3 * 2 + j) + delta / 2
        sdet = delta * (2 * 2 + i) + delta / 2
        for t in range(4):
            expect = fdet * geom.fdet + sdet * geom.sdet + t * geom.layer_step * geom.odet + geom.pix0
            assert torch.allclose(pos[0, k, t], expect, atol=1e-15)
    assert geom.layer_step == pytest.approx(300e-6 / 3)  # Δz = T/(N-1) (PHYSICS.md §1.7)


def test_solid_angle_and_point_pixel() -> None:
    geom = detector_geometry(_mosflm(), **F64)
    pos = torch.tensor([[0.1, 0.0, 0.0], [0.1, 0.01, 0.0]], **F64)
    omega = solid_angle(geom, pos)
    assert omega[0] == pytest.approx(1e-6 / 0.01)
    r = math.sqrt(0.1 ** 2 + 0.01 ** 2)
    assert omega[1] == pytest.approx(1e-6 / r ** 2 * 0.1 / r)
    geom.point_pixel = True
    assert solid_angle(geom, pos)[1] == pytest.approx(1 / r ** 2)


def test_curved_detector_keeps_distance() -> None:
    geom = detector_geometry(_mosflm(curved=True), **F64)
    pos = subpixel_positions(geom, torch.arange(8), torch.arange(8).flip(0), 1)
    assert torch.allclose(torch.linalg.norm(pos, dim=-1), geom.distance.expand(8, 1, 1))


def test_capture_fractions() -> None:
    config = _mosflm(thickness_um=450.0, absorption_um=500.0, thicksteps=5)
    geom = detector_geometry(config, **F64)
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.3, -0.2]], **F64), dim=-1)
    cap = capture_fractions(geom, d)
    assert cap.shape == (2, 5)
    rho = d @ geom.odet
    total = 1 - torch.exp(-geom.n_layers * geom.layer_step * geom.mu / rho)
    assert torch.allclose(cap.sum(-1), total)
    # PHYSICS.md §1.7: layers at t*T/(N-1); last layer at normal incidence = exp(-0.9) - exp(-1.125)
    assert float(cap[0, -1]) == pytest.approx(math.exp(-0.9) - math.exp(-1.125))
    thin = detector_geometry(_mosflm(), **F64)
    assert torch.equal(capture_fractions(thin, d), torch.ones(2, 1, **F64))
    only_t = detector_geometry(_mosflm(thickness_um=100.0), **F64)  # T only: 2 layers of T/2, mu = 1/T
    assert (only_t.n_layers, only_t.layer_step, only_t.mu) == (2, pytest.approx(50e-6), pytest.approx(1e4))
    off = detector_geometry(_mosflm(thickness_um=100.0, absorption_um=math.inf), **F64)
    assert (off.n_layers, off.mu) == (1, 0.0)


def test_roi_and_mask() -> None:
    mask = np.ones((8, 8), dtype=np.uint16)
    mask[0, 0] = 0
    geom = detector_geometry(_mosflm(roi=(2, 20, 1, 3), mask=mask), **F64)
    assert geom.roi == (2, 7, 1, 3)
    assert geom.mask.dtype == torch.bool and not geom.mask[0, 0] and geom.mask[1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype) -> None:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        geom = detector_geometry(_mosflm(rot_deg=(1.0, 2.0, 3.0), twotheta_deg=4.0), dtype=dtype, device=device)
        pos = subpixel_positions(geom, torch.tensor([1], device=device), torch.tensor([2], device=device), 2)
        for t in (geom.fdet, geom.pix0, geom.distance, pos, solid_angle(geom, pos)):
            assert t.dtype == dtype and t.device.type == device.type


def _geometry_function(config: SimulationConfig):
    s_index, f_index = torch.tensor([0, 3, 7]), torch.tensor([5, 0, 7])

    def run(distance, centre, rot, twotheta):
        params = {"distance_mm": distance, "beam_center_mm": centre, "detector_rot_deg": rot,
                  "twotheta_deg": twotheta}
        geom = detector_geometry(config, params, **F64)
        pos = subpixel_positions(geom, s_index, f_index, 2)
        return pos, solid_angle(geom, pos)

    return run


@pytest.mark.parametrize("convention", ["MOSFLM", "XDS", "CUSTOM"])
@pytest.mark.parametrize("at_default", [True, False])
def test_gradcheck_positions_and_solid_angle(convention: str, at_default: bool) -> None:
    config = _mosflm(convention=convention)
    if convention == "CUSTOM":
        config.detector.pivot = "SAMPLE"
    rot = [0.0, 0.0, 0.0] if at_default else [2.0, -3.0, 5.0]
    inputs = (torch.tensor(100.0, **F64), torch.tensor([4.5, 4.5], **F64), torch.tensor(rot, **F64),
              torch.tensor(0.0 if at_default else 10.0, **F64))
    inputs = tuple(x.requires_grad_() for x in inputs)
    run = _geometry_function(config)
    assert torch.autograd.gradcheck(run, inputs)
    sample_pivot = detector_geometry(config, **F64).pivot == "SAMPLE"
    for which in ("positions", "omega"):
        pos, omega = run(*inputs)
        out = omega.sum() if which == "omega" else (pos * torch.arange(pos.numel(), **F64).reshape(pos.shape)).sum()
        grads = torch.autograd.grad(out, inputs, allow_unused=True)
        for name, g in zip(("distance", "beam centre", "rotations", "twotheta"), grads):
            assert g is not None and torch.all(torch.isfinite(g)), name
            if which == "omega" and sample_pivot and at_default and name in ("rotations", "twotheta"):
                # from the unrotated detector, a small rotation about the sample changes no pixel's
                # distance to first order, nor the close distance: dΩ = 0 up to rounding
                assert float(g.abs().max()) < 1e-15 * float(omega.sum().detach()), f"{which} wrt {name}"
                continue
            assert bool(torch.any(g != 0)), f"zero gradient of {which} wrt {name}"


def test_gradcheck_curved_detector() -> None:
    config = _mosflm(curved=True)
    run = _geometry_function(config)
    inputs = (torch.tensor(100.0, **F64), torch.tensor([4.0, 5.0], **F64), torch.tensor([1.0, 2.0, 3.0], **F64),
              torch.tensor(5.0, **F64))
    assert torch.autograd.gradcheck(run, tuple(x.requires_grad_() for x in inputs))


def test_smv_header_fields() -> None:
    config = _mosflm(convention="XDS", orgx_px=3.0, orgy_px=4.0, distance_mm=50.0)
    config.beam.wavelength_A = 1.5
    config.crystal.phi0_deg, config.crystal.osc_deg = 10.0, 0.5
    header = smv_header_fields(config, detector_geometry(config, **F64))
    assert list(header)[:4] == ["HEADER_BYTES", "DIM", "BYTE_ORDER", "TYPE"]
    assert list(header)[-2:] == ["DETECTOR_SN", "BEAMLINE"]
    assert header["SIZE1"] == "8" and header["PIXEL_SIZE"] == "1" and header["DISTANCE"] == "50"
    assert header["WAVELENGTH"] == "1.5" and header["XDS_ORGX"] == "3" and header["XDS_ORGY"] == "4"
    assert header["OSC_START"] == "10" and header["OSC_RANGE"] == "0.5" and header["TWOTHETA"] == "0"
    assert header["BEAM_CENTER_X"] == "2.5"  # XDS: Xbeam = Xclose = Fclose = (ORGX - 0.5)·Δ
    assert header["DIALS_ORIGIN"] == "50,-3.5,2.5"  # 1000*(pix0_z, pix0_y, -pix0_x)
    assert header["CLOSE_DISTANCE"] == "50" and header["DETECTOR_SN"] == "000"


@pytest.mark.parametrize("change,field", [
    (dict(pixel_mm=0.0), "pixel"),
    (dict(pixel_mm=-0.1), "pixel"),
    (dict(distance_mm=-5.0), "distance"),
    (dict(distance_mm=0.0), "distance"),
    (dict(close_distance_mm=0.0), "close_distance"),
    (dict(convention="CUSTOM", fdet_vector=(0.0, 0.0, 0.0)), "fdet_vector"),
    (dict(convention="CUSTOM", sdet_vector=(0.0, 0.0, 2.0), odet_vector=(0, 0, 3)), "sdet_vector"),
    (dict(convention="CUSTOM", twotheta_axis=(0.0, 0.0, 2.0)), "twotheta_axis"),
    (dict(rot_deg=(0.0, 90.0, 0.0)), "detector_rot_deg"),
    (dict(convention="NOPE"), "convention"),
    (dict(roi=(5, 2, 0, 1)), "roi"),
    (dict(mask=np.ones((3, 3))), "mask"),
    (dict(thickness_um=-1.0), "detector_thick"),
    (dict(detsize_f_mm=-1.0, fpixels=None), "detsize_f"),
])
def test_impossible_input_raises(change, field) -> None:
    config = _mosflm(**change)
    with pytest.raises(InputError) as err:
        detector_geometry(config, **F64)
    assert err.value.field == field


def test_impossible_parameter_raises() -> None:
    with pytest.raises(InputError) as err:
        detector_geometry(_mosflm(), {"distance_mm": torch.tensor(-1.0, **F64)}, **F64)
    assert err.value.field == "distance"
