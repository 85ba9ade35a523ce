"""nanoBragg command-line parsing (equipoise.diffraction.flags)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from equipoise.diffraction.flags import (
    FLAGS,
    IgnoredFlagWarning,
    parse_command_file,
    parse_nanobragg_args,
    split_command_line,
)
from equipoise.diffraction.io import write_smv
from equipoise.errors import InputError
from tests.diffraction.golden import GOLDEN

DOCS = Path(__file__).resolve().parents[2] / "docs" / "diffraction.md"

# case -> (cell, n_cells, wavelength_A, fpixels, pixel_mm, convention, extra checks)
EXPECTED = {
    "simple_cubic": dict(cell=(100, 100, 100, 90, 90, 90), n=(5, 5, 5), wl=6.2, fpix=1024, pixel=0.1),
    "cubic_tilted_detector": dict(cell=(100, 100, 100, 90, 90, 90), n=(5, 5, 5), wl=6.2, fpix=None, pixel=0.1),
    "gauss_xtal": dict(cell=(60, 60, 60, 90, 90, 90), n=(6, 6, 6), wl=1.5, fpix=256, pixel=0.3),
    "round_xtal": dict(cell=(60, 60, 60, 90, 90, 90), n=(6, 6, 6), wl=1.5, fpix=256, pixel=0.3),
    "tophat_spots": dict(cell=(60, 60, 60, 90, 90, 90), n=(6, 6, 6), wl=1.5, fpix=256, pixel=0.3),
    "hkl_interpolate": dict(cell=(50, 55, 60, 90, 90, 90), n=(2, 2, 2), wl=1.0, fpix=256, pixel=0.2),
    "mosaic_domains": dict(cell=(100, 100, 100, 90, 90, 90), n=(5, 5, 5), wl=6.2, fpix=256, pixel=0.4),
    "phi_oscillation": dict(cell=(70, 80, 90, 90, 90, 90), n=(5, 5, 5), wl=1.0, fpix=256, pixel=0.4),
    "polar_divergence_dispersion": dict(cell=(100, 100, 100, 90, 90, 90), n=(10, 10, 10), wl=1.2, fpix=256,
                                        pixel=0.5),
    "thick_detector_oversample": dict(cell=(70, 70, 70, 90, 90, 90), n=(5, 5, 5), wl=1.0, fpix=256, pixel=0.2),
    "triclinic_P1": dict(cell=(70, 80, 90, 75, 85, 95), n=(5, 5, 5), wl=1.0, fpix=512, pixel=0.1),
    "xds_twotheta": dict(cell=(80, 90, 100, 90, 100, 90), n=(8, 8, 8), wl=1.0, fpix=384, pixel=0.2),
}


def _golden(case: str) -> Path:
    path = GOLDEN / case / "command.txt"
    if not path.is_file():
        pytest.skip(f"golden case {case} not found at {path} (../shared not present)")
    return path


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_golden_command_lines_parse(case: str) -> None:
    cfg = parse_command_file(_golden(case))
    exp = EXPECTED[case]
    assert cfg.crystal.cell == tuple(float(x) for x in exp["cell"])
    assert cfg.crystal.n_cells == tuple(float(x) for x in exp["n"])
    assert cfg.beam.wavelength_A == exp["wl"]
    assert cfg.detector.fpixels == exp["fpix"] and cfg.detector.spixels == exp["fpix"]
    assert cfg.detector.pixel_mm == exp["pixel"]


def test_golden_specific_fields() -> None:
    tilted = parse_command_file(_golden("cubic_tilted_detector"))
    assert tilted.detector.rot_deg == (5.0, 3.0, 2.0)
    assert tilted.detector.twotheta_deg == 15.0
    assert (tilted.detector.xbeam_mm, tilted.detector.ybeam_mm) == (61.2, 61.2)
    assert tilted.detector.detsize_f_mm == tilted.detector.detsize_s_mm == 102.4
    assert tilted.detector.pivot == "SAMPLE"  # -twotheta comes last; the MOSFLM convention still forces BEAM
    xds = parse_command_file(_golden("xds_twotheta"))
    assert xds.detector.convention == "XDS"
    assert (xds.detector.orgx_px, xds.detector.orgy_px) == (200.0, 180.0)
    assert xds.crystal.misset_deg == (10.0, -20.0, 30.0)
    hkl = parse_command_file(_golden("hkl_interpolate"))
    assert hkl.crystal.hkl is not None and hkl.crystal.hkl.values.ndim == 3
    assert hkl.crystal.hkl.source.endswith("P1.hkl.gz")
    assert parse_command_file(_golden("gauss_xtal")).crystal.shape == "gauss"
    assert parse_command_file(_golden("round_xtal")).crystal.shape == "round"
    assert parse_command_file(_golden("tophat_spots")).crystal.shape == "tophat"
    mosaic = parse_command_file(_golden("mosaic_domains"))
    assert (mosaic.crystal.mosaic_spread_deg, mosaic.crystal.mosaic_domains, mosaic.detector.oversample) == (1.0, 10, 2)
    phi = parse_command_file(_golden("phi_oscillation"))
    assert (phi.crystal.phi0_deg, phi.crystal.osc_deg, phi.crystal.phisteps) == (0.0, 0.5, 5)
    pdd = parse_command_file(_golden("polar_divergence_dispersion"))
    assert (pdd.beam.polarization, pdd.beam.divergence_mrad, pdd.beam.hdivsteps, pdd.beam.vdivsteps) == (1.0, 0.5, 3, 3)
    assert (pdd.beam.dispersion_pct, pdd.beam.dispsteps) == (0.5, 3)
    thick = parse_command_file(_golden("thick_detector_oversample"))
    assert (thick.detector.thickness_um, thick.detector.absorption_um, thick.detector.thicksteps) == (450.0, 500.0, 5)
    tri = parse_command_file(_golden("triclinic_P1"))
    assert tri.crystal.misset_deg == (-89.968546, -31.328953, 177.753396)
    assert tri.crystal.default_F == 100.0


@pytest.mark.parametrize("flag, hint", [("-lamda", "-lambda"), ("-distanc", "-distance"),
                                        ("-detpixel", "-detpixels"), ("-mosaic_domans", "-mosaic_domains")])
def test_misspelt_flag_suggests_closest(flag: str, hint: str) -> None:
    with pytest.raises(InputError) as err:
        parse_nanobragg_args(["-cell", "1", "1", "1", "90", "90", "90", flag, "1"])
    assert repr(flag) in str(err.value) and repr(hint) in str(err.value)
    assert err.value.field == flag


@pytest.mark.parametrize("argv, words", [
    (["-lambda"], "expected 1 value"),
    (["-cell", "100", "100", "100", "90", "90"], "expected 6 value"),
    (["-lambda", "abc"], "expected a number"),
    (["-N", "5.5"], "expected an integer"),
    (["-lambda", "0"], "positive"),
    (["-pixel", "-0.1"], "positive"),
    (["-distance", "-100"], "positive"),
    (["-detpixels", "0"], "positive"),
    (["-cell", "100", "100", "100", "90", "180", "90"], "between 0 and 180"),
    (["-fdet_vector", "0", "0", "0"], "non-zero vector"),
    (["-roi", "10", "5", "0", "4"], "xmin <= xmax"),
    (["-mode", "fast"], "physical, nanobragg"),
    (["-device", "gpu"], "cpu, cuda"),
    (["-lambda", "1", "2"], "unexpected value '2'"),
])
def test_bad_values_name_flag_and_expectation(argv: list[str], words: str) -> None:
    with pytest.raises(InputError) as err:
        parse_nanobragg_args(argv)
    assert words in str(err.value)
    if argv[0] != "-lambda" or len(argv) == 2:
        assert argv[0] in str(err.value)


def test_aliases_and_conversions() -> None:
    cfg = parse_nanobragg_args(["-wave", "1.5", "-Na", "3", "-Nc", "7", "-xtal_y", "0.01", "-detpixels_x", "100",
                                "-detpixels_y", "50", "-detsize_s", "20", "-mosaic_spread", "0.2", "-mosaic_dom", "4",
                                "-binary_spots", "-thicksteps", "3", "-detector_abs", "inf", "-floatimage", "f.bin",
                                "-memory_budget", "256", "-dtype", "float32", "-device", "cuda:1"])
    assert cfg.beam.wavelength_A == 1.5
    assert cfg.crystal.n_cells == (3.0, 1.0, 7.0)
    assert cfg.crystal.size_mm == (None, 0.01, None)
    assert (cfg.detector.fpixels, cfg.detector.spixels, cfg.detector.detsize_s_mm) == (100, 50, 20.0)
    assert (cfg.crystal.mosaic_spread_deg, cfg.crystal.mosaic_domains, cfg.crystal.shape) == (0.2, 4, "tophat")
    assert cfg.detector.thicksteps == 3 and math.isinf(cfg.detector.absorption_um)
    assert cfg.output.floatfile == "f.bin"
    assert cfg.memory_budget_bytes == 256 << 20 and cfg.dtype == "float32" and cfg.device == "cuda:1"
    assert parse_nanobragg_args(["-energy", "12398.42"]).beam.wavelength_A == pytest.approx(1.0)


def test_seeds_are_negated_like_nanobragg() -> None:
    cfg = parse_nanobragg_args(["-mosaic_seed", "42", "-misset_seed", "7", "-seed", "3"])
    assert (cfg.crystal.mosaic_seed, cfg.crystal.misset_seed, cfg.output.seed) == (-42, -7, -3)


def test_misset_random_and_angles() -> None:
    cfg = parse_nanobragg_args(["-misset", "random", "-N", "2"])
    assert cfg.crystal.misset_random and cfg.crystal.misset_deg is None and cfg.crystal.n_cells == (2.0,) * 3
    assert parse_nanobragg_args(["-misset", "-1", "2.5", "-3"]).crystal.misset_deg == (-1.0, 2.5, -3.0)


def test_vector_flags_switch_to_custom_and_convention_flags_back() -> None:
    cfg = parse_nanobragg_args(["-xds", "-fdet_vector", "0", "0", "2", "-pix0_vector", "0.1", "0.02", "-0.03"])
    assert cfg.detector.convention == "CUSTOM"
    assert cfg.detector.fdet_vector == (0.0, 0.0, 2.0) and cfg.detector.pix0_vector_m == (0.1, 0.02, -0.03)
    assert cfg.detector.pivot == "SAMPLE"  # from -xds, the last pivot-setting flag
    later = parse_nanobragg_args(["-beam_vector", "0", "0", "1", "-mosflm"])
    assert later.detector.convention == "MOSFLM" and later.beam.beam_vector == (0.0, 0.0, 1.0)
    pivot = parse_nanobragg_args(["-polar_vector", "0", "1", "0", "-close_distance", "90", "-Xbeam", "10"])
    assert pivot.detector.convention == "CUSTOM" and pivot.detector.pivot == "BEAM"
    assert parse_nanobragg_args(["-pivot", "sample"]).detector.pivot == "SAMPLE"
    assert parse_nanobragg_args(["-lambda", "1"]).detector.pivot is None


def test_output_switches_follow_flag_order() -> None:
    assert parse_nanobragg_args(["-pgmfile", "a.pgm", "-nopgm"]).output.write_pgm is False
    cfg = parse_nanobragg_args(["-nopgm", "-pgmscale", "2", "-nonoise", "-noisefile", "n.img"])
    assert cfg.output.write_pgm and cfg.output.pgmscale == 2.0
    assert cfg.output.write_noise and cfg.output.noisefile == "n.img"
    cfg = parse_nanobragg_args(["-nopolar", "-scale", "3", "-adc", "10"])
    assert cfg.beam.nopolar and cfg.output.scale == 3.0 and cfg.output.adc == 10.0
    assert parse_nanobragg_args(["-nopolar", "-polar", "0.5"]).beam.nopolar is False


def test_ignored_flags_warn() -> None:
    with pytest.warns(IgnoredFlagWarning, match="-printout"):
        cfg = parse_nanobragg_args(["-printout", "-lambda", "2"])
    assert cfg.beam.wavelength_A == 2.0


def test_input_files_are_read_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "F.hkl").write_text("0 0 1 10\n1 0 0 20\n")
    (tmp_path / "a.mat").write_text("0.01 0 0\n0 0.02 0\n0 0 0.03\n")
    (tmp_path / "src.txt").write_text("-10 0 0 1 1e-10\n-10 0.01 0\n")
    cfg = parse_nanobragg_args(["-hkl", "F.hkl", "-default_F", "3", "-mat", "a.mat", "-sourcefile", "src.txt"],
                               base_dir=tmp_path)
    assert cfg.crystal.hkl.values.shape == (2, 1, 2)
    assert cfg.crystal.hkl.values[0, 0, 0] == 3.0  # unlisted point gets -default_F given after -hkl
    assert cfg.crystal.a_matrix[1, 1] == 0.02 and cfg.crystal.a_matrix_source.endswith("a.mat")
    assert cfg.beam.sources.shape == (2, 5) and np.isnan(cfg.beam.sources[1, 3:]).all()
    with pytest.raises(InputError, match="file not found"):
        parse_nanobragg_args(["-hkl", "missing.hkl"], base_dir=tmp_path)


def test_mask_and_img_import_header_geometry(tmp_path: Path) -> None:
    mask = np.ones((4, 6), dtype=np.uint16)
    mask[0, 0] = 0
    fields = {"PIXEL_SIZE": "0.2", "DISTANCE": "150", "WAVELENGTH": "1.1", "BEAM_CENTER_X": "0.3",
              "BEAM_CENTER_Y": "0.5", "PHI": "10", "OSC_RANGE": "0.5"}
    write_smv(tmp_path / "mask.img", mask, fields)
    cfg = parse_nanobragg_args(["-mask", "mask.img", "-distance", "120"], base_dir=tmp_path)
    det = cfg.detector
    assert (det.spixels, det.fpixels, det.pixel_mm, det.distance_mm) == (4, 6, 0.2, 120.0)  # flag wins
    assert det.xbeam_mm == 0.3 and det.ybeam_mm == pytest.approx(0.8 - 0.5)  # -mask: detsize_s - Y
    assert cfg.beam.wavelength_A == 1.1 and (cfg.crystal.phi0_deg, cfg.crystal.osc_deg) == (10.0, 0.5)
    assert det.mask.shape == (4, 6) and not det.mask[0, 0] and det.mask[1, 1]
    img = parse_nanobragg_args(["-img", "mask.img"], base_dir=tmp_path)
    assert img.detector.ybeam_mm == 0.5 and img.detector.mask is None


def test_split_command_line_drops_program_name() -> None:
    assert split_command_line("nanoBragg -N 5 \\\n -lambda 1  # comment\n") == ["-N", "5", "-lambda", "1"]
    assert split_command_line("-N 5") == ["-N", "5"]


def test_docs_list_every_flag() -> None:
    if not DOCS.is_file():
        pytest.fail(f"{DOCS} is missing")
    text = DOCS.read_text()
    missing = [spec.names[0] for spec in FLAGS if f"`{spec.names[0]}" not in text]
    assert not missing, f"flags not documented in docs/diffraction.md: {missing}"
