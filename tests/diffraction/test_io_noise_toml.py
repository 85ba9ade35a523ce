"""Integer/noise images (equipoise.diffraction.noise) and TOML configs (toml_config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from equipoise.diffraction.noise import int_image, intfile_scale, noise_image
from equipoise.diffraction.toml_config import load_toml_config
from equipoise.errors import InputError


def test_noise_is_reproducible_with_a_seed() -> None:
    image = np.full((40, 50), 20.0)
    image[0, 0] = 1e6
    a = noise_image(image, seed=-12, adc=40.0)
    b = noise_image(torch.as_tensor(image), seed=-12, adc=40.0)
    c = noise_image(image, seed=-13, adc=40.0)
    assert np.array_equal(a.pixels, b.pixels) and not np.array_equal(a.pixels, c.pixels)
    assert a.pixels.dtype == np.uint16 and a.seed == -12
    assert a.pixels[0, 0] == 65535 and a.overloads == 1
    body = a.pixels.astype(float)[1:]
    assert abs(body.mean() - 60.0) < 0.5 and abs(body.var() - 20.0) < 3.0  # Poisson(20) + 40


def test_noise_handles_negative_and_nan() -> None:
    out = noise_image(np.array([[-5.0, np.nan]]), seed=1, adc=10.0)
    assert out.pixels.tolist() == [[10, 10]]


def test_intfile_conversion() -> None:
    image = np.array([[0.0, 1.0], [2.0, 1e9]])
    assert intfile_scale(2.0) == 27500.0 and intfile_scale(2.0, 3.0) == 3.0 and intfile_scale(0.0) == 1.0
    assert int_image(image, 10.0, 40.0).tolist() == [[40, 50], [60, 65535]]
    assert int_image(np.array([[0.26]]), 10.0, 0.0).tolist() == [[3]]  # round(2.6)
    assert int_image(np.array([[-10.0]]), 1.0, 0.0).tolist() == [[0]]


def test_toml_config(tmp_path: Path) -> None:
    (tmp_path / "F.hkl").write_text("0 0 1 10\n")
    (tmp_path / "sim.toml").write_text(
        'mode = "nanobragg"\nwater_um = 5\n'
        '[crystal]\ncell = [100, 100, 100, 90, 90, 90]\nn_cells = [5, 5, 5]\ndefault_F = 3\nhkl = "F.hkl"\n'
        'misset_deg = [1, 2, 3]\nshape = "gauss"\n'
        '[beam]\nwavelength_A = 6.2\nsources = [[-10, 0, 0, 1, 1.0], [-10, 0, 0]]\n'
        '[detector]\ndistance_mm = 100\nfpixels = 64\nspixels = 32\nconvention = "XDS"\n'
        '[output]\nfloatfile = "a.bin"\n')
    cfg = load_toml_config(tmp_path / "sim.toml")
    assert cfg.mode == "nanobragg" and cfg.water_um == 5.0
    assert cfg.crystal.cell == (100.0, 100.0, 100.0, 90.0, 90.0, 90.0) and cfg.crystal.shape == "gauss"
    assert cfg.crystal.hkl.values.shape == (1, 1, 1) and cfg.crystal.hkl.values[0, 0, 0] == 10.0
    assert cfg.beam.wavelength_A == 6.2 and cfg.beam.sources.shape == (2, 5) and np.isnan(cfg.beam.sources[1, 3])
    assert (cfg.detector.fpixels, cfg.detector.spixels, cfg.detector.convention) == (64, 32, "XDS")
    assert cfg.output.floatfile == "a.bin"


@pytest.mark.parametrize("body, key, words", [
    ("[beam]\nwavelenght_A = 1\n", "beam.wavelenght_A", "did you mean 'wavelength_A'"),
    ("bogus = 1\n", "bogus", "unknown key"),
    ("[beam]\nwavelength_A = 0\n", "beam.wavelength_A", "positive"),
    ("[beam]\nwavelength_A = 'one'\n", "beam.wavelength_A", "a number"),
    ("[crystal]\ncell = [1, 2]\n", "crystal.cell", "a list of 6"),
    ("[detector]\nfpixels = 1.5\n", "detector.fpixels", "an integer"),
    ("mode = 'fast'\n", "mode", "'physical'"),
])
def test_toml_errors_name_key_and_file(tmp_path: Path, body: str, key: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(InputError) as err:
        load_toml_config(path)
    assert err.value.field == key and err.value.path == str(path) and words in str(err.value)


def test_toml_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text("[beam\n")
    with pytest.raises(InputError, match="malformed TOML"):
        load_toml_config(tmp_path / "x.toml")
