"""HKL, SMV, raw float, PGM, .npy, MOSFLM matrix and source-file readers/writers."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from equipoise.diffraction.io import (
    image_stats,
    read_hkl,
    read_mosflm_matrix,
    read_npy,
    read_raw_float32,
    read_smv,
    read_sourcefile,
    write_pgm,
    write_raw_float32,
    write_smv,
)
from equipoise.errors import InputError


def test_hkl_grid_comments_default_and_gzip(tmp_path: Path) -> None:
    text = "# h k l F\n\n-1 0 2 5.5\n 1 2 3 7  # trailing comment\n0 0 0 1\n"
    (tmp_path / "a.hkl").write_text(text)
    grid = read_hkl(tmp_path / "a.hkl", default_F=2.0)
    assert grid.lower == (-1, 0, 0) and grid.upper == (1, 2, 3) and grid.values.shape == (3, 3, 4)
    assert grid.values[0, 0, 2] == 5.5 and grid.values[2, 2, 3] == 7.0 and grid.values[1, 0, 0] == 1.0
    assert grid.values[1, 1, 1] == 2.0  # unlisted -> default_F
    with gzip.open(tmp_path / "b.hkl.gz", "wt") as handle:
        handle.write(text)
    assert np.array_equal(read_hkl(tmp_path / "b.hkl", default_F=2.0).values, grid.values)  # .gz fallback
    assert read_hkl(tmp_path / "a.hkl").values[1, 1, 1] == 0.0


@pytest.mark.parametrize("line, words", [("1 2 3", "expected 4 columns"), ("1 2 x 4", "non-numeric"),
                                         ("1 2 3.5 4", "integers"), ("1 2 3 4 5", "found 5")])
def test_hkl_malformed_line_names_file_and_line(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "bad.hkl"
    path.write_text(f"0 0 1 10\n# ok\n{line}\n")
    with pytest.raises(InputError) as err:
        read_hkl(path)
    assert err.value.line == 3 and err.value.path == str(path)
    assert "bad.hkl:3" in str(err.value) and words in str(err.value)


def test_smv_round_trip_and_header_layout(tmp_path: Path) -> None:
    image = (np.arange(30, dtype=np.uint16) * 1000).reshape(5, 6)
    write_smv(tmp_path / "a.img", image, {"PIXEL_SIZE": "0.1", "DISTANCE": 100, "SIZE1": "999"})
    raw = (tmp_path / "a.img").read_bytes()
    assert len(raw) == 512 + image.size * 2
    assert raw.startswith(b"{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
                          b"SIZE1=6;\nSIZE2=5;\nPIXEL_SIZE=0.1;\nDISTANCE=100;\n}\f ")
    header, back = read_smv(tmp_path / "a.img")
    assert header["SIZE1"] == "6" and header["DISTANCE"] == "100" and np.array_equal(back, image)


def test_smv_big_endian_and_long_header(tmp_path: Path) -> None:
    image = np.array([[1, 2], [3, 65535]], dtype=np.uint16)
    head = b"{\nHEADER_BYTES=1024;\nDIM=2;\nBYTE_ORDER=big_endian;\nTYPE=unsigned_short;\nSIZE1=2;\nSIZE2=2;\n}"
    (tmp_path / "b.img").write_bytes(head.ljust(1024, b" ") + image.astype(">u2").tobytes())
    header, back = read_smv(tmp_path / "b.img")
    assert header["BYTE_ORDER"] == "big_endian" and np.array_equal(back, image)
    many = {f"KEY{i}": "x" * 20 for i in range(40)}
    write_smv(tmp_path / "c.img", image, many)
    header, back = read_smv(tmp_path / "c.img")
    assert int(header["HEADER_BYTES"]) == 1536 and header["KEY39"] == "x" * 20 and np.array_equal(back, image)


@pytest.mark.parametrize("content, words", [
    (b"HEADER_BYTES=512;", "must start with '{'"),
    (b"{\nHEADER_BYTES=512;\nSIZE1=2;\nSIZE2=2;\n", "no closing"),
    (b"{\nHEADER_BYTES=512;\nSIZE2=2;\n}", "SIZE1"),
    (b"{\nHEADER_BYTES=abc;\nSIZE1=2;\nSIZE2=2;\n}", "HEADER_BYTES"),
    (b"{\nHEADER_BYTES=512;\nSIZE1=2;\nSIZE2=2;\nTYPE=complex;\n}", "unsupported pixel TYPE"),
    (b"{\nHEADER_BYTES=512;\nSIZE1=200;\nSIZE2=200;\n}", "file too short"),
])
def test_smv_malformed_header_is_an_error(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.img"
    path.write_bytes(content.ljust(512, b" ") + bytes(8))
    with pytest.raises(InputError, match=words) as err:
        read_smv(path)
    assert err.value.path == str(path)


def test_raw_float_round_trip_gzip_and_size_mismatch(tmp_path: Path) -> None:
    image = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    write_raw_float32(tmp_path / "f.bin", image)
    assert (tmp_path / "f.bin").stat().st_size == 48
    assert np.array_equal(read_raw_float32(tmp_path / "f.bin", (3, 4)), image)
    (tmp_path / "f.bin.gz").write_bytes(gzip.compress((tmp_path / "f.bin").read_bytes()))
    assert np.array_equal(read_raw_float32(tmp_path / "f.bin.gz", (3, 4)), image)
    with pytest.raises(InputError, match="needs 64 bytes, found 48"):
        read_raw_float32(tmp_path / "f.bin", (4, 4))


def test_pgm_header_and_default_scaling(tmp_path: Path) -> None:
    image = np.zeros((2, 3), dtype=np.float32)
    image[0, 0], image[1, 2] = 1000.0, 0.5
    scale = write_pgm(tmp_path / "a.pgm", image)
    stats = image_stats(image)
    assert scale == pytest.approx(250.0 / (5.0 * stats.rmsd))
    raw = (tmp_path / "a.pgm").read_bytes()
    head = f"P5\n3 2\n# pixels scaled by {scale:g}\n255\n".encode()
    assert raw.startswith(head) and len(raw) == len(head) + 6
    pixels = np.frombuffer(raw[len(head):], dtype=np.uint8).reshape(2, 3)
    assert pixels[0, 0] == int(1000.0 * scale) and pixels[1, 2] == int(0.5 * scale) and pixels[0, 1] == 0
    write_pgm(tmp_path / "b.pgm", image, scale=100.0)
    raw = (tmp_path / "b.pgm").read_bytes()
    assert raw[-6] == 255 and raw[-1] == 50  # min(255, I*scale)


def test_image_stats_with_mask() -> None:
    image = np.array([[1.0, 9.0], [3.0, 100.0]])
    mask = np.array([[True, True], [True, False]])
    stats = image_stats(image, mask)
    assert stats.max_I == 9.0 and stats.max_index == (0, 1) and stats.n == 3
    assert stats.mean == pytest.approx(13 / 3) and stats.rms == pytest.approx(np.sqrt(91 / 3))


def test_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.eye(3))
    assert np.array_equal(read_npy(tmp_path / "a.npy"), np.eye(3))
    (tmp_path / "b.npy").write_text("not numpy")
    with pytest.raises(InputError, match="b.npy"):
        read_npy(tmp_path / "b.npy")


def test_mosflm_matrix(tmp_path: Path) -> None:
    (tmp_path / "a.mat").write_text(" -0.0123 0.0011 0.002\n0.001 0.0134 -0.0004\n0.0 0.0 0.0111\n"
                                    "1 0 0\n0 1 0\n0 0 1\n 80 90 100 90 90 90\n")
    mat = read_mosflm_matrix(tmp_path / "a.mat")
    assert mat.shape == (3, 3) and mat[0, 0] == -0.0123 and mat[2, 2] == 0.0111
    (tmp_path / "b.mat").write_text("1 0 0\n0 1\n0 0 1\n")
    with pytest.raises(InputError) as err:
        read_mosflm_matrix(tmp_path / "b.mat")
    assert err.value.line == 2 and "b.mat:2" in str(err.value)
    (tmp_path / "c.mat").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(InputError, match="3 rows"):
        read_mosflm_matrix(tmp_path / "c.mat")


def test_sourcefile(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("# X Y Z weight lambda\n-10 0 0 1 1e-10\n-10 0.1 0 2\n-10\n")
    src = read_sourcefile(tmp_path / "s.txt")
    assert src.shape == (3, 5) and src[0, 4] == 1e-10 and src[1, 3] == 2.0
    assert np.isnan(src[1, 4]) and np.isnan(src[2, 1:]).all()
    (tmp_path / "bad.txt").write_text("-10 0 0 1 1.0\n-10 zero 0\n")
    with pytest.raises(InputError) as err:
        read_sourcefile(tmp_path / "bad.txt")
    assert err.value.line == 2
    (tmp_path / "angstrom.txt").write_text("-10 0 0 1 1e-10\n-10 0 0 1 1.5\n")
    with pytest.raises(InputError, match="not in metres") as err:
        read_sourcefile(tmp_path / "angstrom.txt")
    assert err.value.line == 2
