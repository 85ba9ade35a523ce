"""Per-term gradients on the free parameters, by ``torch.autograd.grad`` only.

Nothing here reads or writes ``.grad``, so calling these functions any number of times gives the
same numbers (a helper that calls ``backward()`` without zeroing accumulates instead).
"""

from __future__ import annotations

import math
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


def _dots(grads: Mapping[str, Grads], pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
    """``dots[k][i]``: dot product of the gradients of ``pairs[k]`` on tensor ``i`` (0 if either is
    missing). Computed in the gradients' own dtype on flat views (no copies); one synchronisation."""
    rows = []
    for a, b in pairs:
        row = []
        for ga, gb in zip(grads[a], grads[b], strict=True):
            if ga is None or gb is None:
                row.append(None)
            else:
                row.append(torch.dot(ga.reshape(-1), gb.reshape(-1)).to(torch.float64))
        rows.append(row)
    present = [d for row in rows for d in row if d is not None]
    values = iter(torch.stack(present).cpu().tolist() if present else [])
    return [[0.0 if d is None else next(values) for d in row] for row in rows]


def gradient_norms(grads: Mapping[str, Grads], layout: Sequence[str]) -> dict[str, dict[str, float]]:
    """Euclidean norm of each term's gradient on each group, and on all of them (key ``"*"``).

    ``layout[i]`` is the group of tensor ``i``.
    """
    names = list(grads)
    squares = _dots(grads, [(t, t) for t in names])
    out = {}
    for name, row in zip(names, squares):
        per_group: dict[str, float] = dict.fromkeys(layout, 0.0)
        for group, value in zip(layout, row):
            per_group[group] += value
        out[name] = {g: math.sqrt(v) for g, v in per_group.items()}
        out[name]["*"] = math.sqrt(sum(row))
    return out


def cosines(grads: Mapping[str, Grads], norms: Mapping[str, Mapping[str, float]]) -> dict[tuple[str, str], float]:
    """Cosine between the gradients of every pair of terms on all the given tensors.

    ``norms`` are from :func:`gradient_norms`. Pairs where either gradient is zero are left out.
    """
    names = [t for t in grads if norms[t]["*"] > 0]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if not pairs:
        return {}
    dots = _dots(grads, pairs)
    return {(a, b): sum(row) / (norms[a]["*"] * norms[b]["*"]) for (a, b), row in zip(pairs, dots)}


def combine(grads: Mapping[str, Grads], weights: Mapping[str, float | Tensor], n_params: int) -> Grads:
    """``sum_t weights[t] * grads[t]`` per tensor: the gradient of the weighted total."""
    out: Grads = [None] * n_params
    for name, term_grads in grads.items():
        weight = weights[name]
        if isinstance(weight, Tensor):
            weight = weight.detach()
        for i, grad in enumerate(term_grads):
            if grad is not None:
                out[i] = grad * weight if out[i] is None else out[i].add_(grad * weight)
    return out
