"""Symmetry of the VAE in float64: rotating/translating the input rotates/translates the decoder's
output (all atoms, <= 1e-4 Å) and leaves the encoder's latent unchanged; EGNN layers are also
permutation equivariant."""

from __future__ import annotations

import torch

from equipoise.ensemble.egnn import EGNNLayer
from equipoise.ensemble.frames import local_coordinates, place_atoms, random_rotations
from equipoise.ensemble.model import EnsembleVAE, VAEConfig, encode_sequence

DTYPE = torch.float64


def _helix_backbone(n: int, batch: int, seed: int) -> torch.Tensor:
    """Noisy helix-like backbones (batch, n, 4, 3) Å."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=DTYPE) * 100.0 * torch.pi / 180.0
    ca = torch.stack([2.3 * torch.cos(t), 2.3 * torch.sin(t), 1.5 * torch.arange(n, dtype=DTYPE)], dim=-1)
    offsets = torch.tensor([[-1.2, 0.6, 0.3], [0.0, 0.0, 0.0], [1.2, 0.7, -0.2], [1.9, 1.5, 0.4]], dtype=DTYPE)
    backbone = ca[:, None, :] + offsets
    return backbone + 0.4 * torch.randn(batch, n, 4, 3, generator=gen, dtype=DTYPE)


def _transform(x: torch.Tensor, rot: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...j->...i", rot, x) + shift


def _model(n: int) -> EnsembleVAE:
    torch.manual_seed(0)
    sequence = encode_sequence("MQIFVKTLTGK"[:n])
    ideal = local_coordinates(_helix_backbone(n, 1, 3))[0]
    config = VAEConfig(hidden=16, latent=4, residue_latent=2, encoder_depth=2, decoder_depth=3, k=5, coor_init=0.3)
    return EnsembleVAE(sequence, ideal, config).to(DTYPE)


def test_egnn_layer_rotation_translation_permutation() -> None:
    gen = torch.Generator().manual_seed(1)
    layer = EGNNLayer(8, edge_dim=3, m_dim=8, k=4, coor_init=0.5).to(DTYPE)
    feats = torch.randn(2, 9, 8, generator=gen, dtype=DTYPE)
    coors = 3.0 * torch.randn(2, 9, 3, generator=gen, dtype=DTYPE)
    pair = torch.randn(1, 9, 9, 3, generator=gen, dtype=DTYPE)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 7:] = False
    def edges(table):
        rows = torch.arange(9).view(1, -1, 1)
        return lambda idx: table[0][rows, idx]  # (1, n, n, 3) at the neighbours -> (B, n, k, 3)

    h, x = layer(feats, coors, mask, edges(pair))
    assert (x - coors).abs().max() > 1e-3  # the layer does move coordinates
    rot, shift = random_rotations(1, gen, DTYPE)[0], torch.tensor([5.0, -3.0, 2.0], dtype=DTYPE)
    h2, x2 = layer(feats, _transform(coors, rot, shift), mask, edges(pair))
    assert torch.allclose(h2, h, atol=1e-10)
    assert torch.allclose(x2, _transform(x, rot, shift), atol=1e-10)
    perm = torch.tensor([3, 0, 1, 2, 4, 5, 6, 8, 7])  # masked nodes 7, 8 swap among themselves
    h3, x3 = layer(feats[:, perm], coors[:, perm], mask[:, perm], edges(pair[:, perm][:, :, perm]))
    assert torch.allclose(h3, h[:, perm], atol=1e-10)
    assert torch.allclose(x3, x[:, perm], atol=1e-10)
    assert torch.equal(x[1, 7:], coors[1, 7:])  # masked nodes stay


def test_frames_place_atoms_is_equivariant_and_inverts_local_coordinates() -> None:
    backbone = _helix_backbone(7, 3, 2)
    local = local_coordinates(backbone)
    assert torch.allclose(place_atoms(backbone[:, :, 1], local), backbone, atol=1e-10)
    rot = random_rotations(1, torch.Generator().manual_seed(4), DTYPE)[0]
    moved = _transform(backbone, rot, torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE))
    assert torch.allclose(local_coordinates(moved), local, atol=1e-10)


def test_decoder_rotates_with_its_input_and_encoder_latent_is_invariant() -> None:
    model = _model(11)
    template, target = _helix_backbone(11, 2, 5), _helix_backbone(11, 2, 6)
    mask = torch.ones(2, 11, dtype=torch.bool)
    gen = torch.Generator().manual_seed(7)
    z, z_res = model.prior(2, generator=gen, dtype=DTYPE)
    out = model.decode(template, mask, z, z_res)
    assert (out - template).abs().max() > 0.05  # not the identity
    for rot in random_rotations(3, gen, DTYPE):
        shift = 10.0 * torch.randn(3, generator=gen, dtype=DTYPE)
        moved = model.decode(_transform(template, rot, shift), mask, z, z_res)
        assert (moved - _transform(out, rot, shift)).norm(dim=-1).max() <= 1e-4
        mu, logvar, mu_r, logvar_r = model.encode(_transform(target, rot, shift), mask)
        ref = model.encode(target, mask)
        for a, b in zip((mu, logvar, mu_r, logvar_r), ref):
            assert torch.allclose(a, b, atol=1e-9)


def test_decoder_is_not_reflection_equivariant() -> None:
    """Chirality: N, C, O are placed with a right-handed frame, so a mirror image is not mapped to
    the mirror of the output (a protein backbone is chiral)."""
    model = _model(9)
    with torch.no_grad():
        model.local_head[-1].bias.add_(0.5)
    template = _helix_backbone(9, 1, 8)
    mask = torch.ones(1, 9, dtype=torch.bool)
    z, z_res = model.prior(1, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=DTYPE))
    out = model.decode(template, mask, z, z_res)
    reflected = model.decode(_transform(template, mirror, torch.zeros(3, dtype=DTYPE)), mask, z, z_res)
    assert (reflected - _transform(out, mirror, torch.zeros(3, dtype=DTYPE))).abs().max() > 0.1
