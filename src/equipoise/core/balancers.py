"""Balancers: one interface that turns base weights into effective weights, with reasons.

The engine calls :meth:`Balancer.start` at the start of every stage, with a context whose values
and gradient norms are computed on exactly the parameters free in that stage (the failure this
prevents: ratio weights computed with every group free and reused while only B is free). It calls
:meth:`Balancer.rebalance` every ``Stage.rebalance_every`` steps and :meth:`Balancer.update`
after every step for balancers that learn continuously. Gradient norms come from
``torch.autograd.grad`` (see :mod:`equipoise.core.gradients`), never from ``.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["Weight", "BalanceContext", "Balancer", "FixedBalancer", "GradNormRatioBalancer",
           "TargetShareBalancer", "GradNormBalancer", "UncertaintyBalancer",
           "ValidationScreenBalancer", "validation_screen"]


@dataclass(frozen=True)
class Weight:
    """An effective weight (dimensionless) and the reason it has this value."""

    value: float
    reason: str


class BalanceContext(Protocol):
    """What a balancer may ask the engine about the current stage (all lazily computed)."""

    stage_step: int

    def raw(self) -> dict[str, float]:
        """Unweighted value of each active term at the current parameters."""

    def norms(self) -> dict[str, dict[str, float]]:
        """Gradient norm of each active term on each free group, and on all of them (key ``"*"``)."""

    def trial(self, weights: Mapping[str, float], steps: int, metric: Callable[[], float]) -> float:
        """Fit ``steps`` steps of this stage with fixed ``weights``, return ``metric()``, undo the fit."""


class Balancer:
    """Base class. Subclasses override :meth:`rebalance` and, if needed, the other hooks."""

    #: rebalance() reads gradient norms
    needs_grads = False
    #: update() must run after every step and reads gradient norms
    grads_every_step = False

    def bind(self, terms: Sequence[str], base: Mapping[str, float], free: Sequence[str],
             dtype: torch.dtype, device: torch.device) -> None:
        """Attach to a stage: its active terms, their base weights and its free groups."""
        self.terms = list(terms)
        self.base = dict(base)
        self.free = list(free)

    def start(self, ctx: BalanceContext) -> dict[str, Weight]:
        """Weights at the start of a stage (default: :meth:`rebalance`)."""
        return self.rebalance(ctx)

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        """Recompute the weights from the current state of the stage."""
        raise NotImplementedError

    def update(self, ctx: BalanceContext) -> dict[str, Weight] | None:
        """Called after every step when ``grads_every_step``; new weights or None."""
        return None

    def tensors(self) -> dict[str, Tensor] | None:
        """Differentiable weights (learned balancers) or None for plain numbers."""
        return None

    def regulariser(self) -> Tensor | None:
        """Extra scalar added to the total loss (learned balancers) or None."""
        return None

    def parameters(self) -> list[Tensor]:
        """Tensors the stage optimiser must also update (learned balancers)."""
        return []

    def state_dict(self) -> dict:
        """State needed to resume mid-stage."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""

    def describe(self) -> dict:
        """Name and settings, for config.json."""
        return {"balancer": type(self).__name__}


class FixedBalancer(Balancer):
    """Effective weight = the term's base weight."""

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        return {t: Weight(self.base[t], "fixed base weight") for t in self.terms}


def _check_terms(names: Sequence[str], active: Sequence[str], field: str) -> None:
    for name in names:
        if name not in active:
            raise InputError(f"term {name!r} is not active in this stage; active terms are {list(active)}",
                             field=field)


class GradNormRatioBalancer(Balancer):
    """``w_t = ratio_t * |g_ref| / |g_t|``, gradient norms on the stage's free parameters only.

    ``ratio_t`` defaults to the term's base weight, so the reference term keeps its base weight
    and a term of base weight 0.5 gets half the reference's gradient norm. A term with zero
    gradient on the free parameters keeps its base weight (it cannot move them anyway).
    """

    needs_grads = True

    def __init__(self, reference: str, ratios: Mapping[str, float] | None = None) -> None:
        self.reference = reference
        self.ratios = dict(ratios or {})

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        _check_terms([self.reference, *self.ratios], self.terms, "GradNormRatioBalancer")

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        norms = ctx.norms()
        g_ref = norms[self.reference]["*"]
        where = f"free groups {self.free} at stage step {ctx.stage_step}"
        if not g_ref > 0 or not math.isfinite(g_ref):
            return {t: Weight(self.base[t], f"base weight: reference {self.reference!r} has gradient norm "
                                            f"{g_ref:.3g} on {where}") for t in self.terms}
        out = {}
        for t in self.terms:
            ratio = self.ratios.get(t, self.base[t])
            g_t = norms[t]["*"]
            if g_t > 0 and math.isfinite(g_t):
                out[t] = Weight(ratio * g_ref / g_t, f"ratio {ratio:g} x |g_{self.reference}| {g_ref:.4g} / "
                                                      f"|g_{t}| {g_t:.4g} on {where}")
            else:
                out[t] = Weight(self.base[t], f"base weight: gradient norm {g_t:.3g} on {where}")
        return out

    def describe(self) -> dict:
        return {"balancer": "GradNormRatioBalancer", "reference": self.reference, "ratios": self.ratios}


class TargetShareBalancer(Balancer):
    """Weights that give each term a target share of the total: ``w_t = s_t * C / L_t``.

    ``C`` is the base-weighted total ``sum_t base_t L_t`` at the time of balancing, so the total's
    magnitude is kept. Shares must cover every active term, be >= 0 and sum to 1. Terms with a
    value <= 0 keep their base weight. Uses values only (no gradients).
    """

    def __init__(self, targets: Mapping[str, float]) -> None:
        self.targets = {k: float(v) for k, v in targets.items()}
        if any(v < 0 for v in self.targets.values()) or abs(sum(self.targets.values()) - 1.0) > 1e-6:
            raise InputError(f"target shares must be >= 0 and sum to 1, got {self.targets}",
                             field="TargetShareBalancer.targets")

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        _check_terms(list(self.targets), self.terms, "TargetShareBalancer.targets")
        missing = [t for t in self.terms if t not in self.targets]
        if missing:
            raise InputError(f"no target share for active terms {missing}", field="TargetShareBalancer.targets")

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        raw = ctx.raw()
        total = sum(self.base[t] * raw[t] for t in self.terms)
        out = {}
        for t in self.terms:
            if raw[t] > 0 and total > 0 and math.isfinite(raw[t] * total):
                out[t] = Weight(self.targets[t] * total / raw[t],
                                f"target share {self.targets[t]:.3g} x base-weighted total {total:.4g} / "
                                f"value {raw[t]:.4g} at stage step {ctx.stage_step}")
            else:
                out[t] = Weight(self.base[t], f"base weight: value {raw[t]:.3g}, base total {total:.3g}")
        return out

    def describe(self) -> dict:
        return {"balancer": "TargetShareBalancer", "targets": self.targets}


class GradNormBalancer(Balancer):
    """GradNorm (Chen et al. 2018, ICML, "GradNorm", eqs. 1-2) on the stage's free parameters.

    After each step, with ``G_t = w_t |g_t|`` (gradient norm on ``group``, default all free groups),
    ``r_t = (L_t/L_t(0)) / mean(L/L(0))`` and target ``mean(G) * r_t^alpha`` held constant, one
    gradient step of size ``lr`` on ``sum_t |G_t - target_t|`` (gradient ``sign(G_t - target_t)|g_t|``
    with respect to ``w_t``), then renormalisation so the weights keep the sum of the base weights.
    Unlike the paper (which feeds this gradient to its own optimiser), the gradient is divided by
    the mean ``|g|`` over the terms, so that ``lr`` is a dimensionless weight change per step.
    Terms with zero gradient keep their weights. ``L(0)`` is taken at the start of the stage.
    """

    needs_grads = True
    grads_every_step = True

    def __init__(self, alpha: float = 1.5, lr: float = 0.025, group: str | None = None) -> None:
        self.alpha, self.lr, self.group = float(alpha), float(lr), group

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        if self.group is not None and self.group not in self.free:
            raise InputError(f"group {self.group!r} is not free in this stage (free: {self.free})",
                             field="GradNormBalancer.group")
        self.weights = dict(self.base)
        self.initial: dict[str, float] = {}

    def start(self, ctx: BalanceContext) -> dict[str, Weight]:
        self.initial = {t: abs(v) for t, v in ctx.raw().items()}
        self.weights = dict(self.base)
        return {t: Weight(w, "GradNorm initial weight (base)") for t, w in self.weights.items()}

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        return {t: Weight(w, "GradNorm weight (continuous updates)") for t, w in self.weights.items()}

    def update(self, ctx: BalanceContext) -> dict[str, Weight]:
        norms, raw = ctx.norms(), ctx.raw()
        key = self.group or "*"
        live = [t for t in self.terms if norms[t][key] > 0 and self.initial.get(t, 0) > 0]
        if len(live) < 2:
            return self.rebalance(ctx)
        g = {t: norms[t][key] for t in live}
        big_g = {t: self.weights[t] * g[t] for t in live}
        mean_g = sum(big_g.values()) / len(live)
        rel = {t: abs(raw[t]) / self.initial[t] for t in live}
        mean_rel = sum(rel.values()) / len(live)
        target = {t: mean_g * (rel[t] / mean_rel) ** self.alpha for t in live}
        budget = sum(self.weights[t] for t in live)
        mean_norm = sum(g.values()) / len(live)
        for t in live:
            step = math.copysign(g[t] / mean_norm, big_g[t] - target[t]) if big_g[t] != target[t] else 0.0
            self.weights[t] = max(self.weights[t] - self.lr * step, 1e-12)
        scale = budget / sum(self.weights[t] for t in live)
        out = {}
        for t in self.terms:
            if t in live:
                self.weights[t] *= scale
                reason = (f"GradNorm alpha {self.alpha:g}: |w g| {big_g[t]:.3g} vs target {target[t]:.3g} "
                          f"(loss ratio {rel[t]:.3g}) at stage step {ctx.stage_step}")
            else:
                reason = "GradNorm: zero gradient or zero initial loss, weight kept"
            out[t] = Weight(self.weights[t], reason)
        return out

    def state_dict(self) -> dict:
        return {"weights": dict(self.weights), "initial": dict(self.initial)}

    def load_state_dict(self, state: Mapping) -> None:
        self.weights, self.initial = dict(state["weights"]), dict(state["initial"])

    def describe(self) -> dict:
        return {"balancer": "GradNormBalancer", "alpha": self.alpha, "lr": self.lr, "group": self.group}


class UncertaintyBalancer(Balancer):
    """Uncertainty weighting (Kendall et al. 2018, CVPR, eq. 7) with learned log-variances.

    Adds ``sum_t [exp(-s_t) L_t + s_t]`` with ``s_t = log sigma_t^2`` learned by the stage optimiser
    (Kendall's eq. 7 is half of this; the factor changes no minimiser). ``s_t`` starts at
    ``-log(base_t)`` so the initial weight ``exp(-s_t)`` is the base weight. Terms should be
    non-negative (negative-log-likelihood-like), otherwise ``s_t`` diverges.
    """

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        for t in self.terms:
            if not self.base[t] > 0:
                raise InputError(f"term {t!r} needs a base weight > 0 to start uncertainty weighting",
                                 field="UncertaintyBalancer")
        init = [-math.log(self.base[t]) for t in self.terms]
        self.log_var = torch.tensor(init, dtype=dtype, device=device, requires_grad=True)

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        values = torch.exp(-self.log_var.detach()).cpu().tolist()
        return {t: Weight(v, "exp(-s), s the learned log-variance") for t, v in zip(self.terms, values)}

    def tensors(self) -> dict[str, Tensor]:
        weights = torch.exp(-self.log_var)
        return {t: weights[i] for i, t in enumerate(self.terms)}

    def regulariser(self) -> Tensor:
        return self.log_var.sum()

    def parameters(self) -> list[Tensor]:
        return [self.log_var]

    def state_dict(self) -> dict:
        return {"log_var": self.log_var.detach().clone()}

    def load_state_dict(self, state: Mapping) -> None:
        with torch.no_grad():
            self.log_var.copy_(state["log_var"])

    def describe(self) -> dict:
        return {"balancer": "UncertaintyBalancer"}


class ValidationScreenBalancer(Balancer):
    """Choose one term's weight by a held-out metric, the way restraint weights are chosen by R-free.

    At stage start, for each weight in ``grid``: fit ``steps`` steps of the stage (default the
    stage's own budget) from the current parameters with that weight (other terms at base weight),
    evaluate ``metric()`` (e.g. R-free), and undo the fit. The best weight (lowest metric unless
    ``minimize=False``) is used for the real stage. Not rebalanced afterwards.
    """

    def __init__(self, term: str, grid: Sequence[float], metric: Callable[[], float],
                 steps: int | None = None, minimize: bool = True) -> None:
        self.term, self.metric, self.steps, self.minimize = term, metric, steps, minimize
        self.grid = [float(w) for w in grid]
        if not self.grid or any(not math.isfinite(w) or w < 0 for w in self.grid):
            raise InputError(f"grid must hold finite weights >= 0, got {list(grid)}", field="validation_screen.grid")
        self.results: list[tuple[float, float]] = []
        self.chosen: float | None = None

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        _check_terms([self.term], self.terms, "validation_screen.term")

    def start(self, ctx: BalanceContext) -> dict[str, Weight]:
        self.results = []
        for w in self.grid:
            value = float(ctx.trial({**self.base, self.term: w}, self.steps, self.metric))
            self.results.append((w, value))
        finite = [r for r in self.results if math.isfinite(r[1])]
        if not finite:
            raise InputError(f"metric was not finite for any weight of the grid: {self.results}",
                             field="validation_screen.metric")
        best = (min if self.minimize else max)(finite, key=lambda r: r[1])
        self.chosen = best[0]
        return self.rebalance(ctx)

    def rebalance(self, ctx: BalanceContext) -> dict[str, Weight]:
        table = ", ".join(f"{w:g}: {m:.4g}" for w, m in self.results)
        out = {t: Weight(self.base[t], "fixed base weight") for t in self.terms}
        out[self.term] = Weight(self.chosen, f"validation screen, best held-out metric of "
                                             f"{{{table}}} ({'lowest' if self.minimize else 'highest'} wins)")
        return out

    def state_dict(self) -> dict:
        return {"results": list(self.results), "chosen": self.chosen}

    def load_state_dict(self, state: Mapping) -> None:
        self.results, self.chosen = [tuple(r) for r in state["results"]], state["chosen"]

    def describe(self) -> dict:
        return {"balancer": "ValidationScreenBalancer", "term": self.term, "grid": self.grid,
                "steps": self.steps, "minimize": self.minimize}


def validation_screen(term: str, grid: Sequence[float], metric: Callable[[], float], *,
                      steps: int | None = None, minimize: bool = True) -> ValidationScreenBalancer:
    """A :class:`ValidationScreenBalancer` for ``term`` over ``grid`` (use as ``Stage(balancer=...)``)."""
    return ValidationScreenBalancer(term, grid, metric, steps=steps, minimize=minimize)
