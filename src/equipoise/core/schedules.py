"""Schedules: a multiplier as a function of a 0-based step.

A schedule is a callable ``schedule(step) -> float``. As a term's ``schedule``, ``step`` is the
global step of the fit (counted across stages) and the engine multiplies the term's balanced
weight by it; as a stage's ``lr_schedule``, ``step`` is the stage step and the engine multiplies
the stage's ``lr`` by it. Every schedule describes itself with :meth:`Schedule.describe` so that
run configs are readable.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["Schedule", "Constant", "Linear", "Cosine", "Piecewise", "Cyclical", "WarmupCosine", "free_bits"]


class Schedule(ABC):
    """A weight multiplier as a function of the 0-based global step."""

    @abstractmethod
    def __call__(self, step: int) -> float:
        """Multiplier at ``step`` (dimensionless)."""

    def at(self, step: int, time_fraction: float = 0.0) -> float:
        """Multiplier at ``step`` of a stage that has spent ``time_fraction`` (0..1) of its
        wall-time budget; the engine calls this for a stage's ``lr_schedule``. Only schedules that
        follow the clock (``WarmupCosine(by_time=True)``) use the fraction."""
        return self(step)

    def describe(self) -> dict:
        """Name and arguments, for config.json and log lines."""
        return {"schedule": type(self).__name__, **asdict(self)}  # type: ignore[call-overload]


def _ramp_fraction(step: int, begin: int, steps: int) -> float:
    """Fraction of a ramp done at ``step``: 0 up to ``begin``, 1 from ``begin + steps`` on."""
    return min(1.0, max(0.0, (step - begin) / steps))


def _check_positive(value: int, field: str) -> None:
    if value <= 0:
        raise InputError(f"must be a positive number of steps, got {value}", field=field)


@dataclass(frozen=True)
class Constant(Schedule):
    """Always ``value``."""

    value: float = 1.0

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class Linear(Schedule):
    """``start`` until step ``begin``, linear to ``end`` over ``steps`` steps, then ``end``."""

    start: float
    end: float
    steps: int
    begin: int = 0

    def __post_init__(self) -> None:
        _check_positive(self.steps, "Linear.steps")

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * _ramp_fraction(step, self.begin, self.steps)


@dataclass(frozen=True)
class Cosine(Schedule):
    """Half-cosine ramp from ``start`` to ``end`` over ``steps`` steps after ``begin``, then hold."""

    start: float
    end: float
    steps: int
    begin: int = 0

    def __post_init__(self) -> None:
        _check_positive(self.steps, "Cosine.steps")

    def __call__(self, step: int) -> float:
        frac = _ramp_fraction(step, self.begin, self.steps)
        return self.start + (self.end - self.start) * 0.5 * (1.0 - math.cos(math.pi * frac))


@dataclass(frozen=True)
class Piecewise(Schedule):
    """A curriculum table: ``((first_step, value), ...)``; the value of the last row reached holds.

    Rows must start at step 0 and be strictly increasing in ``first_step``.
    """

    table: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        rows = tuple((int(s), float(v)) for s, v in self.table)
        object.__setattr__(self, "table", rows)
        if not rows or rows[0][0] != 0:
            raise InputError(f"first row must start at step 0, got {rows[:1]}", field="Piecewise.table")
        if any(b[0] <= a[0] for a, b in zip(rows, rows[1:])):
            raise InputError(f"first steps must increase strictly, got {[r[0] for r in rows]}",
                             field="Piecewise.table")

    def __call__(self, step: int) -> float:
        value = self.table[0][1]
        for first, row_value in self.table:
            if step < first:
                break
            value = row_value
        return value


@dataclass(frozen=True)
class Cyclical(Schedule):
    """Cyclical annealing (Fu et al. 2019, NAACL, "Cyclical annealing schedule", eq. 2).

    Each cycle of ``period`` steps ramps linearly from ``low`` to ``high`` over its first
    ``ratio * period`` steps and holds ``high`` for the rest. Step ``k * period`` is ``low``.
    Fu et al. recommend ``ratio=0.5``; a ratio near 1 (ramping over most of the cycle) is what
    let posteriors collapse in our past projects.
    """

    period: int
    ratio: float = 0.5
    high: float = 1.0
    low: float = 0.0

    def __post_init__(self) -> None:
        _check_positive(self.period, "Cyclical.period")
        if not 0.0 < self.ratio <= 1.0:
            raise InputError(f"ramp ratio must lie in (0, 1], got {self.ratio}", field="Cyclical.ratio")

    @classmethod
    def over(cls, total_steps: int, cycles: int, ratio: float = 0.5, high: float = 1.0) -> "Cyclical":
        """``cycles`` cycles spread over ``total_steps`` steps (period ``ceil(total/cycles)``)."""
        _check_positive(cycles, "Cyclical.cycles")
        return cls(period=math.ceil(total_steps / cycles), ratio=ratio, high=high)

    def __call__(self, step: int) -> float:
        position = (step % self.period) / self.period
        if position >= self.ratio:
            return self.high
        return self.low + (self.high - self.low) * position / self.ratio


@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``floor``.

    Steps ``0 .. warmup-1`` ramp linearly as ``(step + 1) / warmup`` (so step 0 already moves);
    from ``warmup`` to ``total`` the multiplier follows a half cosine from 1 down to ``floor``
    (Loshchilov & Hutter 2017, "SGDR", eq. 5, one cycle without restarts); after ``total`` it
    holds ``floor``. ``warmup=0`` starts the decay at once. ``by_time``: in a stage with a
    wall-time budget (``Stage.max_seconds``), the cosine's progress after the warm-up is the larger
    of the step fraction and the fraction of the budget spent, so a run that the clock ends (a
    fixed number of minutes on a machine of unknown speed) still decays to ``floor``.
    """

    warmup: int
    total: int
    floor: float = 0.0
    by_time: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"must be an integer >= 0 steps, got {self.warmup!r}", field="WarmupCosine.warmup")
        if not isinstance(self.total, int) or self.total <= self.warmup:
            raise InputError(f"must be an integer number of steps > warmup ({self.warmup}), got {self.total!r}",
                             field="WarmupCosine.total")
        if not 0.0 <= self.floor <= 1.0:
            raise InputError(f"must lie in [0, 1], got {self.floor!r}", field="WarmupCosine.floor")

    def __call__(self, step: int) -> float:
        return self.at(step)

    def at(self, step: int, time_fraction: float = 0.0) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        if self.by_time:
            frac = max(frac, min(1.0, time_fraction))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def free_bits(kl: Tensor, floor: float) -> Tensor:
    """Free-bits KL (Kingma et al. 2016, "Improved variational inference with IAF", eq. 15).

    ``kl``: per-latent KL divergences in nats, shape ``(..., n_latent)``; leading dimensions (the
    batch) are averaged. Returns the scalar ``sum_j max(floor, mean KL_j)``. Latents below the
    floor get zero gradient, so the encoder is not pushed to collapse them further.
    """
    if floor < 0:
        raise InputError(f"free-bits floor must be >= 0 nats, got {floor}", field="free_bits.floor")
    if kl.dim() == 0:
        raise InputError("expected per-latent KL of shape (..., n_latent), got a scalar", field="free_bits.kl")
    per_latent = kl.reshape(-1, kl.shape[-1]).mean(dim=0)
    return torch.clamp(per_latent, min=floor).sum()

