"""Equivariant placement of backbone N, C and O from local frames of neighbouring CA atoms.

Residue i's frame is built from the CA triplet (j-1, j, j+1), j = clamp(i, 1, n-2) (the termini
borrow their neighbour's triplet):

    e1 = unit(CA_{j+1} - CA_{j-1})
    e2 = unit(u - (u . e1) e1),  u = 2 CA_j - CA_{j-1} - CA_{j+1}   (outward bisector)
    e3 = e1 x e2

Atoms are ``CA_i + R_i @ local`` with ``R_i = [e1 e2 e3]`` and ``local`` invariant (learned from
invariant features). Under a proper rotation Q and translation t of the CAs every R_i becomes
Q R_i, so N, C, O rotate and translate with the CAs (the seed project computed absolute 3-vectors
from invariant features: 2 Å errors under rotation). The right-handed e3 keeps chirality
(reflections are not symmetries of a protein backbone). Same construction as AlphaFold's
backbone frames from three points (Jumper et al. 2021, suppl. Alg. 21), here on CA atoms only.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ca_frames", "place_atoms", "local_coordinates", "random_rotations"]

EPS = 1e-8


def _unit(v: Tensor) -> Tensor:
    return v / v.square().sum(-1, keepdim=True).clamp_min(EPS).sqrt()


def ca_frames(ca: Tensor) -> Tensor:
    """Rotation matrices ``(..., n, 3, 3)`` (columns e1, e2, e3) of CA coordinates ``(..., n, 3)``, n >= 3."""
    n = ca.shape[-2]
    j = torch.arange(n, device=ca.device).clamp(1, n - 2)
    prev, mid, nxt = ca[..., j - 1, :], ca[..., j, :], ca[..., j + 1, :]
    e1 = _unit(nxt - prev)
    u = 2.0 * mid - prev - nxt
    e2 = _unit(u - (u * e1).sum(-1, keepdim=True) * e1)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def place_atoms(ca: Tensor, local: Tensor) -> Tensor:
    """Backbone ``(..., n, 4, 3)`` in N, CA, C, O order from CA ``(..., n, 3)`` Å and the local
    coordinates ``(..., n, 3, 3)`` (N, C, O; Å in each residue's frame)."""
    frames = ca_frames(ca)
    others = ca.unsqueeze(-2) + torch.einsum("...ij,...aj->...ai", frames, local)
    return torch.stack([others[..., 0, :], ca, others[..., 1, :], others[..., 2, :]], dim=-2)


def local_coordinates(backbone: Tensor) -> Tensor:
    """Inverse of :func:`place_atoms`: N, C, O of ``backbone`` (..., n, 4, 3) in their residue's
    frame -> (..., n, 3, 3) Å."""
    ca = backbone[..., 1, :]
    frames = ca_frames(ca)
    rel = backbone[..., [0, 2, 3], :] - ca.unsqueeze(-2)
    return torch.einsum("...ji,...aj->...ai", frames, rel)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu") -> Tensor:
    """``n`` rotation matrices (n, 3, 3), uniform on SO(3): normalised Gaussian quaternions
    (Shoemake 1992, "Uniform random rotations", Graphics Gems III)."""
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
    w, x, y, z = _unit(q).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], dim=-1).reshape(n, 3, 3)
