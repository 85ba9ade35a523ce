"""Sources, polarization and fluence against nanoBragg (golden run.log) and unit checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.geometry import detector_geometry
from equipoise.diffraction.sources import (DEFAULT_FLUENCE, beam_sources, divergence_grid, fluence,
                                           polarization_factor, wavelength_m)
from equipoise.errors import InputError
from tests.diffraction.golden import GOLDEN

CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "run.log").exists()) if GOLDEN.is_dir() else []
F64 = dict(dtype=torch.float64, device=torch.device("cpu"))
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _close_to_print(actual: float, printed: float) -> bool:
    """``actual`` agrees with a ``%g`` printout (6 significant digits)."""
    tol = 1e-9 if printed == 0 else 0.51 * 10 ** (math.floor(math.log10(abs(printed))) - 5)
    return abs(actual - printed) <= tol


def printed_sources(text: str) -> np.ndarray:
    """Rows ``X Y Z weight lambda`` after "created a total of N sources:"."""
    m = re.search(r"created a total of (\d+) sources:\n", text)
    lines = text[m.end():].splitlines()[: int(m.group(1))]
    return np.array([[float(x) for x in line.split()] for line in lines])


@pytest.mark.skipif(not CASES, reason=f"golden data absent: {GOLDEN} not found")
@pytest.mark.parametrize("case", CASES)
def test_sources_match_nanobragg_run_log(case: str) -> None:
    from equipoise.diffraction.flags import parse_command_file

    text = (GOLDEN / case / "run.log").read_text()
    config = parse_command_file(GOLDEN / case / "command.txt")
    geom = detector_geometry(config, **F64)
    sources = beam_sources(config, geom, **F64)
    rows = printed_sources(text)
    assert sources.position.shape == (len(rows), 3)
    for k, row in enumerate(rows):
        for a, p in zip(sources.position[k].tolist() + [float(sources.wavelength[k])], list(row[:3]) + [row[4]]):
            assert _close_to_print(a, p), f"{case} source {k}: computed {a!r}, nanoBragg printed {p!r}"
    assert torch.allclose(sources.incident, -sources.position / 10.0)
    steps = int(re.search(r"(\d+) divergence steps", text).group(1))
    assert len(divergence_grid(config)) == steps
    lam0 = float(re.search(rf"wave=({_NUM}) meters", text).group(1))
    assert _close_to_print(float(wavelength_m(config, **F64)), lam0)
    flu = float(re.search(rf"incident fluence: ({_NUM}) photons", text).group(1))
    assert _close_to_print(float(fluence(config, **F64)), flu)


def test_polar_divergence_dispersion_order() -> None:
    """The 15 sources of golden polar_divergence_dispersion, rebuilt by hand (h outer, v inner, λ innermost)."""
    config = SimulationConfig()
    beam = config.beam
    beam.wavelength_A, beam.divergence_mrad, beam.hdivsteps, beam.vdivsteps = 1.2, 0.5, 3, 3
    beam.dispersion_pct, beam.dispsteps = 0.5, 3
    sources = beam_sources(config, detector_geometry(config, **F64), **F64)
    expect_pos = [(0, 0.0025), (0.0025, 0), (0, 0), (-0.0025, 0), (0, -0.0025)]  # (Y, Z) of each accepted point
    for k in range(15):
        y, z = expect_pos[k // 3]
        assert sources.position[k, 1].item() == pytest.approx(y, abs=1e-9)
        assert sources.position[k, 2].item() == pytest.approx(z, abs=1e-9)
        assert sources.wavelength[k].item() == pytest.approx(1.2e-10 * (0.9975, 1.0, 1.0025)[k % 3], rel=1e-12)


def test_square_div_keeps_corners() -> None:
    config = SimulationConfig()
    config.beam.divergence_mrad, config.beam.hdivsteps, config.beam.vdivsteps = 0.5, 3, 3
    assert len(divergence_grid(config)) == 5
    config.beam.round_div = False
    assert len(divergence_grid(config)) == 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_single_source(dtype) -> None:
    kind = dict(dtype=dtype, device=torch.device("cpu"))
    config = SimulationConfig()
    config.detector.convention = "XDS"
    sources = beam_sources(config, detector_geometry(config, **kind), **kind)
    assert torch.equal(sources.position, torch.tensor([[0.0, 0.0, -10.0]], **kind))
    assert torch.equal(sources.incident, torch.tensor([[0.0, 0.0, 1.0]], **kind))
    assert sources.wavelength.dtype == dtype
    assert sources.wavelength.item() == pytest.approx(1e-10)  # nanoBragg default λ0 = 1 Å


def test_sourcefile_rows_and_defaults() -> None:
    config = SimulationConfig()
    config.beam.wavelength_A = 1.0
    config.beam.sources = np.array([[-10.0, 0.1, 0.0, 1.0, 1.5e-10],
                                    [np.nan, np.nan, np.nan, np.nan, np.nan]])
    sources = beam_sources(config, detector_geometry(config, **F64), **F64)
    assert sources.wavelength.tolist() == pytest.approx([1.5e-10, 1.0e-10])
    assert torch.allclose(sources.position[1], torch.tensor([-10.0, 0.0, 0.0], **F64))
    assert torch.allclose(sources.incident[0], torch.nn.functional.normalize(torch.tensor([10.0, -0.1, 0.0], **F64),
                                                                             dim=0))
    config.beam.sources = np.array([[0.0, 0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(InputError) as err:
        beam_sources(config, detector_geometry(config, **F64), **F64)
    assert err.value.field == "sourcefile" and err.value.line == 1


def test_gradcheck_wavelength() -> None:
    config = SimulationConfig()
    config.beam.divergence_mrad = 0.4
    config.beam.hdivsteps = config.beam.vdivsteps = 3
    config.beam.dispersion_pct, config.beam.dispsteps = 1.0, 4
    config.detector.fpixels = config.detector.spixels = 4
    geom = detector_geometry(config, **F64)

    def run(lam):
        return beam_sources(config, geom, {"wavelength_A": lam}, **F64).wavelength

    lam = torch.tensor(1.3, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (lam,))
    (grad,) = torch.autograd.grad(run(lam).sum(), lam)
    assert grad.item() == pytest.approx(run(lam).sum().item() / 1.3)
    assert grad.item() != 0.0


def test_polarization_limits() -> None:
    incident = torch.tensor([1.0, 0.0, 0.0], **F64)
    polar = torch.tensor([0.0, 0.0, 1.0], **F64)  # MOSFLM E-vector along z
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], **F64)
    # unpolarised (K = 0): ½(1 + cos²2θ)
    assert polarization_factor(incident, d, polar, 0.0).tolist() == pytest.approx([1.0, 0.5, 0.5])
    # fully polarised (K = 1): nothing scattered along E, everything perpendicular to it
    assert polarization_factor(incident, d, polar, 1.0).tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert torch.equal(polarization_factor(incident, d, polar, 1.0, nopolar=True), torch.ones(3, **F64))


def test_polarization_matches_atan2_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    incident = torch.nn.functional.normalize(torch.tensor([1.0, 0.02, -0.01], **F64), dim=0)
    polar = torch.tensor([0.0, 0.0, 1.0], **F64)
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen, **F64), dim=-1)
    kahn = 0.7
    b_in = torch.nn.functional.normalize(torch.linalg.cross(polar, incident), dim=0)
    e_in = torch.nn.functional.normalize(torch.linalg.cross(incident, b_in), dim=0)
    psi = -torch.atan2(d @ b_in, d @ e_in)
    cos2t = d @ incident
    expect = 0.5 * (1 + cos2t ** 2 - kahn * torch.cos(2 * psi) * (1 - cos2t ** 2))
    assert torch.allclose(polarization_factor(incident, d, polar, kahn), expect, atol=1e-14)


def test_polarization_gradient_forward_direction_is_finite() -> None:
    incident = torch.tensor([1.0, 0.0, 0.0], **F64)
    d = torch.tensor([1.0, 0.0, 0.0], **F64, requires_grad=True)
    (grad,) = torch.autograd.grad(polarization_factor(incident, d, torch.tensor([0.0, 0.0, 1.0], **F64), 1.0), d)
    assert torch.all(torch.isfinite(grad))


def test_fluence() -> None:
    config = SimulationConfig()
    assert fluence(config, **F64).item() == DEFAULT_FLUENCE
    config.beam.fluence = 1e24
    assert fluence(config, **F64).item() == 1e24
    config.beam.flux, config.beam.exposure_s, config.beam.beamsize_mm = 1e12, 2.0, 0.05
    assert fluence(config, **F64).item() == pytest.approx(1e12 * 2.0 / 0.05e-3 ** 2)  # flux wins over -fluence
    value = torch.tensor(3e20, **F64, requires_grad=True)
    (grad,) = torch.autograd.grad(fluence(config, {"fluence": value}, **F64), value)
    assert grad.item() == 1.0
    config.beam.beamsize_mm = 0.0
    with pytest.raises(InputError) as err:
        fluence(config, **F64)
    assert err.value.field == "beamsize"


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_bad_wavelength_raises(value: float) -> None:
    config = SimulationConfig()
    config.beam.wavelength_A = value
    with pytest.raises(InputError) as err:
        beam_sources(config, detector_geometry(config, **F64), **F64)
    assert err.value.field == "lambda"


def test_parallel_beam_and_polarization_with_divergence_raises() -> None:
    config = SimulationConfig()
    config.detector.convention = "CUSTOM"
    config.beam.polar_vector = (1.0, 0.0, 0.0)
    config.beam.divergence_mrad, config.beam.hdivsteps, config.beam.vdivsteps = 0.5, 3, 3
    with pytest.raises(InputError) as err:
        beam_sources(config, detector_geometry(config, **F64), **F64)
    assert err.value.field == "polar_vector"
