"""Diagnostic flags computed from one step's term values, weights and gradient norms."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from equipoise.core.gradients import Grads

__all__ = ["Flag", "shares", "dominance_flags", "dead_gradient_flags", "conflict_flags",
           "nonfinite_value", "nonfinite_gradient"]

#: cosine below which two terms' gradients are flagged as conflicting
CONFLICT_COSINE = -0.5
#: a term whose |value| is above this is "non-negligible" for the dead-gradient test
NEGLIGIBLE_VALUE = 1e-12


@dataclass(frozen=True)
class Flag:
    """One diagnostic finding: ``kind`` is dominance, dead_gradient, nonfinite or conflict, or an
    application's own (``Fit(monitor=...)``)."""

    kind: str
    step: int
    message: str
    term: str | None = None
    group: str | None = None
    other: str | None = None
    value: float | None = None

    def to_dict(self) -> dict:
        """The non-None fields, for record.jsonl."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def shares(weighted: Mapping[str, float]) -> dict[str, float]:
    """Share of each term in the total: ``|w_t L_t| / sum |w L|`` (absolute values, so that terms
    of either sign are comparable); 0 for all terms if the total is 0."""
    total = sum(abs(v) for v in weighted.values())
    if not total > 0 or not math.isfinite(total):
        return {t: 0.0 for t in weighted}
    return {t: abs(v) / total for t, v in weighted.items()}


def dominance_flags(term_shares: Mapping[str, float], threshold: float, step: int) -> list[Flag]:
    """A flag for each term whose share exceeds ``threshold`` (only with two or more terms)."""
    if len(term_shares) < 2:
        return []
    return [Flag("dominance", step, f"term {t!r} holds {s:.1%} of the total (threshold {threshold:.0%})",
                 term=t, value=s) for t, s in term_shares.items() if s > threshold]


def dead_gradient_flags(raw: Mapping[str, float], weights: Mapping[str, float],
                        norms: Mapping[str, Mapping[str, float]], depends: Mapping[str, bool],
                        step: int) -> list[Flag]:
    """A flag for each weighted term with a non-negligible value whose gradient on the free
    parameters is exactly zero although it depends on them (e.g. behind a clamp)."""
    return [Flag("dead_gradient", step, f"term {t!r} has value {raw[t]:.4g} but zero gradient on the free "
                 "parameters (saturated clamp or threshold?)", term=t, value=raw[t])
            for t in raw
            if depends[t] and weights[t] != 0 and abs(raw[t]) > NEGLIGIBLE_VALUE and norms[t]["*"] == 0.0]


def conflict_flags(term_cosines: Mapping[tuple[str, str], float], step: int) -> list[Flag]:
    """A flag for each pair of terms whose gradients have cosine below ``CONFLICT_COSINE``."""
    return [Flag("conflict", step, f"gradients of {a!r} and {b!r} conflict (cosine {c:.3f})",
                 term=a, other=b, value=c)
            for (a, b), c in term_cosines.items() if c < CONFLICT_COSINE]


def nonfinite_value(raw: Mapping[str, float], step: int) -> Flag | None:
    """A flag for the first term whose value is NaN or infinite, or None."""
    for t, v in raw.items():
        if not math.isfinite(v):
            return Flag("nonfinite", step, f"term {t!r} is {v} at step {step}", term=t, value=v)
    return None


def nonfinite_gradient(grads: Mapping[str, Grads], layout: Sequence[str], step: int) -> Flag | None:
    """A flag for the first (term, group) whose gradient has a NaN or infinite element, or None."""
    for t, term_grads in grads.items():
        for group, grad in zip(layout, term_grads):
            if grad is not None and not bool(torch.isfinite(grad).all()):
                return Flag("nonfinite", step, f"gradient of term {t!r} on group {group!r} is not finite "
                            f"at step {step}", term=t, group=group)
    return None
