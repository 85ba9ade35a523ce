"""Per-term gradients on the free parameters, by ``torch.autograd.grad`` only.

Nothing here reads or writes ``.grad``, so calling these functions any number of times gives the
same numbers (a helper that calls ``backward()`` without zeroing accumulates instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["term_gradients", "gradient_norms", "cosines", "combine"]

#: per-tensor gradients of one term; None where the term does not depend on the tensor
Grads = list[Tensor | None]


def term_gradients(values: Mapping[str, Tensor], params: Sequence[Tensor]) -> dict[str, Grads]:
    """Gradient of each scalar term value with respect to each tensor of ``params``.

    The graph is retained so that the caller can still differentiate the weighted total.
    A term that does not depend on any of ``params`` gets all-None gradients.
    """
    out: dict[str, Grads] = {}
    for name, value in values.items():
        if value.requires_grad:
            out[name] = list(torch.autograd.grad(value, params, retain_graph=True, allow_unused=True))
        else:
            out[name] = [None] * len(params)
    return out


def gradient_norms(grads: Mapping[str, Grads], layout: Sequence[str]) -> dict[str, dict[str, float]]:
    """Euclidean norm of each term's gradient on each group, and on all of them (key ``"*"``).

    ``layout[i]`` is the group of tensor ``i``. One host synchronisation in all.
    """
    groups = list(dict.fromkeys(layout))
    rows = []
    for term_grads in grads.values():
        squares = {g: [] for g in groups}
        for group, grad in zip(layout, term_grads, strict=True):
            if grad is not None:
                squares[group].append(torch.linalg.vector_norm(grad, dtype=torch.float64) ** 2)
        rows.append(torch.stack([torch.stack(s).sum() if s else _zero(grads) for s in squares.values()]))
    if not rows:
        return {}
    table = torch.stack(rows).cpu()
    per_group = table.sqrt().tolist()
    totals = table.sum(dim=1).sqrt().tolist()
    return {term: {**dict(zip(groups, row)), "*": total}
            for term, row, total in zip(grads, per_group, totals)}


def _zero(grads: Mapping[str, Grads]) -> Tensor:
    """A float64 zero on the device of the gradients (CPU if there are none)."""
    for term_grads in grads.values():
        for grad in term_grads:
            if grad is not None:
                return torch.zeros((), dtype=torch.float64, device=grad.device)
    return torch.zeros((), dtype=torch.float64)


def cosines(grads: Mapping[str, Grads]) -> dict[tuple[str, str], float]:
    """Cosine between the gradients of every pair of terms on all the given tensors.

    Pairs where either gradient is zero are left out. One host synchronisation in all.
    """
    names = list(grads)
    pairs, dots = [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            terms = [(ga, gb) for ga, gb in zip(grads[a], grads[b]) if ga is not None and gb is not None]
            if terms:
                pairs.append((a, b))
                dots.append(torch.stack([(ga.to(torch.float64) * gb).sum() for ga, gb in terms]).sum())
    if not pairs:
        return {}
    norms = {name: torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) ** 2
                                for g in grads[name] if g is not None]).sum().sqrt()
             for name in {n for pair in pairs for n in pair}}
    values = torch.stack([d / (norms[a] * norms[b]) for d, (a, b) in zip(dots, pairs)]).cpu().tolist()
    return {pair: value for pair, value in zip(pairs, values) if value == value}  # drop 0/0


def combine(grads: Mapping[str, Grads], weights: Mapping[str, float | Tensor], n_params: int) -> Grads:
    """``sum_t weights[t] * grads[t]`` per tensor: the gradient of the weighted total."""
    out: Grads = [None] * n_params
    for name, term_grads in grads.items():
        weight = weights[name]
        if isinstance(weight, Tensor):
            weight = weight.detach()
        for i, grad in enumerate(term_grads):
            if grad is not None:
                out[i] = grad * weight if out[i] is None else out[i] + grad * weight
    return out
