"""Fixtures for the core tests: small synthetic problems."""

from __future__ import annotations

import pytest
import torch

from equipoise.core import Term

DTYPE = torch.float64


def refinement_problem(n_atoms: int = 12, seed: int = 0):
    """A toy crystallographic refinement: groups ``xyz`` (Å) and ``b`` (Å^2), three terms.

    data: squared error of Debye-Waller-damped "amplitudes" (depends on xyz and b);
    restraints: bond lengths of 1.5 Å along the chain plus ADP similarity of bonded atoms;
    b_reg: B factors pulled towards 20 Å^2.
    """
    gen = torch.Generator().manual_seed(seed)
    xyz = (torch.arange(n_atoms, dtype=DTYPE)[:, None] * torch.tensor([1.5, 0.0, 0.0], dtype=DTYPE)
           + 0.3 * torch.randn(n_atoms, 3, generator=gen, dtype=DTYPE)).requires_grad_(True)
    b = (20.0 + 5.0 * torch.randn(n_atoms, generator=gen, dtype=DTYPE)).requires_grad_(True)
    k = torch.randn(8, 3, generator=gen, dtype=DTYPE)
    s2 = (k * k).sum(dim=1)
    observed = torch.randn(8, generator=gen, dtype=DTYPE).abs() * n_atoms / 3

    def amplitudes():
        phases = xyz @ k.T  # (atoms, reflections)
        damping = torch.exp(-b[:, None] * s2[None, :] / 16.0)
        return (torch.cos(phases) * damping).sum(dim=0)

    terms = [
        Term("data", lambda out: ((amplitudes() - observed) ** 2).sum()),
        Term("restraints", lambda out: ((xyz[1:] - xyz[:-1]).norm(dim=1) - 1.5).pow(2).sum()
             + 0.01 * (b[1:] - b[:-1]).pow(2).sum()),
        Term("b_reg", lambda out: 0.001 * ((b - 20.0) ** 2).sum()),
    ]
    return {"xyz": xyz, "b": b}, terms


@pytest.fixture
def refinement():
    """The factory :func:`refinement_problem` (fresh tensors on every call)."""
    return refinement_problem
