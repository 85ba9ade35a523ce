"""Pieces of the FFT structure-factor path: band-limited FFT and the padded-grid fold."""

from __future__ import annotations

import pytest
import torch

from equipoise.xtal.spreading import BandFFT, _Boxes, band_rows


@pytest.mark.parametrize("shape,h1,h2", [((6, 8, 8), 2, 2), ((7, 9, 7), 3, 2), ((6, 5, 10), 1, 3)])
def test_band_fft_matches_rfftn_and_its_gradient(shape, h1, h2):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ref = torch.fft.rfftn(x)[:, band_rows(shape[1], h1, x.device)][:, :, :h2 + 1]
    out = BandFFT.apply(x, h1, h2)
    assert torch.allclose(out, ref, atol=1e-12)
    w = torch.randn(out.shape, dtype=torch.float64)
    g_ref, = torch.autograd.grad((ref.abs() ** 2 * w).sum(), x)
    g_out, = torch.autograd.grad((out.abs() ** 2 * w).sum(), x)
    assert torch.allclose(g_out, g_ref, atol=1e-9)


@pytest.mark.parametrize("shape,half", [((10, 12, 9), [3, 4, 2]), ((5, 6, 4), [4, 4, 4])])
def test_fold_and_unfold_are_periodic_adjoints(shape, half):
    boxes = _Boxes(shape, [half], torch.device("cpu"))
    grid = torch.randn(shape, dtype=torch.float64)
    wrap = [torch.arange(p) % n for p, n in zip(boxes.padded, shape)]
    assert torch.equal(boxes.unfold(grid), grid[wrap[0]][:, wrap[1]][:, :, wrap[2]])
    padded = torch.randn(boxes.padded, dtype=torch.float64)
    lhs = (boxes.fold(padded.clone()) * grid).sum()
    assert float(lhs - (padded * boxes.unfold(grid)).sum()) == pytest.approx(0.0, abs=1e-10)


def test_gather_and_add_address_the_same_boxes():
    boxes = _Boxes((10, 12, 9), [[2, 3, 1]], torch.device("cpu"))
    padded = torch.zeros(boxes.padded, dtype=torch.float64)
    starts = [torch.tensor([0, 9, 4]), torch.tensor([11, 0, 5]), torch.tensor([8, 3, 0])]
    box = torch.rand(3, 6, 8, 4, dtype=torch.float64)
    boxes.add(padded, [2, 3, 1], starts, box)
    flat = torch.zeros(boxes.padded, dtype=torch.float64)
    flat.view(-1).index_add_(0, boxes.flat_index([2, 3, 1], starts), box.reshape(-1))   # the non-CPU path
    assert torch.equal(padded, flat)
    got = boxes.gather(padded, [2, 3, 1], starts)
    assert torch.equal(got, boxes.windows(padded, [2, 3, 1])[starts[0], starts[1], starts[2]])
