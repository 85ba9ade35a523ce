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


def _two_protein_model(first: str, second: str, residue_latent: int = 0) -> EnsembleVAE:
    torch.manual_seed(0)
    ideal = [local_coordinates(_helix_backbone(len(s), 1, 3))[0] for s in (first, second)]
    config = VAEConfig(hidden=16, latent=4, residue_latent=residue_latent, encoder_depth=1, decoder_depth=2, k=4)
    return EnsembleVAE([encode_sequence(first), encode_sequence(second)], ideal, config).to(DTYPE)


def test_decoder_sees_the_sequence() -> None:
    """The seed project's decoder never saw the sequence: here two sequences (two proteins of one
    model, the same weights) give two outputs from the same template and latent."""
    model = _two_protein_model("MQIFVKT", "GGGGGGG")
    x = _helix_backbone(7, 1, 2)
    mask = torch.ones(1, 7, dtype=torch.bool)
    z, _ = model.prior(1, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    with torch.no_grad():
        model.decoder.layers[0].coor_mlp[-1].weight.normal_(std=0.5)
    assert (model.decode(x, mask, z, protein=0) - model.decode(x, mask, z, protein=1)).abs().max() > 1e-3


def test_one_model_of_proteins_of_different_lengths() -> None:
    model = _two_protein_model("MQIFVKT", "GSHMKLAE", residue_latent=2)
    assert model.n_proteins == 2 and (model.n_res(0), model.n_res(1)) == (7, 8)
    x = _helix_backbone(8, 2, 1)
    out = model(x, x, torch.ones(2, 8, dtype=torch.bool), protein=1)
    assert out.pred.shape == (2, 8, 4, 3) and out.mu_res.shape == (2, 8, 2) and out.protein == 1
    z, z_res = model.prior(3, generator=torch.Generator().manual_seed(0), dtype=DTYPE, protein=0)
    assert z_res.shape == (3, 7, 2)
    with pytest.raises(InputError, match="8 residues, protein 0 has 7"):
        model(x, x, torch.ones(2, 8, dtype=torch.bool), protein=0)
    with pytest.raises(InputError, match="protein 2 out of range"):
        model.n_res(2)


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
    with pytest.raises(InputError, match="one ideal_local per sequence"):
        EnsembleVAE([encode_sequence("MQIF"), encode_sequence("MQIF")], [torch.zeros(4, 3, 3)])
