"""The simulator's hand-written backward passes (pixel_rows.py, product.py) and its reused buffers (saved_buffers.py).

gradcheck (float64) of every input of :func:`unit_directions`, :func:`scattering_vectors` and
:func:`product`; forward values bit for bit those of the plain torch expressions they replace;
:class:`SavedBuffers` hands the same memory back on the next lease, never to two leases at once,
and copies saved tensors there only once.
"""

from __future__ import annotations

import gc

import torch

from equipoise.diffraction.pixel_rows import scattering_vectors, unit_directions
from equipoise.diffraction.product import product
from equipoise.diffraction.saved_buffers import SavedBuffers

F64 = dict(dtype=torch.float64)


def _positions(n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(3, n, 2, 1, generator=g, **F64)
    pos[0] += 3.0  # away from the origin, like pixel positions
    return pos


def test_unit_directions_values_and_gradcheck():
    pos = _positions()
    d, r_inv = unit_directions(pos)
    r2 = (pos * pos).sum(0)
    assert torch.equal(r_inv, torch.rsqrt(r2)) and torch.equal(d, pos * torch.rsqrt(r2))
    w = torch.randn(3, 5, 2, 1, **F64)

    def both(p):
        d, r = unit_directions(p)
        return (d * w).sum() + (r * r).sum()

    assert torch.autograd.gradcheck(both, (pos.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda p: unit_directions(p)[0], (pos.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda p: unit_directions(p)[1], (pos.clone().requires_grad_(),))


def test_scattering_vectors_values_and_gradcheck():
    d, _ = unit_directions(_positions())
    incident = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, -0.05]], **F64)
    wavelength = torch.tensor([6.2e-10, 6.3e-10], **F64)
    q = scattering_vectors(d, incident, wavelength)
    assert torch.equal(q, (d.unsqueeze(-1) - incident.T.reshape(3, 1, 1, 1, -1)) / wavelength)
    args = (d.detach().clone().requires_grad_(), incident.clone().requires_grad_(),
            (wavelength * 1e10).requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, lam: scattering_vectors(a, b, lam * 1e-10) * 1e-10, args)
    one = (args[0], args[1][:1], args[2][:1])
    assert torch.autograd.gradcheck(lambda a, b, lam: scattering_vectors(a, b, lam * 1e-10) * 1e-10, one)


def test_product_values_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, generator=g, **F64), torch.randn(6, generator=g, **F64)
    s = torch.tensor(1.7, **F64)
    assert torch.equal(product(a, s, b, b), a * s * b * b)
    args = tuple(t.clone().requires_grad_() for t in (a, s, b))
    assert torch.autograd.gradcheck(lambda x, y, z: product(x, y, z, z, z), args)
    assert torch.autograd.gradcheck(lambda x, y, z: product(y, x, torch.ones(6, **F64), z), args)


def test_saved_buffers_reuse_and_exclusive_lease():
    buffers = SavedBuffers(torch.device("cpu"))
    lease = buffers.lease()
    first = buffers.take((4, 1000), torch.float64)
    assert buffers.lease() is None  # in use: a second forward pass gets no buffers
    lease.end()
    lease = buffers.lease()
    again = buffers.take((4, 1000), torch.float64)
    assert again.data_ptr() == first.data_ptr()  # the same memory, handed back in request order
    smaller = buffers.take((10,), torch.float32)
    del lease  # dropped without end(): released when collected
    gc.collect()
    assert buffers.lease() is not None and smaller.dtype == torch.float32


def test_saved_tensors_copied_once_into_slots():
    buffers = SavedBuffers(torch.device("cpu"))
    x = torch.randn(1 << 13, **F64, requires_grad=True)
    lease = buffers.lease()
    with buffers.saving():
        y = x.exp()            # saves its output
        z = (y * y).sum()      # saves y twice: one copy
    assert len(buffers._slots) == 1
    kept = buffers.take((1 << 13,), torch.float64)  # slot 1: outside the hook, written directly
    with buffers.saving():
        w = (kept * x).sum()   # kept lives in a slot: not copied again
    assert len(buffers._slots) == 2
    z.backward()
    assert torch.allclose(x.grad, 2 * torch.exp(2 * x.detach()))
    lease.end()
    del w


def _small_simulator():
    from equipoise.diffraction.config import SimulationConfig
    from equipoise.diffraction.simulate import Simulator

    cfg = SimulationConfig(mode="nanobragg")
    cr, det = cfg.crystal, cfg.detector
    cr.cell, cr.misset_deg, cr.default_F, cr.n_cells = (100.0, 100.0, 100.0, 90.0, 90.0, 90.0), (3, 2, 1), 100.0, (5, 5, 5)
    cr.mosaic_spread_deg, cr.mosaic_domains = 0.5, 3
    cfg.beam.wavelength_A, det.distance_mm, det.pixel_mm, det.fpixels, det.spixels = 6.2, 100.0, 0.4, 32, 32
    return cfg, Simulator(cfg, dtype=torch.float64)


def _grads(sim, cfg, weight=None, shift=0.0):
    params = {"cell": torch.tensor(cfg.crystal.cell, **F64) + torch.tensor([shift, 0, 0, 0, 0, 0], **F64),
              "distance_mm": torch.tensor(100.0 - shift, **F64),
              "mosaic_spread_deg": torch.tensor(0.5 + 0.1 * shift, **F64)}
    params = {k: v.requires_grad_() for k, v in params.items()}
    img = sim(params)
    return params, (lambda: (img.sum() if weight is None else (img * weight).sum()).backward())


def test_simulator_buffers_reused_and_overlapping_graphs():
    """Same gradients on the call that reuses the buffers, and for two graphs alive at once (the
    second gets fresh memory); a sum's broadcast gradient gives what explicit unit weights give."""
    cfg, sim = _small_simulator()
    weight = torch.linspace(0.5, 1.5, 32 * 32, **F64).reshape(32, 32)
    grads = []
    for shift in (0.0, 0.0, 1.0):
        params, backward = _grads(sim, cfg, weight, shift)
        backward()
        grads.append({k: p.grad for k, p in params.items()})
    assert sim._saved.nbytes > 0
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k
    pa, back_a = _grads(sim, cfg, weight, 0.0)
    pb, back_b = _grads(sim, cfg, weight, 1.0)  # while the first graph holds the buffers
    back_b()
    back_a()
    for k in grads[0]:
        assert torch.allclose(pa[k].grad, grads[0][k], rtol=1e-13, atol=0), k
        assert torch.allclose(pb[k].grad, grads[2][k], rtol=1e-13, atol=0), k
    ps, back_s = _grads(sim, cfg)
    back_s()
    pw, back_w = _grads(sim, cfg, torch.ones(32, 32, **F64))
    back_w()
    for k in ps:
        assert torch.allclose(ps[k].grad, pw[k].grad, rtol=1e-13, atol=0), k
