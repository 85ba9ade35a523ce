"""equipoise.core: the fitting engine.

A fit minimises a sum of named terms over named parameter groups, in stages. Each stage says
which groups are free, which terms are active, which optimiser runs and how the terms' weights
are balanced (on exactly that stage's free parameters). Every logged step records each term's
value, effective weight, weighted value and share, gradient norms per group, and diagnostic
flags; runs checkpoint atomically and resume. Neural models train on the same loop with
mini-batches (`Batches`), validation, learning-rate schedules and data parallelism
(`distributed`). See docs/core.md.
"""

from equipoise.core import distributed, robust, schedules
from equipoise.core.data import Batches, Interleaved
from equipoise.core.balancers import (Balancer, FixedBalancer, GradNormBalancer, GradNormRatioBalancer,
                                      TargetShareBalancer, UncertaintyBalancer, ValidationScreenBalancer,
                                      Weight, validation_screen)
from equipoise.core.diagnostics import Flag
from equipoise.core.fit import Fit, FitResult, StageResult
from equipoise.core.plots import plot_run
from equipoise.core.stage import Stage
from equipoise.core.terms import Term

__all__ = ["Flag", "Term", "Stage", "Fit", "FitResult", "StageResult", "Balancer", "Weight", "FixedBalancer",
           "GradNormRatioBalancer", "TargetShareBalancer", "GradNormBalancer", "UncertaintyBalancer",
           "ValidationScreenBalancer", "validation_screen", "schedules", "robust", "plot_run", "Batches", "Interleaved", "distributed"]
