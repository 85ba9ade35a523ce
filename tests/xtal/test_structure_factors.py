"""Structure factors: direct summation vs gemmi, FFT vs direct, gradients."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.spreading import single_axis
from equipoise.xtal.structure_factors import FFTStructureFactors, direct_structure_factors
from equipoise.xtal.synthetic import random_structure


def _atoms(st):
    m = AtomModel.from_structure(st, hydrogens="keep")
    return m.elements, m.xyz, m.b_iso, m.occ


def _hkl(st, d_min):
    sg = st.find_spacegroup()
    hkl = np.asarray(gemmi.make_miller_array(st.cell, sg, d_min, 0, True))
    hkl = hkl[~np.asarray(sg.operations().systematic_absences(hkl), dtype=bool)]
    return torch.as_tensor(hkl[np.abs(hkl).sum(1) > 0], dtype=torch.int64)


def _r(a, b):
    return float((a.abs() - b.abs()).abs().sum() / b.abs().sum())


# orthogonal axes (separable spreading), one axis orthogonal to an oblique pair (monoclinic,
# hexagonal: blocked spreading), all oblique (triclinic: per-node spreading)
CELLS = [("P 21 21 21", (12, 13, 14, 90, 90, 90)), ("P 1 21 1", (9.6, 9.6, 19.0, 90, 101.2, 90)),
         ("P 32 2 1", (11, 11, 14, 90, 90, 120)), ("P 1", (9, 10, 11, 80, 95, 105))]


@pytest.mark.parametrize("sg,cell", [*CELLS, ("C 1 2 1", (16, 11, 12, 90, 105, 90))])
def test_direct_and_fft_match_gemmi(sg, cell):
    st = random_structure(10, cell, sg, seed=1)
    el, xyz, b, occ = _atoms(st)
    hkl = _hkl(st, 1.6)
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    ref = torch.tensor([calc.calculate_sf_from_model(st[0], list(map(int, h))) for h in hkl], dtype=torch.complex128)
    direct = direct_structure_factors(hkl, xyz, b, occ, el, st.cell, st.find_spacegroup())
    assert _r(direct, ref) < 1e-6
    assert torch.allclose(direct, ref, atol=1e-4 * float(ref.abs().max()))
    fft = FFTStructureFactors(hkl, st.cell, st.find_spacegroup(), el)(xyz, b, occ)
    assert _r(fft, ref) < 1e-3
    assert torch.allclose(fft, ref, atol=1e-3 * float(ref.abs().max()))


def test_anisotropic_atoms_fft_matches_direct():
    st = random_structure(8, (12, 13, 14, 90, 90, 90), "P 21 21 21", seed=2)
    el, xyz, b, occ = _atoms(st)
    hkl = _hkl(st, 1.8)
    u = torch.zeros(len(el), 6, dtype=torch.float64)
    u[::2, :3] = torch.tensor([0.15, 0.10, 0.20], dtype=torch.float64)
    u[::2, 3] = 0.03
    direct = direct_structure_factors(hkl, xyz, b, occ, el, st.cell, st.find_spacegroup(), u)
    fft = FFTStructureFactors(hkl, st.cell, st.find_spacegroup(), el)(xyz, b, occ, u)
    assert _r(fft, direct) < 1e-3
    # anisotropic atoms go on the grid a chunk at a time: the chunk size changes nothing
    small = FFTStructureFactors(hkl, st.cell, st.find_spacegroup(), el, chunk_points=3000)(xyz, b, occ, u)
    assert torch.allclose(small, fft, rtol=1e-5, atol=1e-6 * float(fft.abs().max()))
    iso = direct_structure_factors(hkl, xyz, b, occ, el, st.cell, st.find_spacegroup())
    assert _r(iso, direct) > 1e-2     # U is used, not B


def test_direct_gradcheck():
    st = random_structure(3, (8, 9, 10, 90, 90, 90), "P 21 21 21", seed=3)
    el, xyz, b, occ = _atoms(st)
    hkl = _hkl(st, 3.0)[:12]
    g = st.find_spacegroup()

    def f(x, bb, o):
        fc = direct_structure_factors(hkl, x, bb, o, el, st.cell, g)
        return torch.cat([fc.real, fc.imag])

    assert torch.autograd.gradcheck(f, (xyz.requires_grad_(), b.requires_grad_(), occ.requires_grad_()))


@pytest.mark.parametrize("sg,cell", CELLS)
def test_fft_gradients_match_direct(sg, cell):
    st = random_structure(6, cell, sg, seed=4)
    el, xyz, b, occ = _atoms(st)
    hkl = _hkl(st, 2.0)
    w = torch.linspace(0.5, 1.5, len(hkl), dtype=torch.float64)
    grads = []
    for fn in (lambda x, bb, o: direct_structure_factors(hkl, x, bb, o, el, st.cell, st.find_spacegroup()),
               FFTStructureFactors(hkl, st.cell, st.find_spacegroup(), el)):
        p = [t.clone().requires_grad_() for t in (xyz, b, occ)]
        (w * fn(*p).abs() ** 2).sum().backward()
        grads.append([t.grad for t in p])
    # P1 (6 atoms, no symmetry): the xyz gradient is 1e-2 off at the default tolerance 5e-3, the
    # spreading cut-off (8e-5 at 1e-4; an orthogonal P1 cell is 1.6e-2 off too, so not the
    # oblique path); the amplitudes are within 1e-3 either way, the other cells within 1e-3
    bound = 1.5e-2 if sg == "P 1" else 2e-3
    for g_fft, g_dir in zip(grads[1], grads[0]):
        assert float((g_fft - g_dir).norm() / g_dir.norm()) < bound


@pytest.mark.parametrize("cell,axis", [((12, 13, 14, 90, 90, 90), None), ((9.6, 9.6, 19.0, 90, 101.2, 90), 1),
                                       ((11, 11, 14, 90, 90, 120), 2), ((9, 10, 11, 80, 95, 105), None)])
def test_single_axis_of_the_grid(cell, axis):
    orth = torch.tensor(gemmi.UnitCell(*cell).orth.mat.tolist(), dtype=torch.float64) / 40.0
    assert single_axis(orth) == axis
