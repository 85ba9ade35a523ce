"""The VAE: shapes, sequence conditioning, latents, prior draws, bad input."""

from __future__ import annotations

import pytest
import torch

from equipoise.ensemble.frames import local_coordinates
from equipoise.ensemble.model import EnsembleVAE, VAEConfig, encode_sequence
from equipoise.errors import InputError

from tests.ensemble.test_equivariance import _helix_backbone

DTYPE = torch.float64


def _model(sequence: str, residue_latent: int = 2) -> EnsembleVAE:
    torch.manual_seed(0)
    ideal = local_coordinates(_helix_backbone(len(sequence), 1, 3))[0]
    config = VAEConfig(hidden=16, latent=4, residue_latent=residue_latent, encoder_depth=1, decoder_depth=2, k=4)
    return EnsembleVAE(encode_sequence(sequence), ideal, config).to(DTYPE)


def test_encode_sequence_maps_unknown_to_last_index() -> None:
    assert encode_sequence("ACXY").tolist() == [0, 1, 20, 19]


def test_forward_shapes_and_posterior_means() -> None:
    model = _model("MQIFVKT")
    x = _helix_backbone(7, 3, 1)
    mask = torch.ones(3, 7, dtype=torch.bool)
    out = model(x, x.flip(0), mask)
    assert out.pred.shape == (3, 7, 4, 3) and out.mu.shape == (3, 4) and out.mu_res.shape == (3, 7, 2)
    a = model(x, x, mask, sample=False).pred
    b = model(x, x, mask, sample=False).pred
    assert torch.equal(a, b)


def test_decoder_sees_the_sequence() -> None:
    """The seed project's decoder never saw the sequence: here two sequences give two outputs."""
    model = _model("MQIFVKT", residue_latent=0)
    other = _model("GGGGGGG", residue_latent=0)
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k != "sequence"}, strict=False)
    x = _helix_backbone(7, 1, 2)
    mask = torch.ones(1, 7, dtype=torch.bool)
    z, _ = model.prior(1, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    with torch.no_grad():
        model.decoder.layers[0].coor_mlp[-1].weight.normal_(std=0.5)
        other.decoder.layers[0].coor_mlp[-1].weight.copy_(model.decoder.layers[0].coor_mlp[-1].weight)
    assert (model.decode(x, mask, z) - other.decode(x, mask, z)).abs().max() > 1e-3


def test_prior_temperature_scales_latents() -> None:
    model = _model("MQIFVKT")
    z0, r0 = model.prior(5, 0.0, torch.Generator().manual_seed(0), DTYPE)
    z1, r1 = model.prior(5, 1.0, torch.Generator().manual_seed(0), DTYPE)
    assert torch.equal(z0, torch.zeros_like(z0)) and z1.abs().sum() > 0 and r1.shape == (5, 7, 2)


def test_bad_construction_is_an_input_error() -> None:
    with pytest.raises(InputError, match="at least 3 residues"):
        EnsembleVAE(encode_sequence("MQ"), torch.zeros(2, 3, 3))
    with pytest.raises(InputError, match="ideal_local"):
        EnsembleVAE(encode_sequence("MQIF"), torch.zeros(3, 3, 3))
