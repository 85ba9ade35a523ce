"""``equipoise diffraction simulate``: nanoBragg command lines end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equipoise.cli import main
from equipoise.diffraction.io import read_raw_float32, read_smv

if importlib.util.find_spec("equipoise.diffraction.simulate") is None:  # pragma: no cover
    pytest.skip("equipoise.diffraction.simulate is not written yet", allow_module_level=True)

SMALL = ["-cell", "100", "100", "100", "90", "90", "90", "-default_F", "100", "-lambda", "6.2", "-N", "5",
         "-distance", "100", "-detpixels", "32", "-pixel", "0.8"]


def _pgm(path: Path) -> tuple[list[bytes], np.ndarray]:
    raw = path.read_bytes()
    lines = raw.split(b"\n", 4)
    return lines[:4], np.frombuffer(lines[4], dtype=np.uint8)


def test_simulate_writes_nanobragg_default_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["diffraction", "simulate", *SMALL, "-seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "max_I" in out and "rmsd" in out and "intimage.img" in out
    image = read_raw_float32(tmp_path / "floatimage.bin", (32, 32))
    assert image.max() > 0 and np.isfinite(image).all()
    header, ints = read_smv(tmp_path / "intimage.img")
    assert (header["SIZE1"], header["SIZE2"], header["PIXEL_SIZE"], header["WAVELENGTH"]) == ("32", "32", "0.8", "6.2")
    assert ints.max() == round(55000 + 40)  # 55000/max_I scaling + adc
    _, noisy = read_smv(tmp_path / "noiseimage.img")
    assert noisy.shape == (32, 32) and noisy.min() >= 40
    head, pixels = _pgm(tmp_path / "image.pgm")
    assert head[0] == b"P5" and head[1] == b"32 32" and head[3] == b"255" and pixels.size == 32 * 32
    # the same seed gives the same noise image
    first = (tmp_path / "noiseimage.img").read_bytes()
    assert main(["diffraction", "simulate", "--quiet", *SMALL, "-seed", "5"]) == 0
    assert (tmp_path / "noiseimage.img").read_bytes() == first
    assert capsys.readouterr().out == ""


def test_simulate_named_files_dev_null_and_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [*SMALL, "-floatfile", "out/f.bin", "-intfile", "/dev/null", "-nopgm", "-nonoise", "-scale", "2",
            "-adc", "0", "-mode", "nanobragg", "-dtype", "float32"]
    (tmp_path / "out").mkdir()
    assert main(["diffraction", "simulate", "--quiet", *argv]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["f.bin"]
    assert (tmp_path / "out" / "f.bin").stat().st_size == 32 * 32 * 4


def test_simulate_from_toml_with_flag_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim.toml").write_text(
        "[crystal]\ncell = [100, 100, 100, 90, 90, 90]\nn_cells = [5, 5, 5]\ndefault_F = 100\n"
        "[beam]\nwavelength_A = 6.2\n[detector]\ndistance_mm = 100\nfpixels = 16\nspixels = 16\npixel_mm = 0.8\n"
        "[output]\nfloatfile = 'toml.bin'\n")
    assert main(["diffraction", "simulate", "--config", "sim.toml", "--quiet", "-detpixels_y", "8",
                 "-nopgm", "-nonoise", "-intfile", "i.img"]) == 0
    assert (tmp_path / "toml.bin").stat().st_size == 16 * 8 * 4
    assert read_smv(tmp_path / "i.img")[1].shape == (8, 16)


def test_simulate_reports_input_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["diffraction", "simulate", *SMALL, "-lamda", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag '-lamda'" in err and "did you mean '-lambda'" in err
    assert main(["diffraction", "simulate"]) == 2
    assert "no flags given" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_help_does_not_import_torch() -> None:
    code = ("import sys, equipoise.cli as c; c.build_parser(); "
            "print('torch' in sys.modules, 'equipoise.diffraction.simulate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ------------------------------------------------------------------ checked before any work
def test_unwritable_outputs_are_reported_before_simulating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["diffraction", "simulate", *SMALL, "-floatfile", str(tmp_path / "nonexistent" / "x.bin")]) == 2
    err = capsys.readouterr().err
    assert "-floatfile" in err and "does not exist" in err and "Traceback" not in err
    (tmp_path / "adir").mkdir()
    assert main(["diffraction", "simulate", *SMALL, "-intfile", "adir"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "floatimage.bin").exists(), "nothing written before the checks pass"


def test_all_zero_image_is_an_error_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    no_f = [a for i, a in enumerate(SMALL) if a != "-default_F" and SMALL[i - 1] != "-default_F"]
    assert main(["diffraction", "simulate", *no_f, "-nonoise", "-nopgm"]) == 2
    assert "neither -hkl nor -default_F" in capsys.readouterr().err
    assert not (tmp_path / "floatimage.bin").exists()
    assert main(["diffraction", "simulate", *no_f, "-nonoise", "-nopgm", "--allow-zero-image"]) == 0
    assert "warning: neither -hkl nor -default_F" in capsys.readouterr().err
    assert not read_raw_float32(tmp_path / "floatimage.bin", (32, 32)).any()
