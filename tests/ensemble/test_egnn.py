"""EGNN layer: graph, masks, stability of deep stacks, gradients."""

from __future__ import annotations

import torch

from equipoise.ensemble.egnn import EGNN, EGNNLayer, knn, rbf

DTYPE = torch.float64


def test_knn_picks_nearest_present_nodes() -> None:
    coors = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [2.5, 0, 0], [0.2, 0, 0]]], dtype=DTYPE)
    mask = torch.tensor([[True, True, True, False]])
    idx, valid = knn(coors, mask, k=2)
    assert idx[0, 0].tolist() == [1, 2]          # node 3 is closest but masked
    assert valid[0, :3].all() and not valid[0, 3].any()


def test_rbf_shape_and_peak() -> None:
    values = rbf(torch.tensor([0.0, 10.0], dtype=DTYPE), n=11, d_max=20.0)
    assert values.shape == (2, 11)
    assert values[1].argmax() == 5


def test_deep_stack_stays_finite_and_small_at_init() -> None:
    """Coordinate norm and small init: a fresh 24-layer stack moves atoms by well under 1 Å and
    stays finite on far-apart points (lucidrains/egnn-pytorch #7, #9)."""
    torch.manual_seed(0)
    net = EGNN(16, depth=24, k=6).to(DTYPE)
    coors = 50.0 * torch.randn(2, 30, 3, dtype=DTYPE)
    feats = torch.randn(2, 30, 16, dtype=DTYPE)
    h, x = net(feats, coors)
    assert torch.isfinite(h).all() and torch.isfinite(x).all()
    assert (x - coors).norm(dim=-1).max() < 0.5


def test_layer_gradients_reach_all_parameters() -> None:
    torch.manual_seed(1)
    layer = EGNNLayer(8, k=4).to(DTYPE)
    feats = torch.randn(1, 7, 8, dtype=DTYPE)
    coors = torch.randn(1, 7, 3, dtype=DTYPE, requires_grad=True)
    h, x = layer(feats, coors)
    (h.square().sum() + x.square().sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert coors.grad is not None and coors.grad.abs().sum() > 0


def test_invariant_layer_keeps_coordinates() -> None:
    layer = EGNNLayer(8, k=3, update_coors=False).to(DTYPE)
    coors = torch.randn(1, 5, 3, dtype=DTYPE)
    _, x = layer(torch.randn(1, 5, 8, dtype=DTYPE), coors)
    assert torch.equal(x, coors)
