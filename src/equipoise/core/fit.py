"""The fit loop: stages of an optimiser over free parameter groups, balanced terms, diagnostics,
run records, checkpoints and resume; for training also mini-batches, validation, learning-rate
schedules, gradient clipping, time budgets and data parallelism.

Per step the engine evaluates ``forward()`` (with ``data``: ``forward(batch)`` on the step's
batch) once, every active term on its output, and the weighted total ``sum_t w_t(step) L_t``. On diagnostic steps (every ``grad_every`` steps) it takes
each term's gradient on the free parameters with ``torch.autograd.grad`` on the step's own graph
and forms the total gradient as ``sum_t w_t g_t``, so diagnostics add only the difference
between per-term and total backward passes.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from equipoise import __version__
from equipoise.core import diagnostics as diag
from equipoise.core import distributed as ddp
from equipoise.core.balancers import Balancer, FixedBalancer, Weight
from equipoise.core.gradients import Grads, combine, cosines, gradient_norms, term_gradients
from equipoise.core.groups import ParamGroups
from equipoise.core.progress import MODES, Progress
from equipoise.core.record import RunDir
from equipoise.core.stage import Stage
from equipoise.core.terms import Term
from equipoise.errors import InputError, NonFiniteError

__all__ = ["Fit", "FitResult", "StageResult"]

NONFINITE_POLICIES = ("raise", "skip")
CHECKPOINT_VERSION = 1


@dataclass
class StageResult:
    """Outcome of one stage. Weights are balanced weights (before schedules), with reasons."""

    name: str
    steps: int
    converged: bool
    initial_loss: float
    final_loss: float
    weights: dict[str, float]
    reasons: dict[str, str]
    final_weights: dict[str, float]
    final_reasons: dict[str, str]
    final_terms: dict[str, dict[str, float]]
    ended: str = "steps"


@dataclass
class FitResult:
    """Outcome of :meth:`Fit.run`.

    ``initial_loss``: weighted total at the first step; ``final_loss``: weighted total of the last
    stage at the final parameters; ``steps``: steps done in all stages; ``converged``: every stage
    met its ``tol`` test (False for stages without ``tol``); ``flags``: one summary per kind of
    diagnostic flag (first and last step, count); ``completed``: False if ``max_steps`` stopped
    the run early (resume it with ``run()``); ``validation``: ``{"last": {"step", "metrics"},
    "best": {metric: {"value", "step"}}}`` when the fit has ``validate`` (else empty).
    """

    initial_loss: float
    final_loss: float
    steps: int
    converged: bool
    stages: list[StageResult]
    run_dir: Path | None
    flags: list[dict] = field(default_factory=list)
    completed: bool = True
    validation: dict = field(default_factory=dict)


class _Skip(Exception):
    """Internal: a non-finite value or gradient under the "skip" policy."""

    def __init__(self, flag: diag.Flag) -> None:
        super().__init__(flag.message)
        self.flag = flag


def _scalar(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise InputError(f"term {name!r} must return a scalar tensor, got {shape}", field=f"Term({name!r}).fn")
    return value.reshape(())


def _finite_norm(grads: Grads, n_params: int) -> Tensor | None | bool:
    """Euclidean norm of the first ``n_params`` gradients (the free parameters; a 0-dim tensor,
    None if all are None), or False if any gradient is not finite. One fused norm over all
    tensors (``torch.nn.utils.get_total_norm``) instead of one reduction per tensor; a non-finite
    norm is confirmed per tensor, since squares of huge finite values can overflow."""
    model = [g for g in grads[:n_params] if g is not None]
    norm = torch.nn.utils.get_total_norm(model) if model else None
    checks = [g.sum() for g in grads[n_params:] if g is not None]
    if norm is not None:
        checks.append(norm.to(checks[0].dtype) if checks else norm)
    if not checks or bool(torch.isfinite(torch.stack(checks)).all()):
        return norm
    present = [g.sum() for g in grads if g is not None]
    return norm if bool(torch.isfinite(torch.stack(present)).all()) else False


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StageRun:
    """Runtime of one stage: active terms, free tensors, balancer, optimiser, current weights."""

    def __init__(self, index: int, stage: Stage, terms: list[str], params: list[Tensor], layout: list[str],
                 balancer: Balancer, optimizer: torch.optim.Optimizer) -> None:
        self.index, self.stage, self.terms, self.params, self.layout = index, stage, terms, params, layout
        self.balancer, self.optimizer = balancer, optimizer
        self.opt_params = params + balancer.parameters()
        self.weights: dict[str, Weight] = {}


class _Evaluation:
    """One evaluation of the objective on one batch (None without data); term gradients and
    norms are computed on demand, once. Under data parallelism term values and gradients are
    averaged over the ranks, so every rank sees the values of the union of their batches."""

    def __init__(self, fit: "Fit", run: _StageRun, batch: Any = None) -> None:
        if fit.data is None:
            out = fit.forward() if fit.forward is not None else None
        else:
            out = fit.forward(batch) if fit.forward is not None else batch
        self.values = {t: _scalar(fit.terms[t].fn(out), t) for t in run.terms}
        self.run, self.parallel = run, ddp.active()
        self._raw: dict[str, float] | None = None
        self._grads: dict[str, Grads] | None = None
        self._norms: dict[str, dict[str, float]] | None = None

    @property
    def has_grads(self) -> bool:
        return self._grads is not None

    def _reduce(self, total: Tensor | None) -> float | None:
        """Term values (and ``total``) as float, averaged over ranks: one host synchronisation."""
        parts = [v.detach().to(torch.float64) for v in self.values.values()]
        if total is not None:
            parts.append(total.detach().to(torch.float64).reshape(()))
        stacked = torch.stack(parts)
        if self.parallel:
            stacked = ddp.average([stacked])[0]
        values = stacked.cpu().tolist()
        self._raw = dict(zip(self.values, values))
        return values[-1] if total is not None else None

    def raw(self) -> dict[str, float]:
        if self._raw is None:
            self._reduce(None)
        return self._raw

    def loss(self, total: Tensor) -> float:
        """``total`` as float; under data parallelism its mean over ranks (term values come along)."""
        if not self.parallel:
            return float(total.detach())
        return self._reduce(total)

    def grads(self) -> dict[str, Grads]:
        if self._grads is None:
            grads = term_gradients(self.values, self.run.params)
            if self.parallel:  # one all-reduce for all terms
                flat = ddp.average([g for per in grads.values() for g in per])
                size = len(self.run.params)
                grads = {t: flat[k * size:(k + 1) * size] for k, t in enumerate(grads)}
            self._grads = grads
        return self._grads

    def norms(self) -> dict[str, dict[str, float]]:
        if self._norms is None:
            self._norms = gradient_norms(self.grads(), self.run.layout)
        return self._norms


class _Context:
    """The :class:`~equipoise.core.balancers.BalanceContext` the engine gives balancers."""

    def __init__(self, evaluation: Callable[[], _Evaluation], stage_step: int,
                 trial: Callable[[Mapping[str, float], int | None, Callable[[], float]], float] | None) -> None:
        self._make, self._evaluation, self.stage_step, self._trial = evaluation, None, stage_step, trial

    def _get(self) -> _Evaluation:
        if self._evaluation is None:
            self._evaluation = self._make()
        return self._evaluation

    def raw(self) -> dict[str, float]:
        return self._get().raw()

    def norms(self) -> dict[str, dict[str, float]]:
        return self._get().norms()

    def trial(self, weights: Mapping[str, float], steps: int | None, metric: Callable[[], float]) -> float:
        if self._trial is None:
            raise InputError("trial fits are only available at the start of a stage", field="balancer")
        return self._trial(weights, steps, metric)


@dataclass
class _Outcome:
    """What one step produced (first evaluation of the step)."""

    loss: float = math.nan
    evaluation: _Evaluation | None = None
    line: dict | None = None
    flags: list[diag.Flag] = field(default_factory=list)
    evaluations: int = 0
    reweighted: bool = False
    skipped: bool = False
    lr: float = math.nan
    grad_norm: Tensor | None = None  # total gradient norm on the free parameters, before clipping


@dataclass
class _State:
    """Where the fit stands; saved in checkpoints."""

    stage_index: int = 0
    stage_step: int = 0
    global_step: int = 0
    initial_loss: float | None = None
    last_loss: float = math.nan
    prev_loss: float | None = None
    calm_steps: int = 0
    stage_initial_loss: float = math.nan
    stage_weights: dict[str, list] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    flags: dict[str, dict] = field(default_factory=dict)
    finished: bool = False
    stage_seconds: float = 0.0
    validation: dict = field(default_factory=dict)


class Fit:
    """A staged fit of named parameter groups to a sum of balanced terms.

    ``params``: group name -> leaf tensor or tensors (any dtype/device; the fit follows them).
    ``terms``: the objective's terms (unique names). ``stages``: run in order.
    ``forward``: shared computation run once per evaluation; its output is passed to every term.
    ``run_dir``: where config.json, record.jsonl, summary.json, run.log and checkpoint.pt go
    (None: nothing written, no resume). ``log_every``: record every this many steps;
    ``grad_every``: per-term gradient norms, cosines and dead-gradient checks every this many steps.
    ``nonfinite``: "raise" (NonFiniteError naming term, group and step) or "skip" (skip the step).
    ``dominance_threshold``: share above which a term is flagged. ``summarize``: returns parameter
    values in user units for the record and plots (default: small groups' values every logged
    step, large groups' mean and rms every ``grad_every`` steps). ``progress``: "auto", "bar",
    "plain" or "quiet". ``checkpoint_every``: steps between checkpoints (also at every stage end).
    ``config``: free-form user settings stored in config.json. ``diagnostics=False`` turns off
    per-term logging, gradient norms and flags (the benchmark's reference); non-finite checks stay.

    Training: ``data``: a :class:`~equipoise.core.data.Batches` (or any object with ``__next__``,
    ``peek``, ``state_dict`` and ``load_state_dict``); each step draws one batch and calls
    ``forward(batch)`` (terms get the batch itself without ``forward``); evaluations outside a
    step (stage-start weights, final losses) use the next batch (``peek``). ``validate() ->
    {metric: number}`` runs under ``torch.no_grad()`` every ``validate_every`` steps and after the
    last step (put the model in eval mode inside it); metrics named in ``validate_maximize`` are
    better when larger, the others when smaller. ``extra_state``: name -> object with
    ``state_dict``/``load_state_dict`` or a pair ``(save, load)`` of callables, saved in and
    restored from checkpoints (e.g. module buffers). ``monitor(step) -> [Flag]``: the
    application's own checks, called at every logged step after ``summarize`` (e.g. posterior
    collapse); its flags are recorded, summarised and shown like the core's. Under
    ``torch.distributed`` with two or more processes see :mod:`equipoise.core.distributed`.
    """

    def __init__(self, params: Mapping[str, Tensor | Sequence[Tensor]], terms: Sequence[Term],
                 stages: Sequence[Stage], forward: Callable[[], Any] | None = None,
                 run_dir: str | Path | None = None, log_every: int = 1, grad_every: int = 10,
                 nonfinite: str = "raise", dominance_threshold: float = 0.9,
                 summarize: Callable[[], dict[str, float | list[float]]] | None = None,
                 progress: str = "auto", checkpoint_every: int = 50, config: dict | None = None,
                 diagnostics: bool = True, data: Any = None, validate: Callable[[], Mapping[str, float]] | None = None,
                 validate_every: int | None = None, validate_maximize: Sequence[str] = (),
                 extra_state: Mapping[str, Any] | None = None,
                 monitor: Callable[[int], Sequence[diag.Flag]] | None = None) -> None:
        self.groups = ParamGroups(params)
        self.terms: dict[str, Term] = {}
        for term in terms:
            if not isinstance(term, Term):
                raise InputError(f"expected Term objects, got {type(term).__name__}", field="terms")
            if term.name in self.terms:
                raise InputError(f"duplicate term name {term.name!r}", field="terms")
            self.terms[term.name] = term
        if not self.terms:
            raise InputError("at least one term is needed", field="terms")
        self.stages = list(stages)
        if not self.stages:
            raise InputError("at least one stage is needed", field="stages")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise InputError(f"stage names must be unique, got {names}", field="stages")
        for stage in self.stages:
            self.groups.check_names(stage.free, f"Stage({stage.name!r}).free")
            for t in stage.terms or ():
                if t not in self.terms:
                    raise InputError(f"unknown term {t!r}; terms are {list(self.terms)}",
                                     field=f"Stage({stage.name!r}).terms")
        for name, value in (("log_every", log_every), ("grad_every", grad_every),
                            ("checkpoint_every", checkpoint_every)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"must be an integer >= 1, got {value!r}", field=name)
        if nonfinite not in NONFINITE_POLICIES:
            raise InputError(f"must be one of {NONFINITE_POLICIES}, got {nonfinite!r}", field="nonfinite")
        if progress not in MODES:
            raise InputError(f"must be one of {MODES}, got {progress!r}", field="progress")
        if not 0 < dominance_threshold <= 1:
            raise InputError(f"must lie in (0, 1], got {dominance_threshold!r}", field="dominance_threshold")
        self.forward, self.summarize, self.progress_mode = forward, summarize, progress
        self.monitor = monitor
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.log_every, self.grad_every, self.checkpoint_every = log_every, grad_every, checkpoint_every
        self.nonfinite, self.dominance_threshold = nonfinite, dominance_threshold
        self.config, self.diagnostics = dict(config or {}), diagnostics
        if data is not None:
            missing = [m for m in ("__next__", "peek", "state_dict", "load_state_dict") if not hasattr(data, m)]
            if missing:
                raise InputError(f"data must be a Batches (or have {missing}), got {type(data).__name__}",
                                 field="data")
        if validate is not None and not callable(validate):
            raise InputError(f"must be callable, got {type(validate).__name__}", field="validate")
        if validate_every is not None:
            if validate is None:
                raise InputError("validate_every needs a validate function", field="validate_every")
            if not isinstance(validate_every, int) or validate_every < 1:
                raise InputError(f"must be an integer >= 1 or None, got {validate_every!r}", field="validate_every")
        self.extra_state = dict(extra_state or {})
        for name, value in self.extra_state.items():
            pair = isinstance(value, tuple) and len(value) == 2 and all(callable(v) for v in value)
            if not pair and not (hasattr(value, "state_dict") and hasattr(value, "load_state_dict")):
                raise InputError(f"extra_state[{name!r}] must have state_dict/load_state_dict or be a "
                                 "(save, load) pair of callables", field=f"extra_state[{name!r}]")
        self.data, self.validate, self.validate_every = data, validate, validate_every
        self.validate_maximize = set(validate_maximize)
        self._record: RunDir | None = None
        self._progress: Progress | None = None

    # ----------------------------------------------------------------------------- description
    def structure(self) -> dict:
        """What must match for a checkpoint to be resumed: groups, terms, stages."""
        return {"params": self.groups.describe(), "terms": list(self.terms),
                "stages": [[s.name, s.free, s.terms] for s in self.stages]}

    def describe(self) -> dict:
        """Everything about this fit, for config.json."""
        return {"equipoise": __version__, "config": self.config, "params": self.groups.describe(),
                "terms": [t.describe() for t in self.terms.values()],
                "stages": [s.describe() for s in self.stages],
                "fit": {"log_every": self.log_every, "grad_every": self.grad_every, "nonfinite": self.nonfinite,
                        "dominance_threshold": self.dominance_threshold,
                        "checkpoint_every": self.checkpoint_every, "diagnostics": self.diagnostics,
                        "validate_every": self.validate_every, "validate_maximize": sorted(self.validate_maximize)},
                "data": None if self.data is None else getattr(self.data, "describe", lambda: {})()}

    # ----------------------------------------------------------------------------- stages
    def _prepare(self, index: int, balancer: Balancer | None = None) -> _StageRun:
        """Freeze all but the stage's groups; bind its balancer; build its optimiser."""
        stage = self.stages[index]
        terms = list(stage.terms or self.terms)
        self.groups.set_free(stage.free)
        params = self.groups.tensors(stage.free)
        balancer = balancer or stage.balancer
        base = {t: self.terms[t].weight for t in terms}
        balancer.bind(terms, base, stage.free, params[0].dtype, params[0].device)
        optimizer = stage.make_optimizer(params, balancer.parameters())
        return _StageRun(index, stage, terms, params, self.groups.layout(stage.free), balancer, optimizer)

    def balance(self, stage: str | int) -> dict[str, Weight]:
        """The weights ``stage``'s balancer gives at the current parameters, as at the start of
        that stage. Nothing is stepped; parameters, ``.grad`` and ``requires_grad`` are unchanged."""
        index = self._stage_index(stage)
        with self.groups.keep_flags():
            run = self._prepare(index)
            return run.balancer.start(self._context(run, 0, 0))

    def _stage_index(self, stage: str | int) -> int:
        names = [s.name for s in self.stages]
        if isinstance(stage, int) and 0 <= stage < len(names):
            return stage
        if stage in names:
            return names.index(stage)
        raise InputError(f"unknown stage {stage!r}; stages are {names}", field="stage")

    def _context(self, run: _StageRun, stage_step: int, step: int) -> _Context:
        def trial(weights: Mapping[str, float], steps: int | None, metric: Callable[[], float]) -> float:
            return self._trial(run.index, weights, steps or run.stage.steps, metric, step)
        return _Context(lambda: _Evaluation(self, run, self._peek()), stage_step, trial)

    def _peek(self) -> Any:
        """The next batch without drawing it (None without data)."""
        return None if self.data is None else self.data.peek()

    def _trial(self, index: int, weights: Mapping[str, float], steps: int, metric: Callable[[], float],
               step: int) -> float:
        """Fit ``steps`` steps of stage ``index`` with fixed ``weights``; return ``metric()``; undo."""
        saved, rng = self.groups.state(), _rng_state()
        position = None if self.data is None else self.data.state_dict()
        balancer = FixedBalancer()
        run = self._prepare(index, balancer)
        balancer.base = dict(weights)
        run.weights = {t: Weight(float(weights[t]), "validation screen trial") for t in run.terms}
        try:
            for j in range(steps):
                self._step(run, step + j, j, observe=False)
            return float(metric())
        except NonFiniteError:
            return math.nan
        finally:
            self.groups.load(saved)
            _set_rng_state(rng)
            if position is not None:
                self.data.load_state_dict(position)

    # ----------------------------------------------------------------------------- one step
    def _total(self, run: _StageRun, evaluation: _Evaluation, step: int) -> tuple[Tensor, dict]:
        learned = run.balancer.tensors()
        effective: dict[str, float | Tensor] = {}
        total = None
        for t in run.terms:
            base = learned[t] if learned is not None else run.weights[t].value
            effective[t] = base * self.terms[t].multiplier(step)
            part = effective[t] * evaluation.values[t]
            total = part if total is None else total + part
        extra = run.balancer.regulariser()
        if extra is not None:
            total = total + extra
        return total, effective

    def _nonfinite(self, flag: diag.Flag, outcome: _Outcome, run: _StageRun) -> None:
        outcome.flags.append(flag)
        if self.nonfinite == "skip":
            raise _Skip(flag)
        raise NonFiniteError(f"{flag.message} (stage {run.stage.name!r})", term=flag.term, group=flag.group,
                             step=flag.step)

    def _gradients(self, run: _StageRun, evaluation: _Evaluation, total: Tensor, effective: dict,
                   per_term: bool) -> Grads:
        """Gradient of the weighted total on the optimiser's tensors."""
        if not total.requires_grad:
            return [None] * len(run.opt_params)
        if not per_term:
            grads = list(torch.autograd.grad(total, run.opt_params, allow_unused=True))
            return ddp.average(grads) if evaluation.parallel else grads
        grads = combine(evaluation.grads(), effective, len(run.params))  # per-term grads already averaged
        extra = run.balancer.parameters()
        if extra:
            extra_grads = list(torch.autograd.grad(total, extra, allow_unused=True))
            grads += ddp.average(extra_grads) if evaluation.parallel else extra_grads
        return grads

    def _step(self, run: _StageRun, step: int, stage_step: int, observe: bool, seconds: float = 0.0) -> _Outcome:
        """One optimiser step (one ``optimizer.step`` call) after ``seconds`` of the stage's wall
        time (for a clock-following lr schedule). Raises NonFiniteError under "raise"."""
        every = run.stage.rebalance_every
        rebalance = observe and every is not None and stage_step > 0 and stage_step % every == 0
        logged = observe and self.diagnostics and step % self.log_every == 0
        grad_step = logged and step % self.grad_every == 0
        per_term = grad_step or run.balancer.grads_every_step or (rebalance and run.balancer.needs_grads)
        outcome = _Outcome(lr=run.stage.lr_at(stage_step, seconds))
        if run.stage.lr_schedule is not None:
            for group in run.optimizer.param_groups:
                group["lr"] = outcome.lr
        batch = None if self.data is None else next(self.data)
        clip = run.stage.clip_grad_norm

        def closure() -> Tensor:
            first = outcome.evaluations == 0
            outcome.evaluations += 1
            for p in run.opt_params:
                p.grad = None
            evaluation = _Evaluation(self, run, batch)
            if first:
                outcome.evaluation = evaluation
                if rebalance:
                    run.weights = run.balancer.rebalance(_Context(lambda: evaluation, stage_step, None))
                    outcome.reweighted = True
            total, effective = self._total(run, evaluation, step)
            loss = evaluation.loss(total)
            if first:
                outcome.loss = loss
            if not math.isfinite(loss):
                flag = diag.nonfinite_value(evaluation.raw(), step)
                self._nonfinite(flag or diag.Flag("nonfinite", step, f"total loss is {loss} at step {step}",
                                                  value=loss), outcome, run)
            grads = self._gradients(run, evaluation, total, effective, per_term and first)
            norm = _finite_norm(grads, len(run.params))
            if norm is False:
                culprit = evaluation if evaluation.has_grads else _Evaluation(self, run, batch)
                flag = diag.nonfinite_gradient(culprit.grads(), run.layout, step)
                self._nonfinite(flag or diag.Flag("nonfinite", step, f"total gradient is not finite at step {step}"),
                                outcome, run)
            if first:
                outcome.grad_norm = norm
            if first and logged:
                outcome.line = self._observe(run, evaluation, effective, loss, step, stage_step, grad_step, outcome)
            for p, g in zip(run.opt_params, grads):
                p.grad = g
            if clip is not None and norm is not None:
                torch.nn.utils.clip_grads_with_norm_(run.params, clip, norm)
            return total.detach()

        snapshot = None
        if run.stage.optimizer == "lbfgs" and self.nonfinite == "skip":
            snapshot = (self.groups.state(), copy.deepcopy(run.optimizer.state_dict()),
                        [p.detach().clone() for p in run.balancer.parameters()])
        try:
            if run.stage.optimizer == "lbfgs":
                run.optimizer.step(closure)
            else:
                closure()
                run.optimizer.step()
        except _Skip:
            outcome.skipped = True
            if snapshot is not None:
                self.groups.load(snapshot[0])
                run.optimizer.load_state_dict(snapshot[1])
                with torch.no_grad():
                    for p, saved in zip(run.balancer.parameters(), snapshot[2]):
                        p.copy_(saved)
        finally:
            for p in run.opt_params:
                p.grad = None
        if run.balancer.grads_every_step and not outcome.skipped and outcome.evaluation is not None:
            update = run.balancer.update(_Context(lambda: outcome.evaluation, stage_step, None))
            if update is not None:
                run.weights = update
        outcome.evaluation = None  # release the step's graph
        return outcome

    def _observe(self, run: _StageRun, evaluation: _Evaluation, effective: dict, loss: float, step: int,
                 stage_step: int, grad_step: bool, outcome: _Outcome) -> dict:
        """The record line of a logged step, and its flags (added to ``outcome.flags``)."""
        raw = evaluation.raw()
        weights = {t: float(w.detach()) if isinstance(w, Tensor) else w for t, w in effective.items()}
        weighted = {t: raw[t] * weights[t] for t in run.terms}
        shares = diag.shares(weighted)
        flags = diag.dominance_flags(shares, self.dominance_threshold, step)
        line = {"step": step, "stage": run.stage.name, "stage_step": stage_step, "loss": loss, "lr": outcome.lr,
                "terms": {t: {"raw": raw[t], "weight": weights[t], "weighted": weighted[t], "share": shares[t]}
                          for t in run.terms}}
        if grad_step:
            norms = evaluation.norms()
            line["grad_norms"] = {t: {g: n for g, n in per.items() if g != "*"} for t, per in norms.items()}
            pair_cosines = cosines(evaluation.grads(), norms)
            line["cosines"] = {f"{a}|{b}": c for (a, b), c in pair_cosines.items()}
            depends = {t: v.requires_grad for t, v in evaluation.values.items()}
            flags += diag.dead_gradient_flags(raw, weights, norms, depends, step)
            flags += diag.conflict_flags(pair_cosines, step)
        line["params"] = self.summarize() if self.summarize is not None else self.groups.summary(grad_step)
        if self.monitor is not None:
            flags += list(self.monitor(step))
        if outcome.reweighted or stage_step == 0:
            line["reasons"] = {t: w.reason for t, w in run.weights.items()}
        outcome.flags += flags
        return line

    # ----------------------------------------------------------------------------- bookkeeping
    def _note_flags(self, flags: list[diag.Flag], stage: str, state: _State) -> None:
        for flag in flags:
            key = "|".join(str(x) for x in (flag.kind, stage, flag.term, flag.other, flag.group))
            entry = state.flags.get(key)
            if entry is None:
                state.flags[key] = {**flag.to_dict(), "stage": stage, "first_step": flag.step,
                                    "last_step": flag.step, "count": 1}
                self._progress.event(f"flag {flag.kind}: {flag.message} (stage {stage}, step {flag.step})")
            else:
                entry["last_step"], entry["count"] = flag.step, entry["count"] + 1

    def _final_evaluation(self, run: _StageRun, state: _State) -> tuple[float, dict]:
        """Weighted total and per-term values at the current parameters (no gradients)."""
        with torch.no_grad():
            evaluation = _Evaluation(self, run, self._peek())
            total, effective = self._total(run, evaluation, max(state.global_step - 1, 0))
            loss = evaluation.loss(total)
            raw = evaluation.raw()
        weights = {t: float(w) for t, w in effective.items()}
        weighted = {t: raw[t] * weights[t] for t in run.terms}
        shares = diag.shares(weighted)
        terms = {t: {"raw": raw[t], "weight": weights[t], "weighted": weighted[t], "share": shares[t]}
                 for t in run.terms}
        return loss, terms

    def _checkpoint(self, run: _StageRun | None, state: _State) -> None:
        """Save the fit's state (rank 0 writes; under data parallelism every rank must call this,
        since each rank's RNG state is gathered into the checkpoint)."""
        if self.run_dir is None:
            return
        rng = _rng_state()
        ranks = ddp.gather_objects(rng) if ddp.active() else None
        if self._record is None:
            return
        self._record.save_checkpoint({
            "version": CHECKPOINT_VERSION, "structure": self.structure(), "state": asdict(state),
            "params": self.groups.state(), "rng": rng, "rng_ranks": ranks, "world_size": ddp.world_size(),
            "data": None if self.data is None else self.data.state_dict(),
            "extra": {name: _save_extra(value) for name, value in self.extra_state.items()},
            "optimizer": None if run is None else run.optimizer.state_dict(),
            "balancer": None if run is None else run.balancer.state_dict(),
            "weights": None if run is None else {t: [w.value, w.reason] for t, w in run.weights.items()},
        })

    def _result(self, state: _State, completed: bool) -> FitResult:
        stages = [StageResult(**r) for r in state.results]
        return FitResult(
            initial_loss=math.nan if state.initial_loss is None else state.initial_loss,
            final_loss=stages[-1].final_loss if stages and state.finished else state.last_loss,
            steps=state.global_step, converged=bool(stages) and all(s.converged for s in stages) and state.finished,
            stages=stages, run_dir=self.run_dir, flags=list(state.flags.values()), completed=completed,
            validation=copy.deepcopy(state.validation))

    def _load(self, checkpoint: dict) -> _State:
        path = self.run_dir / "checkpoint.pt"
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"checkpoint version {checkpoint.get('version')!r}, expected {CHECKPOINT_VERSION}",
                             path=path, field="version")
        if checkpoint["structure"] != self.structure():
            raise InputError("checkpoint was written by a fit with other parameter groups, terms or stages; "
                             "use run(resume=False) or another run_dir", path=path, field="structure")
        if checkpoint.get("world_size", 1) != ddp.world_size():
            raise InputError(f"checkpoint was written by {checkpoint.get('world_size', 1)} processes, this run has "
                             f"{ddp.world_size()}: resume with the same number", path=path, field="world_size")
        if self.data is not None:
            if checkpoint.get("data") is None:
                raise InputError("checkpoint has no batch position (written by a fit without data)", path=path,
                                 field="data")
            self.data.load_state_dict(checkpoint["data"])
        saved = checkpoint.get("extra") or {}
        for name, value in self.extra_state.items():
            if name not in saved:
                raise InputError(f"checkpoint has no extra state {name!r} (it has {sorted(saved)})", path=path,
                                 field=f"extra_state[{name!r}]")
            _load_extra(value, saved[name])
        self.groups.load(checkpoint["params"])
        ranks = checkpoint.get("rng_ranks")
        _set_rng_state(ranks[ddp.rank()] if ranks else checkpoint["rng"])
        return _State(**checkpoint["state"])

    # ----------------------------------------------------------------------------- the loop
    def run(self, resume: bool = True, max_steps: int | None = None) -> FitResult:
        """Run (or resume) the fit. ``resume``: continue from ``run_dir``'s checkpoint if there is
        one (a finished run returns its result). ``max_steps``: stop after this many steps in this
        call, with a checkpoint, and return a result with ``completed=False``. Under data
        parallelism every rank calls ``run``; rank 0 reads and writes the run directory."""
        parallel, main = ddp.active(), ddp.is_main()
        self._record = None if (self.run_dir is None or not main) else RunDir(self.run_dir)
        checkpoint = None
        if self.run_dir is not None and resume:
            checkpoint = self._record.load_checkpoint() if main else None
            if parallel:
                checkpoint = ddp.broadcast_object(checkpoint)
        state = _State()
        if checkpoint is not None:
            state = self._load(checkpoint)
            if state.finished:
                return self._result(state, completed=True)
        elif self._record is not None:
            self._record.clear()
            self._record.write_json(self._record.config, self.describe())
        if parallel:
            ddp.broadcast_([t for ts in self.groups.groups.values() for t in ts])
        total_steps = state.global_step + sum(s.steps for s in self.stages[state.stage_index:]) - state.stage_step
        self._progress = Progress(self.progress_mode if main else "quiet", total_steps, state.global_step,
                                  None if self._record is None else self._record.log)
        if self._record is not None:
            self._record.open_record(keep_before=state.global_step if checkpoint is not None else None)
        if checkpoint is not None:
            self._progress.event(f"resumed from checkpoint at step {state.global_step} "
                                 f"(stage {self.stages[state.stage_index].name!r}, stage step {state.stage_step})")
        if parallel:
            self._progress.event(f"data parallel over {ddp.world_size()} processes")
        started = time.perf_counter()
        try:
            with self.groups.keep_flags():
                completed = self._loop(state, checkpoint, max_steps)
        finally:
            if self._record is not None:
                self._record.close()
            self._progress.close()
        result = self._result(state, completed)
        if completed and self._record is not None:
            summary = asdict(result)
            summary["run_dir"] = str(self.run_dir)
            summary["elapsed_s"] = time.perf_counter() - started
            self._record.write_json(self._record.summary, summary)
        return result

    def _loop(self, state: _State, checkpoint: dict | None, max_steps: int | None) -> bool:
        done_here = 0
        while state.stage_index < len(self.stages):
            run = self._prepare(state.stage_index)
            stage = run.stage
            if state.stage_step == 0:
                run.weights = run.balancer.start(self._context(run, 0, state.global_step))
                state.stage_weights = {t: [w.value, w.reason] for t, w in run.weights.items()}
                state.prev_loss, state.calm_steps, state.stage_seconds = None, 0, 0.0
                listing = "; ".join(f"{t}={w.value:.4g} ({w.reason})" for t, w in run.weights.items())
                self._progress.event(f"stage {stage.name!r} starts at step {state.global_step}: free {stage.free}, "
                                     f"{stage.optimizer} lr {stage.lr:g}, {stage.steps} steps; weights: {listing}")
            else:
                run.optimizer.load_state_dict(checkpoint["optimizer"])
                run.balancer.load_state_dict(checkpoint["balancer"])
                run.weights = {t: Weight(v, r) for t, (v, r) in checkpoint["weights"].items()}
            converged = stage.tol is not None and state.calm_steps >= stage.patience
            out_of_time = self._time_up(stage, state)
            mark = time.perf_counter()
            while state.stage_step < stage.steps and not converged and not out_of_time:
                if max_steps is not None and done_here >= max_steps:
                    self._checkpoint(run, state)
                    return False
                step = state.global_step
                try:
                    outcome = self._step(run, step, state.stage_step, observe=True, seconds=state.stage_seconds)
                except NonFiniteError as exc:
                    flag = diag.Flag("nonfinite", step, str(exc), term=exc.term, group=exc.group)
                    self._note_flags([flag], stage.name, state)
                    if self._record is not None:
                        self._record.append({"step": step, "stage": stage.name, "stage_step": state.stage_step,
                                             "flags": [flag.to_dict()]})
                    raise
                if state.initial_loss is None:
                    state.initial_loss = outcome.loss
                if state.stage_step == 0:
                    state.stage_initial_loss = outcome.loss
                self._note_flags(outcome.flags, stage.name, state)
                if not outcome.skipped:
                    state.last_loss = outcome.loss
                    converged = self._converged(stage, state, outcome.loss)
                now = time.perf_counter()
                state.stage_seconds += now - mark
                mark = now
                out_of_time = self._time_up(stage, state)
                last = (state.stage_index == len(self.stages) - 1
                        and (state.stage_step + 1 >= stage.steps or converged or out_of_time))
                validation = None
                if self.validate is not None and (last or (self.validate_every is not None
                                                           and (step + 1) % self.validate_every == 0)):
                    validation = self._validation(state, step + 1)
                if self._record is not None:
                    line = outcome.line or {"step": step, "stage": stage.name, "stage_step": state.stage_step,
                                            "loss": outcome.loss, "lr": outcome.lr}
                    if outcome.grad_norm is not None:
                        line["grad_norm"] = float(outcome.grad_norm)
                    if outcome.flags:
                        line["flags"] = [f.to_dict() for f in outcome.flags]
                    if outcome.skipped:
                        line["skipped"] = True
                    if validation is not None:
                        line["validation"] = validation
                    if outcome.line is not None or not self.diagnostics or outcome.flags or validation is not None:
                        self._record.append(line)
                state.stage_step += 1
                state.global_step += 1
                done_here += 1
                self._progress.step(state.global_step, stage.name, state.stage_step - 1, stage.steps,
                                    state.last_loss)
                if state.global_step % self.checkpoint_every == 0:
                    self._checkpoint(run, state)
            self._finish_stage(run, state, "converged" if converged else "time" if out_of_time else "steps")
        state.finished = True
        self._checkpoint(None, state)
        self._progress.event(f"fit finished after {state.global_step} steps: loss {state.initial_loss:.6g} -> "
                             f"{state.last_loss:.6g}")
        return True

    def _time_up(self, stage: Stage, state: _State) -> bool:
        """Whether the stage's wall-time budget is spent (the same answer on every rank)."""
        if stage.max_seconds is None:
            return False
        spent = state.stage_seconds >= stage.max_seconds
        return ddp.any_true(spent) if ddp.active() else spent

    def _validation(self, state: _State, done: int) -> dict[str, float]:
        """Call ``validate()`` after ``done`` steps; keep the last and best values in ``state``."""
        with torch.no_grad():
            metrics = self.validate()
        if not isinstance(metrics, Mapping) or not all(isinstance(k, str) for k in metrics):
            raise InputError(f"validate() must return a dict of metric name -> number, got {type(metrics).__name__}",
                             field="validate")
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[name] = float(value)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"validate() returned {name}={value!r}, not a number", field="validate") from exc
        best = state.validation.setdefault("best", {})
        for name, value in values.items():
            held = best.get(name)
            better = held is None or not math.isfinite(held["value"]) or (
                value > held["value"] if name in self.validate_maximize else value < held["value"])
            if better and (held is None or math.isfinite(value)):
                best[name] = {"value": value, "step": done}
        state.validation["last"] = {"step": done, "metrics": values}
        self._progress.event(f"validation after step {done}: " + ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        return values

    def _converged(self, stage: Stage, state: _State, loss: float) -> bool:
        if stage.tol is None:
            return False
        if state.prev_loss is not None:
            change = abs(state.prev_loss - loss) / max(abs(state.prev_loss), 1e-300)
            state.calm_steps = state.calm_steps + 1 if change < stage.tol else 0
        state.prev_loss = loss
        return state.calm_steps >= stage.patience

    def _finish_stage(self, run: _StageRun, state: _State, ended: str) -> None:
        """Close the stage: final losses and weights; ``ended`` is "converged", "time" or "steps"."""
        if run.balancer.parameters():  # learned weights: report their final values
            run.weights = run.balancer.rebalance(self._context(run, state.stage_step, state.global_step))
        final_loss, final_terms = self._final_evaluation(run, state)
        state.last_loss = final_loss
        state.results.append(asdict(StageResult(
            name=run.stage.name, steps=state.stage_step, converged=ended == "converged",
            initial_loss=state.stage_initial_loss, final_loss=final_loss,
            weights={t: v for t, (v, _) in state.stage_weights.items()},
            reasons={t: r for t, (_, r) in state.stage_weights.items()},
            final_weights={t: w.value for t, w in run.weights.items()},
            final_reasons={t: w.reason for t, w in run.weights.items()}, final_terms=final_terms, ended=ended)))
        budget = {"converged": "converged", "time": "time budget", "steps": "step budget"}[ended]
        self._progress.event(f"stage {run.stage.name!r} ends after {state.stage_step} steps "
                             f"({budget}): loss {final_loss:.6g}")
        state.stage_index += 1
        state.stage_step = 0
        self._checkpoint(None, state)


def _save_extra(value: Any) -> Any:
    """State of one ``extra_state`` entry: ``state_dict()`` or ``save()``."""
    return value[0]() if isinstance(value, tuple) else value.state_dict()


def _load_extra(value: Any, saved: Any) -> None:
    """Restore one ``extra_state`` entry from :func:`_save_extra`'s result."""
    if isinstance(value, tuple):
        value[1](saved)
    else:
        value.load_state_dict(saved)
