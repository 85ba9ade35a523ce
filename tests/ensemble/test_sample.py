"""Sampling: prior and posterior draws, seeds, the real sequence, geometry refinement, bad input."""

from __future__ import annotations

import pytest
import torch

from equipoise.ensemble.objective import geometry_terms
from equipoise.ensemble.sample import SampleConfig, flawed, polish, refine_geometry, sample
from equipoise.ensemble.train import train
from equipoise.errors import InputError

from tests.ensemble.test_equivariance import _helix_backbone
from tests.ensemble.backbones import ideal_ensemble
from tests.ensemble.test_train import tiny_config, tiny_ensemble


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ensemble_run")
    train(tiny_ensemble(), out, tiny_config(steps=2), progress="quiet")
    return out


def test_prior_samples_have_sequence_shape_and_seed(run_dir) -> None:
    a = sample(run_dir, SampleConfig(n=5, seed=3, refine_steps=0))
    b = sample(run_dir, SampleConfig(n=5, seed=3, refine_steps=0))
    c = sample(run_dir, SampleConfig(n=5, seed=4, refine_steps=0))
    assert a.ensemble.coords.shape == (5, 8, 4, 3) and a.ensemble.sequence == tiny_ensemble().sequence
    assert torch.equal(a.ensemble.coords, b.ensemble.coords)
    assert not torch.equal(a.ensemble.coords, c.ensemble.coords)
    assert a.ensemble.coords.dtype == torch.float64 and torch.isfinite(a.ensemble.coords).all()


def test_posterior_samples_stay_near_their_conformers(run_dir) -> None:
    around = tiny_ensemble().coords[:2]
    result = sample(run_dir, SampleConfig(n=4, seed=1, temperature=0.5, refine_steps=0), around=around)
    assert result.ensemble.coords.shape == (4, 8, 4, 3)
    with pytest.raises(InputError, match="shape"):
        sample(run_dir, SampleConfig(n=2), around=torch.zeros(1, 5, 4, 3))


def test_refinement_fixes_bonds_and_moves_atoms_little() -> None:
    torch.set_num_threads(1)
    noisy = _helix_backbone(10, 2, 4)
    mask = torch.ones(10, dtype=torch.bool)
    refined, report = refine_geometry(noisy, mask, steps=15)
    before = geometry_terms(noisy, mask.expand(2, -1))
    after = geometry_terms(refined, mask.expand(2, -1))
    assert float(after["bonds"]) < 0.2 * float(before["bonds"])
    assert float(after["angles"]) < float(before["angles"])
    moved = float((refined - noisy).square().sum(-1).mean().sqrt())
    assert abs(report["rms_displacement_A"] - moved) < 1e-9 and 0.0 < moved < 2.5  # a crude start


def test_polish_refines_the_flawed_conformers_again() -> None:
    torch.set_num_threads(1)
    x = ideal_ensemble(2, 8, spread_deg=0.0).coords.clone()
    mask = torch.ones(8, dtype=torch.bool)
    x[1, 6] = x[1, 1] + torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)  # residue 6 onto residue 1
    assert flawed(x, mask).tolist() == [False, True]
    refined, report = polish(x, mask, SampleConfig(refine_steps=5))
    assert report["polished"] == [1] and refined.dtype == torch.float64
    assert float((refined[0] - x[0]).abs().max()) < 0.05  # the sound one is barely touched
    moved = float((refined - x).square().sum(-1).mean().sqrt())
    assert abs(report["rms_displacement_A"] - moved) < 1e-6


def test_bad_sampling_settings_are_input_errors(run_dir) -> None:
    with pytest.raises(InputError, match="--n"):
        sample(run_dir, SampleConfig(n=0))
    with pytest.raises(InputError, match="temperature"):
        sample(run_dir, SampleConfig(temperature=-1.0))
