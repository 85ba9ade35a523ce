"""E(n)-equivariant graph layers over a spatial k-nearest-neighbour graph.

One layer class, :class:`EGNNLayer`, after Satorras, Hoogeboom & Welling 2021 ("E(n) Equivariant
Graph Neural Networks", ICML, eqs. 3-6), with the keyword interface of lucidrains/egnn-pytorch
(``forward(feats, coors, mask)``). Per layer, for node i and its k nearest neighbours j (by the
current coordinates; masked nodes are never neighbours):

    m_ij = phi_e(h_i, h_j, rbf(|x_i - x_j|), e_ij)
    x_i' = x_i + mean_j  (x_i - x_j) / (|x_i - x_j| + 1) * phi_x(m_ij)      (coordinate norm)
    h_i' = h_i + phi_h(h_i, sum_j m_ij)

Distances are invariant, so the graph, the messages and the features are invariant and the
coordinate update is equivariant under rotations, reflections and translations of ``coors``, and
equivariant under permutations of the nodes (with ``pair_feats`` permuted alike). Against the NaN
of deep stacks (lucidrains/egnn-pytorch issues #7, #9): the relative vectors are normalised
(``norm_coors``) and the last layer of ``phi_x`` starts small (``coor_init``), so a fresh stack
moves coordinates by about ``coor_init`` Å per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["EGNNLayer", "EGNN", "rbf", "knn", "PairFeatures"]

#: edge features from neighbour indices (B, n, k) -> (B or 1, n, k, edge_dim)
PairFeatures = Callable[[Tensor], Tensor]


def rbf(distance: Tensor, n: int = 16, d_max: float = 20.0) -> Tensor:
    """Gaussian radial basis of ``distance`` (Å, any shape) -> shape ``(..., n)``, centres 0..d_max."""
    centres = torch.linspace(0.0, d_max, n, dtype=distance.dtype, device=distance.device)
    width = d_max / (n - 1)
    return torch.exp(-(((distance.unsqueeze(-1) - centres) / width) ** 2))


def knn(coors: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices ``(B, n, k')`` of each node's ``k' = min(k, n-1)`` nearest other nodes and a validity
    mask ``(B, n, k')`` (False where the neighbour or the node is masked). ``coors``: (B, n, 3) Å."""
    n = coors.shape[1]
    k = min(k, n - 1)
    with torch.no_grad():
        dist = torch.cdist(coors, coors)
        far = torch.finfo(dist.dtype).max
        dist = dist.masked_fill(~mask.unsqueeze(1), far)
        dist = dist.masked_fill(torch.eye(n, dtype=torch.bool, device=coors.device), far)
        idx = dist.topk(k, dim=-1, largest=False).indices
    valid = torch.gather(mask.unsqueeze(1).expand(-1, n, -1), 2, idx) & mask.unsqueeze(-1)
    return idx, valid


def _gather(values: Tensor, idx: Tensor) -> Tensor:
    """``values`` (B, n, ...) at neighbour indices ``idx`` (B, n, k) -> (B, n, k, ...)."""
    b, n, k = idx.shape
    flat = idx.reshape(b, n * k)
    out = torch.gather(values, 1, flat.view(b, n * k, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:]))
    return out.view(b, n, k, *values.shape[2:])


def _mlp(dims: list[int], final_std: float | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    if final_std is not None:
        nn.init.normal_(layers[-1].weight, std=final_std)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class EGNNLayer(nn.Module):
    """One E(n)-equivariant message-passing layer on a k-nearest-neighbour graph.

    ``dim``: node feature size; ``edge_dim``: size of optional pair features; ``m_dim``: message
    size; ``k``: neighbours per node; ``n_rbf``/``d_max``: radial basis of distances (Å);
    ``norm_coors``: normalise relative vectors (unit vectors) before the coordinate update;
    ``coor_init``: std of the final coordinate weights at init (Å per layer scale);
    ``update_coors``: False for an invariant-only layer (coordinates returned unchanged).
    """

    def __init__(self, dim: int, edge_dim: int = 0, m_dim: int = 32, k: int = 16, n_rbf: int = 16,
                 d_max: float = 20.0, norm_coors: bool = True, coor_init: float = 1e-3,
                 update_coors: bool = True) -> None:
        super().__init__()
        self.k, self.n_rbf, self.d_max = k, n_rbf, d_max
        self.norm_coors, self.update_coors = norm_coors, update_coors
        # the first edge layer, Linear(cat[h_i, h_j, rbf, e_ij]), split by input so that the node
        # parts are computed once per node, not once per edge (same function, ~k times fewer flops)
        self.edge_node_i = nn.Linear(dim, 2 * m_dim)
        self.edge_node_j = nn.Linear(dim, 2 * m_dim, bias=False)
        self.edge_pair = nn.Linear(n_rbf + edge_dim, 2 * m_dim, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(2 * m_dim, m_dim))
        self.node_mlp = _mlp([dim + m_dim, 2 * dim, dim])
        self.norm = nn.LayerNorm(dim)
        self.coor_mlp = _mlp([m_dim, m_dim, 1], final_std=coor_init) if update_coors else None

    def forward(self, feats: Tensor, coors: Tensor, mask: Tensor | None = None,
                pair_feats: PairFeatures | None = None) -> tuple[Tensor, Tensor]:
        """``feats`` (B, n, dim), ``coors`` (B, n, 3) Å, ``mask`` (B, n) bool (None: all present),
        ``pair_feats``: features of the graph's edges as a function of the neighbour indices
        (B, n, k) -> (B or 1, n, k, edge_dim), or None (computed per edge, not for all n^2 pairs:
        the backward pass of a gathered dense (n, n, edge_dim) table costs O(n^2) memory and time).
        Returns updated (feats, coors); masked nodes keep their features and coordinates."""
        b, n, _ = feats.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=feats.device)
        idx, valid = knn(coors, mask, self.k)
        rel = coors.unsqueeze(2) - _gather(coors, idx)                      # (B, n, k, 3)
        dist = rel.square().sum(-1).clamp_min(1e-12).sqrt()                # (B, n, k)
        parts = [rbf(dist, self.n_rbf, self.d_max)]
        if pair_feats is not None:
            parts.append(pair_feats(idx).expand(b, -1, -1, -1))
        pre = (self.edge_node_i(feats).unsqueeze(2) + _gather(self.edge_node_j(feats), idx)
               + self.edge_pair(torch.cat(parts, dim=-1)))
        m = self.edge_out(pre) * valid.unsqueeze(-1)
        node = mask.unsqueeze(-1)
        feats = torch.where(node, feats + self.node_mlp(torch.cat([self.norm(feats), m.sum(2)], dim=-1)), feats)
        if self.coor_mlp is not None:
            direction = rel / (dist.unsqueeze(-1) + 1.0) if self.norm_coors else rel
            weight = self.coor_mlp(m) * valid.unsqueeze(-1)
            count = valid.sum(-1, keepdim=True).clamp_min(1).to(coors.dtype)
            coors = torch.where(node, coors + (direction * weight).sum(2) / count, coors)
        return feats, coors


class EGNN(nn.Module):
    """A stack of ``depth`` :class:`EGNNLayer` s with the same options (keyword arguments)."""

    def __init__(self, dim: int, depth: int, **options) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EGNNLayer(dim, **options) for _ in range(depth))

    def forward(self, feats: Tensor, coors: Tensor, mask: Tensor | None = None,
                pair_feats: PairFeatures | None = None) -> tuple[Tensor, Tensor]:
        """As :meth:`EGNNLayer.forward`, through every layer."""
        for layer in self.layers:
            feats, coors = layer(feats, coors, mask, pair_feats)
        return feats, coors
