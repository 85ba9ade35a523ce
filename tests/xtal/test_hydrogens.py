"""Riding hydrogens: added at ideal positions, moving with their parents, re-placed after each xyz stage."""

import pytest
import torch

from equipoise.errors import InputError
from equipoise.xtal.hydrogens import RidingHydrogens, add_hydrogens
from equipoise.xtal.model import AtomModel
from equipoise.xtal.refine import RefineOptions, refine
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.restraints import Restraints
from equipoise.xtal.structure_factors import direct_structure_factors
from tests.xtal.shared_data import data_file, monlib_or_skip
from tests.xtal.test_refine import LeastSquaresXray, rmsd


@pytest.fixture(scope="module")
def with_h():
    monlib_or_skip()
    model = add_hydrogens(AtomModel.from_file(data_file("5e5z.pdb.gz")))
    restraints = Restraints.build(model)
    return model, restraints, RidingHydrogens.build(model, restraints)


def test_added_hydrogens_ride_on_their_parents(with_h):
    model, restraints, riding = with_h
    heavy = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    assert model.hydrogens == "riding" and model.n_atoms > heavy.n_atoms
    assert not any(lab.startswith("A/HOH") and model.elements[i] == "H" for i, lab in enumerate(model.labels))
    d = (model.xyz[riding.h] - model.xyz[riding.parent]).norm(dim=1)
    assert bool((d > 0.8).all() and (d < 1.1).all())             # X-H bonds of the library
    # parents move their hydrogens; the hydrogens' own rows are ignored; B follows the parent
    shift = torch.zeros_like(model.xyz)
    shift[riding.parent[0]] = torch.tensor([0.5, 0.0, 0.0], dtype=model.xyz.dtype)
    moved = riding.positions(model.xyz + shift, riding.offsets(model.xyz))
    assert torch.allclose(moved[riding.h[0]], model.xyz[riding.h[0]] + shift[riding.parent[0]])
    b = torch.arange(model.n_atoms, dtype=torch.float64)
    assert torch.equal(riding.b_iso(b)[riding.h], b[riding.parent])
    # re-placement is ideal: invariant under a rigid shift, and it repairs a displaced hydrogen
    rigid = model.xyz + torch.tensor([0.3, -0.2, 0.1], dtype=model.xyz.dtype)
    assert torch.allclose(riding.idealize(rigid), rigid, atol=1e-9)
    bent = model.xyz.clone()
    bent[riding.h[0]] += 0.4
    assert torch.allclose(riding.idealize(bent), model.xyz, atol=1e-9)
    # geometry statistics are over heavy-atom restraints only
    assert restraints.statistics(model.xyz)["bond"]["n"] == Restraints.build(heavy).statistics(heavy.xyz)["bond"]["n"]


def test_refinement_with_riding_hydrogens(with_h):
    """Data from the model with hydrogens; heavy atoms shaken. The refinement must recover the heavy
    atoms and leave every hydrogen at its ideal place on the refined parents."""
    truth, restraints, riding = with_h
    refl = Reflections.from_file(data_file("5e5z.mtz.gz"))
    gen = torch.Generator().manual_seed(5)
    f_obs = direct_structure_factors(refl.hkl, truth.xyz, truth.b_iso, truth.occ, truth.elements,
                                     truth.cell, truth.spacegroup).abs()
    free = torch.rand(f_obs.shape, generator=gen, dtype=torch.float64) < 0.1
    start = add_hydrogens(AtomModel.from_file(data_file("5e5z.pdb.gz")))
    heavy = ~restraints.hydrogen
    start.xyz = start.xyz.clone()
    start.xyz[heavy] += 0.25 * torch.randn(start.xyz[heavy].shape, generator=gen, dtype=torch.float64)
    result = refine(start, Restraints.build(start), LeastSquaresXray(start, refl.hkl, f_obs, free),
                    options=RefineOptions(cycles=3, xyz_steps=15, b_steps=5), log=lambda s: None)
    assert rmsd(result.xyz[heavy], truth.xyz[heavy]) < 0.5 * rmsd(start.xyz[heavy], truth.xyz[heavy])
    assert result.final.r_work < result.start.r_work
    assert torch.allclose(riding.idealize(result.xyz), result.xyz, atol=1e-9)   # hydrogens ideal
    assert torch.equal(result.b_iso[riding.h], result.b_iso[riding.parent])


def test_hydrogen_without_parent_is_an_error(with_h):
    model, restraints, _ = with_h
    broken = Restraints.build(model)
    keep = ~(broken.hydrogen[broken.sets["bond"].index].any(dim=1))
    broken.sets["bond"].index = broken.sets["bond"].index[keep]
    with pytest.raises(InputError, match="cannot ride"):
        RidingHydrogens.build(model, broken)
