"""Ensemble metrics: true Kabsch RMSD (not RMSD/sqrt 3), RMSF, distributions, precision/recall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.stats import wasserstein_distance

from tests.ensemble.backbones import ideal_ensemble
from equipoise.ensemble import metrics as m
from equipoise.errors import InputError


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    return torch.tensor(Rotation.random(n, random_state=seed).as_matrix(), dtype=torch.float64)


def test_kabsch_rmsd_is_the_true_rmsd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64) * 5
    noise = torch.randn(30, 3, generator=g, dtype=torch.float64) * 0.5
    y = (x + noise) @ _random_rotations(1, 1)[0].T + torch.tensor([3.0, -2.0, 7.0], dtype=torch.float64)
    ours = float(m.kabsch_rmsd(x, y))
    # independent: scipy's optimal rotation of the centred sets, then sqrt(mean |d|^2) over atoms
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    rot, _ = Rotation.align_vectors(yc, xc)
    reference = math.sqrt(((rot.apply(xc) - yc) ** 2).sum(1).mean())
    assert ours == pytest.approx(reference, rel=1e-9)
    assert ours != pytest.approx(reference / math.sqrt(3), rel=0.1)
    assert float(m.kabsch_rmsd(x, x @ _random_rotations(1, 2)[0].T + 4.0)) < 1e-9
    # a shift of one atom by 3 Å among 9 fixed ones: RMSD <= 3/sqrt(10) (superposition can only lower it)
    shifted = x[:10].clone()
    shifted[0, 0] += 3.0
    assert float(m.kabsch_rmsd(shifted, x[:10])) <= 3.0 / math.sqrt(10) + 1e-12
    assert float(m.kabsch_rmsd(shifted, x[:10])) > 0.6 * 3.0 / math.sqrt(10)


def test_pairwise_rmsd_and_rmsf_of_noisy_copies():
    """Copies rotated at random with isotropic noise sigma per coordinate: RMSF -> sigma sqrt(3)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 3, generator=g, dtype=torch.float64) * 6
    sigma = 0.3
    copies = base + sigma * torch.randn(200, 40, 3, generator=g, dtype=torch.float64)
    copies = copies @ _random_rotations(200, 4).transpose(-1, -2)
    assert float(m.rmsf(copies).mean()) == pytest.approx(sigma * math.sqrt(3), rel=0.05)
    pair = m.pairwise_rmsd(copies[:10])
    assert pair.shape == (45,) and float(pair.mean()) == pytest.approx(sigma * math.sqrt(6), rel=0.1)
    rigid = base @ _random_rotations(5, 5).transpose(-1, -2)
    assert float(m.rmsf(rigid).max()) < 1e-6


def test_one_dimensional_distances():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, generator=g, dtype=torch.float64)
    b = torch.randn(200, generator=g, dtype=torch.float64) * 2 + 1
    assert float(m.wasserstein_1d(a, b)) == pytest.approx(wasserstein_distance(a.numpy(), b.numpy()), rel=1e-9)
    assert float(m.jensen_shannon(a, a)) == pytest.approx(0.0, abs=1e-12)
    assert float(m.jensen_shannon(a, a + 100.0)) == pytest.approx(math.log(2), rel=1e-9)
    assert float(m.radius_of_gyration(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=torch.float64))) == 1.0


def test_precision_recall_and_comparison_of_an_ensemble_with_itself():
    ens = ideal_ensemble(6, 10, spread_deg=10.0)
    precision, recall, d = m.precision_recall(ens.coords[:, :, 1], ens.coords[:, :, 1])
    assert precision == recall == 1.0 and d.shape == (6, 6)
    far = ens.coords.clone()
    far[:, 5:, :, :] *= 3.0  # stretch half of every chain: > 2 Å from every reference model
    assert m.precision_recall(far[:, :, 1], ens.coords[:, :, 1])[0] == 0.0
    result = m.EnsembleComparison(ens.coords, ens.coords).run().results
    assert result["pairwise_rmsd_ratio"] == pytest.approx(1.0)
    assert result["rmsf_pearson"] == pytest.approx(1.0)
    assert result["ca_distance_w1"] == pytest.approx(0.0, abs=1e-9) and max(result["pc_w1"]) < 1e-6
    with pytest.raises(InputError, match="residues"):
        m.EnsembleComparison(ens.coords, ens.coords[:, :8])
