"""Synthetic cases with known truth: tiny random structures, shaken models, simulated data.

``simulated_reflections(structure, d_min, ...)`` computes F_model of a gemmi Structure (atoms,
flat bulk solvent k_sol/B_sol, an overall B) on the unique hkl set (or a template's hkl), adds
Gaussian noise of ``noise`` times each amplitude's mean per set and flags every ``free_every``-th
reflection free. ``twinned_reflections(refl, alpha)`` twins them by the lattice's twin law.
``shake(xyz, rms, seed)`` perturbs coordinates. Used by tests and benchmarks.
"""

from __future__ import annotations

import math
from pathlib import Path

import gemmi
import numpy as np
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.reflections import Reflections, resolution_bins
from equipoise.xtal.solvent import mask_structure_factors
from equipoise.xtal.structure_factors import direct_structure_factors, FFTStructureFactors


def random_structure(n_atoms: int = 12, cell: tuple[float, ...] = (12.0, 13.0, 14.0, 90.0, 90.0, 90.0),
                     spacegroup: str = "P 21 21 21", *, seed: int = 0, b_iso: float = 12.0) -> gemmi.Structure:
    """A gemmi Structure of ``n_atoms`` C/N/O/S atoms at random positions (>= 1.2 Å apart), one
    residue each (residue name UNK), for structure-factor and scaling tests."""
    rng = np.random.default_rng(seed)
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(*cell)
    st.spacegroup_hm = gemmi.SpaceGroup(spacegroup).xhm()
    model = gemmi.Model(1)
    chain = gemmi.Chain("A")
    orth = np.array(st.cell.orth.mat.tolist())
    placed: list[np.ndarray] = []
    elements = ["C", "N", "O", "S"]
    while len(placed) < n_atoms:
        p = orth @ rng.uniform(0.0, 1.0, 3)
        if all(np.linalg.norm(p - q) > 1.2 for q in placed):
            placed.append(p)
    for i, p in enumerate(placed):
        res = gemmi.Residue()
        res.name = "UNK"
        res.seqid = gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        el = elements[i % len(elements)]
        atom.name = el
        atom.element = gemmi.Element(el)
        atom.pos = gemmi.Position(*p)
        atom.b_iso = b_iso + 4.0 * rng.standard_normal()
        atom.occ = 1.0
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    st.setup_cell_images()
    return st


def shake(xyz: torch.Tensor, rms: float, *, seed: int = 0) -> torch.Tensor:
    """xyz (n, 3) Å plus isotropic Gaussian noise with the given overall RMS displacement (Å)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(xyz.shape, generator=g, dtype=torch.float64).to(xyz)
    return xyz + noise * (rms / math.sqrt(3.0))


def simulated_reflections(structure: gemmi.Structure, *, d_min: float | None = None,
                          hkl: np.ndarray | None = None, k_sol: float = 0.35, b_sol: float = 46.0,
                          scale: float = 1.0, noise: float = 0.03, free_every: int = 20,
                          seed: int = 0) -> Reflections:
    """Reflections with F_obs = |scale (F_calc + k_sol exp(-B_sol s^2/4) F_mask)| + noise.

    hkl: (m, 3) indices to use (e.g. a real data set's); else all unique reflections to d_min.
    sigma_f = noise * <F> (constant), so the noise is homoscedastic; free: every
    ``free_every``-th reflection in a seeded random order.
    """
    cell, sg = structure.cell, structure.find_spacegroup()
    if hkl is None:
        hkl = np.asarray(gemmi.make_miller_array(cell, sg, d_min, 0, True), dtype=np.int64)
        ops = sg.operations()
        hkl = hkl[~np.asarray(ops.systematic_absences(hkl.astype(np.int32)), dtype=bool)]
        hkl = hkl[np.abs(hkl).sum(1) > 0]
    hkl_t = torch.as_tensor(hkl, dtype=torch.int64)
    atoms = AtomModel.from_structure(structure, hydrogens="keep")
    elements, xyz_t, b_t, occ_t = atoms.elements, atoms.xyz, atoms.b_iso, atoms.occ
    if len(elements) * len(hkl) <= 2_000_000:
        fc = direct_structure_factors(hkl_t, xyz_t, b_t, occ_t, elements, cell, sg)
    else:
        fc = FFTStructureFactors(hkl_t, cell, sg, elements)(xyz_t, b_t, occ_t)
    d = torch.as_tensor(np.asarray(cell.calculate_d_array(hkl.astype(np.int32))), dtype=torch.float64)
    s2 = 1.0 / d ** 2
    f_mask = mask_structure_factors(structure, hkl_t, d_min=float(d.min()))
    f_true = (scale * (fc + k_sol * torch.exp(-b_sol * s2 / 4.0) * f_mask)).abs()
    g = torch.Generator().manual_seed(seed)
    sigma = noise * float(f_true.mean()) * torch.ones_like(f_true)
    f_obs = (f_true + sigma * torch.randn(f_true.shape, generator=g, dtype=torch.float64)).abs()
    order = torch.randperm(len(hkl), generator=g)
    free = torch.zeros(len(hkl), dtype=torch.bool)
    free[order[::free_every]] = True
    ops = sg.operations()
    centric = torch.as_tensor(np.asarray(ops.centric_flag_array(hkl.astype(np.int32)), dtype=bool))
    epsilon = torch.as_tensor(np.asarray(ops.epsilon_factor_array(hkl.astype(np.int32)), dtype=np.float64))
    bins, n_bins = resolution_bins(d, free, None)
    return Reflections(hkl=hkl_t, f_obs=f_obs, sigma_f=sigma, free=free, d=d, centric=centric, epsilon=epsilon,
                       bin_index=bins, n_bins=n_bins, cell=cell, spacegroup=sg, path="<synthetic>",
                       labels=["FP", "SIGFP", "FreeR_flag"], free_convention="synthetic (True = free)",
                       notes=[f"synthetic: k_sol {k_sol}, B_sol {b_sol}, noise {noise}"])


def write_mtz(refl: Reflections, path: str | Path, *, free_value: int = 0) -> Path:
    """Write reflections as MTZ with FP, SIGFP, FreeR_flag (``free_value`` marks the free set)."""
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = refl.spacegroup
    mtz.set_cell_for_all(refl.cell)
    mtz.add_dataset("synthetic")
    for label, kind in (("FP", "F"), ("SIGFP", "Q"), ("FreeR_flag", "I")):
        mtz.add_column(label, kind)
    flag = torch.where(refl.free, float(free_value), float(1 - free_value) if free_value in (0, 1) else 0.0)
    data = np.column_stack([refl.hkl.numpy().astype(np.float64), refl.f_obs.numpy(), refl.sigma_f.numpy(),
                            flag.numpy()])
    mtz.set_data(data.astype(np.float32))
    mtz.write_to_file(str(path))
    return Path(path)


def twinned_reflections(refl: Reflections, alpha: float, *, noise: float = 0.0, seed: int = 0) -> Reflections:
    """``refl`` with F_obs twinned by the lattice's one twin law T: F = sqrt((1 - alpha) F_obs(h)^2
    + alpha F_obs(T h)^2) times (1 + noise N(0, 1)), sigma_F = noise F (floored); ``InputError``
    unless the lattice has exactly one twin law. A reflection whose mate is not in ``refl``
    keeps its own F for it. The law is in ``notes``."""
    from dataclasses import replace

    from equipoise.errors import InputError
    from equipoise.xtal.twin_model import TwinOperators
    from equipoise.xtal.twinning import hkl_rotation, twin_laws

    laws = twin_laws(refl.cell, refl.spacegroup)
    if len(laws) != 1:
        raise InputError(f"need a lattice with one twin law, {refl.spacegroup.hm} has {len(laws)}", field="cell")
    op = laws[0][0]
    ops = TwinOperators.build(refl.hkl, refl.spacegroup, [op.as_hkl().triplet()], [hkl_rotation(op)])
    f = ops.amplitudes(refl.f_obs, torch.tensor([alpha], dtype=refl.f_obs.dtype))
    g = torch.Generator().manual_seed(seed)
    f = (f * (1.0 + noise * torch.randn(f.shape, generator=g, dtype=f.dtype))).abs()
    sigma = (noise * f).clamp_min(max(noise, 1e-3) * 1e-2 * float(f.mean()))
    return replace(refl, f_obs=f, sigma_f=sigma, i_obs=None, sigma_i=None,
                   notes=[*refl.notes, f"synthetic twin: law {op.as_hkl().triplet()}, fraction {alpha}, noise {noise}"])
