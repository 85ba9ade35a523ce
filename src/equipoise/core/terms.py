"""Loss terms: named scalar functions of the fit's shared forward output."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from equipoise.core.schedules import Schedule
from equipoise.errors import InputError

__all__ = ["Term"]


@dataclass(frozen=True)
class Term:
    """One named term of an objective.

    ``fn`` receives the output of the fit's ``forward()`` (None without one) and returns a scalar
    tensor (0-dim or one element). ``weight`` is the base weight (dimensionless): the fixed balancer
    uses it as is, the other balancers use it as a starting point or a ratio (see each balancer).
    ``schedule(step)`` multiplies the balanced weight at each global step. Terms know nothing about
    balancing.
    """

    name: str
    fn: Callable[[Any], Tensor]
    weight: float = 1.0
    schedule: Schedule | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"a term needs a non-empty string name, got {self.name!r}", field="Term.name")
        if not callable(self.fn):
            raise InputError(f"term {self.name!r}: fn must be callable, got {type(self.fn).__name__}",
                             field="Term.fn")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise InputError(f"term {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}",
                             field="Term.weight")

    def multiplier(self, step: int) -> float:
        """Schedule multiplier at the 0-based global ``step`` (1 without a schedule)."""
        return 1.0 if self.schedule is None else float(self.schedule(step))

    def describe(self) -> dict:
        """Name, base weight and schedule, for config.json."""
        return {"name": self.name, "weight": self.weight,
                "schedule": None if self.schedule is None else self.schedule.describe()}
