"""Objective terms: invariances, KL with free bits, collapse diagnostic, balanced shares in a Fit."""

from __future__ import annotations

import json

import torch

from equipoise.core import Fit, Stage
from equipoise.ensemble.frames import local_coordinates, random_rotations
from equipoise.ensemble.model import EnsembleVAE, VAEConfig, VAEOutput, encode_sequence
from equipoise.ensemble.objective import (ObjectiveConfig, collapse_diagnostic, collapse_flags, kl_per_dimension,
                                          make_balancer,
                                          make_terms, pair_distance_loss, reconstruction_msd)

from tests.ensemble.test_equivariance import _helix_backbone

DTYPE = torch.float64


def _turn(x: torch.Tensor, seed: int) -> torch.Tensor:
    rot = random_rotations(x.shape[0], torch.Generator().manual_seed(seed), DTYPE)
    return torch.einsum("bij,bnaj->bnai", rot, x) + 7.0


def test_reconstruction_and_pairs_ignore_rigid_motion() -> None:
    x = _helix_backbone(9, 3, 0)
    mask = torch.ones(3, 9, dtype=torch.bool)
    assert float(reconstruction_msd(x, _turn(x, 1), mask)) < 1e-18
    assert float(pair_distance_loss(x, _turn(x, 2), mask, 15.0)) < 1e-18
    y = _helix_backbone(9, 3, 5).requires_grad_(True)
    loss = reconstruction_msd(y, _turn(x, 1), mask)
    loss.backward()
    assert float(loss.detach()) > 0.1 and y.grad.abs().sum() > 0


def test_reconstruction_is_true_msd_not_divided_by_three() -> None:
    """A uniform shift along z of 1 Å of half of a structure: MSD is computed per atom in 3D."""
    x = _helix_backbone(8, 1, 0)
    mask = torch.ones(1, 8, dtype=torch.bool)
    rmsd_direct = float(reconstruction_msd(x, x + torch.tensor([0.0, 0.0, 1.0], dtype=DTYPE), mask))
    assert rmsd_direct < 1e-18  # a translation is superposed away
    y = x.clone()
    y[:, :, 1] += torch.tensor([0.3, 0.0, 0.0], dtype=DTYPE)  # move every CA by 0.3 Å
    msd = float(reconstruction_msd(y, x, mask))
    assert 0.3 ** 2 / 4 * 0.5 < msd <= 0.3 ** 2 / 4 + 1e-12  # at most (1/4 atoms) * 0.09 Å^2


def test_kl_per_dimension_and_collapse_diagnostic() -> None:
    mu = torch.zeros(6, 3, dtype=DTYPE)
    assert torch.allclose(kl_per_dimension(mu, torch.zeros_like(mu)), torch.zeros_like(mu))
    mu[:, 0] = torch.linspace(-2, 2, 6, dtype=DTYPE)
    out = VAEOutput(torch.zeros(6, 5, 4, 3), torch.zeros(6, 5, 4, 3), torch.ones(6, 5, dtype=torch.bool),
                    mu, torch.full_like(mu, -1.0), torch.zeros(6, 5, 2), torch.zeros(6, 5, 2))
    report = collapse_diagnostic(out)
    assert report["active_units"] == 1.0 and report["latent_dims"] == 3.0
    assert report["kl_per_dim"][0] > report["kl_per_dim"][1] > 0
    assert report["kl_residue_nats_per_residue"] == 0.0
    assert collapse_flags(report, step=600, after=500) == []  # one active unit


def test_a_collapsed_global_latent_is_flagged() -> None:
    """The seed's silent failure: the global latent unused while the residue latents carry it all."""
    mu = torch.zeros(6, 3, dtype=DTYPE)
    mu_res = torch.randn(6, 5, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    out = VAEOutput(torch.zeros(6, 5, 4, 3), torch.zeros(6, 5, 4, 3), torch.ones(6, 5, dtype=torch.bool),
                    mu, torch.zeros_like(mu), mu_res, torch.zeros_like(mu_res))
    report = collapse_diagnostic(out)
    assert collapse_flags(report, step=100, after=500) == []  # first KL cycle: not judged yet
    (flag,) = collapse_flags(report, step=600, after=500)
    assert flag.kind == "posterior_collapse" and "0/3 active units" in flag.message
    assert "per-residue latents carry" in flag.message


def test_terms_in_a_fit_record_shares_and_collapse_diagnostic(tmp_path) -> None:
    torch.manual_seed(0)
    x = _helix_backbone(10, 4, 1)
    model = EnsembleVAE(encode_sequence("MQIFVKTLTG"), local_coordinates(x).mean(0),
                        VAEConfig(hidden=16, latent=4, residue_latent=1, encoder_depth=1, decoder_depth=2, k=4)).to(DTYPE)
    mask = torch.ones(4, 10, dtype=torch.bool)
    config = ObjectiveConfig(kl_period=4, rebalance_every=2)
    last = {}

    def forward() -> VAEOutput:
        last["out"] = model(x, x.flip(0), mask)
        return last["out"]

    stage = Stage("train", free=["model"], lr=1e-3, steps=4, balancer=make_balancer(config), rebalance_every=2)
    fit = Fit({"model": list(model.parameters())}, make_terms(config), [stage], forward=forward, run_dir=tmp_path,
              progress="quiet", summarize=lambda: collapse_diagnostic(last["out"]))
    result = fit.run()
    lines = [json.loads(s) for s in (tmp_path / "record.jsonl").read_text().splitlines()]
    first = lines[0]
    assert set(first["terms"]) == {"reconstruction", "pairs", "bonds", "angles", "omega", "ramachandran", "kl"}
    assert "ratio 0.5" in first["reasons"]["pairs"]  # gradient-norm ratio to the reconstruction
    shares = {t: v["share"] for t, v in first["terms"].items()}
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    assert "active_units" in first["params"] and "kl_per_dim" in first["params"]
    assert not [f for f in result.flags if f["kind"] in ("dominance", "nonfinite")]
    assert lines[0]["terms"]["kl"]["weight"] == 0.0  # cyclical KL starts each cycle at 0
