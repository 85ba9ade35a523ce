"""Stages: which groups are free, which terms are active, how to optimise them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from equipoise.core.balancers import Balancer, FixedBalancer
from equipoise.core.schedules import Schedule
from equipoise.errors import InputError

__all__ = ["Stage", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "adamw", "lbfgs", "sgd")
#: L-BFGS defaults: one Fit step = one L-BFGS iteration with a strong-Wolfe line search
LBFGS_DEFAULTS = {"max_iter": 1, "history_size": 10, "line_search_fn": "strong_wolfe"}
#: line-search evaluations allowed per L-BFGS iteration. torch bounds the line search by
#: ``max_eval - evaluations so far`` and defaults ``max_eval`` to ``max_iter * 5 // 4`` (= 1 for one
#: iteration), which leaves no line search at all: L-BFGS then stalls on the first rejected step.
LBFGS_EVALS_PER_ITERATION = 25


@dataclass
class Stage:
    """One stage (macro-cycle) of a fit.

    ``free``: names of the parameter groups optimised in this stage; all other groups are frozen
    (``requires_grad=False``, not given to the optimiser, bitwise unchanged). ``terms``: active
    term names (None: all). ``optimizer``: "adam", "adamw" (decoupled weight decay, torch default
    0.01, set with ``optimizer_options={"weight_decay": ...}``; a balancer's own learned weights
    are never decayed), "lbfgs" (strong-Wolfe line search; one step = one
    ``optimizer.step(closure)`` call, by default one L-BFGS iteration; ``lr=1`` is the usual
    choice) or "sgd". ``steps``: step budget (>= 1). ``tol``/``patience``: the stage converges
    when the relative change of the weighted total between consecutive steps stays below ``tol``
    for ``patience`` steps. ``balancer``: how effective weights are set (default fixed);
    ``rebalance_every``: recompute them every this many steps of the stage (they are always
    computed at the start of the stage, on this stage's free parameters).
    ``optimizer_options``: extra keyword arguments of the torch optimiser.
    ``lr_schedule``: multiplies ``lr`` at each stage step (0-based, e.g.
    :class:`~equipoise.core.schedules.WarmupCosine`). ``clip_grad_norm``: rescale the total
    gradient of the free parameters to at most this Euclidean norm before each optimiser step
    (None: no clipping; the pre-clip norm is recorded either way). ``max_seconds``: wall-time
    budget of the stage in seconds (summed over resumed runs); when spent the stage ends after the
    current step, not converged.
    """

    name: str
    free: Sequence[str]
    terms: Sequence[str] | None = None
    optimizer: str = "adam"
    lr: float = 1e-2
    steps: int = 100
    tol: float | None = None
    patience: int = 5
    balancer: Balancer | None = None
    rebalance_every: int | None = None
    optimizer_options: dict | None = field(default=None)
    lr_schedule: Schedule | None = None
    clip_grad_norm: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        where = f"Stage {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"a stage needs a non-empty string name, got {self.name!r}", field="Stage.name")
        if isinstance(self.free, str):
            self.free = [self.free]
        self.free = list(self.free)
        if not self.free:
            raise InputError(f"{where}: at least one free parameter group is needed", field="Stage.free")
        if self.terms is not None:
            self.terms = [self.terms] if isinstance(self.terms, str) else list(self.terms)
            if not self.terms:
                raise InputError(f"{where}: terms=[] leaves nothing to fit (use None for all)", field="Stage.terms")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"{where}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
                             field="Stage.optimizer")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"{where}: lr must be a positive number, got {self.lr!r}", field="Stage.lr")
        for name, value, low in (("steps", self.steps, 1), ("patience", self.patience, 1)):
            if not isinstance(value, int) or value < low:
                raise InputError(f"{where}: {name} must be an integer >= {low}, got {value!r}", field=f"Stage.{name}")
        if self.tol is not None and not self.tol > 0:
            raise InputError(f"{where}: tol must be > 0 or None, got {self.tol!r}", field="Stage.tol")
        if self.rebalance_every is not None and (not isinstance(self.rebalance_every, int) or self.rebalance_every < 1):
            raise InputError(f"{where}: rebalance_every must be an integer >= 1 or None, got {self.rebalance_every!r}",
                             field="Stage.rebalance_every")
        if self.lr_schedule is not None and not isinstance(self.lr_schedule, Schedule):
            raise InputError(f"{where}: lr_schedule must be a Schedule, got {type(self.lr_schedule).__name__}",
                             field="Stage.lr_schedule")
        for name, value in (("clip_grad_norm", self.clip_grad_norm), ("max_seconds", self.max_seconds)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{where}: {name} must be a positive number or None, got {value!r}",
                                 field=f"Stage.{name}")
        if self.balancer is None:
            self.balancer = FixedBalancer()
        elif not isinstance(self.balancer, Balancer):
            raise InputError(f"{where}: balancer must be a Balancer, got {type(self.balancer).__name__}",
                             field="Stage.balancer")

    def make_optimizer(self, params: list[Tensor], extra: Sequence[Tensor] = ()) -> torch.optim.Optimizer:
        """A fresh torch optimiser of this stage over ``params`` and a balancer's ``extra`` tensors
        (one parameter group; AdamW puts ``extra`` in a second group without weight decay)."""
        options = dict(self.optimizer_options or {})
        try:
            if self.optimizer == "adamw":
                groups = [{"params": params}] + ([{"params": list(extra), "weight_decay": 0.0}] if extra else [])
                return torch.optim.AdamW(groups, lr=self.lr, **options)
            params = params + list(extra)
            if self.optimizer == "adam":
                return torch.optim.Adam(params, lr=self.lr, **options)
            if self.optimizer == "sgd":
                return torch.optim.SGD(params, lr=self.lr, **options)
            lbfgs = {**LBFGS_DEFAULTS, **options}
            lbfgs.setdefault("max_eval", LBFGS_EVALS_PER_ITERATION * lbfgs["max_iter"])
            return torch.optim.LBFGS(params, lr=self.lr, **lbfgs)
        except TypeError as exc:
            raise InputError(f"Stage {self.name!r}: bad optimizer_options {options}: {exc}",
                             field="Stage.optimizer_options") from exc

    def describe(self) -> dict:
        """Settings, for config.json."""
        return {"name": self.name, "free": self.free, "terms": self.terms, "optimizer": self.optimizer,
                "lr": self.lr, "steps": self.steps, "tol": self.tol, "patience": self.patience,
                "balancer": self.balancer.describe(), "rebalance_every": self.rebalance_every,
                "optimizer_options": self.optimizer_options,
                "lr_schedule": None if self.lr_schedule is None else self.lr_schedule.describe(),
                "clip_grad_norm": self.clip_grad_norm, "max_seconds": self.max_seconds}

    def lr_at(self, stage_step: int, seconds: float = 0.0) -> float:
        """Learning rate at the 0-based ``stage_step`` after ``seconds`` of the stage's wall time:
        ``lr`` times the schedule's multiplier (:meth:`Schedule.at`, with the fraction of
        ``max_seconds`` spent; 0 without a budget)."""
        if self.lr_schedule is None:
            return self.lr
        fraction = 0.0 if self.max_seconds is None else seconds / self.max_seconds
        return self.lr * float(self.lr_schedule.at(stage_step, fraction))
