"""Restraint weights of a refinement stage, on exactly that stage's free parameters, with reasons.

``RestraintRatioBalancer`` (a core ``Balancer``) gives every term of a restraint group (the
geometry kinds; the ADP similarity and B prior) the same weight
``w = ratio * |g_xray| / |g_group|``, gradient norms on the stage's free groups only, with
``|g_group| = sqrt(sum_k |g_k|^2)`` over the group's terms, taken at unit rmsZ when the
restraints' rms z-score is above 1 (``unit_z``). One weight per group keeps the
relative weighting that the restraints' sigmas set (REFMAC and servalcat weight the whole
geometry target with one number, Murshudov et al. 2011; Yamashita et al. 2023).

``RmsZController`` then moves ``ratio`` between macro-cycles so that the bond rmsZ stays in a
target range, as servalcat's ``--adjust_weight`` keeps it in [0.5, 1.0]
(``servalcat/refine/refine.py``, ``Refine.run_cycles``).

``SharedWeightBalancer`` gives a stage weights decided elsewhere, with their reasons (the B
stage's ADP restraints get the xyz stage's restraint weight: ``equipoise.xtal.refine``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from equipoise.core import Balancer, Weight
from equipoise.errors import InputError


class RestraintRatioBalancer(Balancer):
    """One weight per group of restraint terms: ``ratio |g_reference| / |g_group|``.

    ``groups``: name -> (terms, ratio); ``|g_group| = sqrt(sum_t |g_t|^2)`` over the group's
    terms. Terms in no group keep their base weight. Norms are on the stage's free groups only
    (the engine's ``norms()``). A group with zero gradient keeps its base weights.

    ``unit_z``: group -> the rms z-score of its restraints at the stage start. A restraint's
    gradient grows with its z-score (d z^2/dx = 2 z dz/dx), so far from ideal geometry (a shaken
    or badly built model, rmsZ >> 1) |g_group| is inflated and the plain ratio gives the
    restraints a weight far below the one they get once the geometry is sound; the x-ray term
    then distorts the model in the first cycle. With ``unit_z`` the norm is the one at unit
    rmsZ, ``|g_group| / max(z, 1)`` (unchanged for z <= 1).
    """

    needs_grads = True

    def __init__(self, reference: str, groups: Mapping[str, tuple[Sequence[str], float]],
                 unit_z: Mapping[str, float] | None = None) -> None:
        self.reference = reference
        self.groups = {name: (list(terms), float(ratio)) for name, (terms, ratio) in groups.items()}
        for name, (_, ratio) in self.groups.items():
            if not ratio > 0 or not math.isfinite(ratio):
                raise InputError(f"ratio of {name!r} must be finite and > 0, got {ratio!r}", field="ratio")
        #: group -> current rms z-score of its restraints; |g_group| is divided by max(z, 1)
        self.unit_z = {k: float(v) for k, v in (unit_z or {}).items()}
        for name, z in self.unit_z.items():
            if name not in self.groups or not (z >= 0 and math.isfinite(z)):
                raise InputError(f"unit_z of {name!r} must name a group and be finite >= 0, got {z!r}",
                                 field="unit_z")

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        wanted = [self.reference, *(t for ts, _ in self.groups.values() for t in ts)]
        missing = [t for t in wanted if t not in self.terms]
        if missing:
            raise InputError(f"terms {missing} are not active in this stage", field="RestraintRatioBalancer")

    def rebalance(self, ctx) -> dict[str, Weight]:
        norms = ctx.norms()
        g_ref = norms[self.reference]["*"]
        where = f"free groups {self.free} at stage step {ctx.stage_step}"
        out = {t: Weight(self.base[t], "base weight") for t in self.terms}
        for name, (terms, ratio) in self.groups.items():
            g = math.sqrt(sum(norms[t]["*"] ** 2 for t in terms))
            if not (g_ref > 0 and g > 0 and math.isfinite(g_ref) and math.isfinite(g)):
                for t in terms:
                    out[t] = Weight(self.base[t], f"base weight: |g_{self.reference}| {g_ref:.3g}, "
                                                  f"|g_{name}| {g:.3g} on {where}")
                continue
            z = max(self.unit_z.get(name, 1.0), 1.0)
            w = ratio * g_ref * z / g
            at_unit = f" x rmsZ {z:.3g} (|g_{name}| at unit rmsZ)" if z > 1.0 else ""
            for t in terms:
                out[t] = Weight(w * self.base[t], f"{name}: ratio {ratio:.4g} x |g_{self.reference}| {g_ref:.4g} / "
                                                  f"|g_{name}| {g:.4g}{at_unit} on {where}")
        return out

    def describe(self) -> dict:
        return {"balancer": "RestraintRatioBalancer", "reference": self.reference,
                "groups": {k: {"terms": v[0], "ratio": v[1]} for k, v in self.groups.items()}}


class SharedWeightBalancer(Balancer):
    """Weights given by the caller, each with its reason (terms not given keep their base weight)."""

    def __init__(self, weights: Mapping[str, Weight]) -> None:
        for name, w in weights.items():
            if not (w.value > 0 and math.isfinite(w.value)):
                raise InputError(f"weight of {name!r} must be finite and > 0, got {w.value!r}",
                                 field="SharedWeightBalancer")
        self.weights = dict(weights)

    def rebalance(self, ctx) -> dict[str, Weight]:
        return {t: self.weights.get(t, Weight(self.base[t], "base weight")) for t in self.terms}

    def describe(self) -> dict:
        return {"balancer": "SharedWeightBalancer",
                "weights": {t: {"value": w.value, "reason": w.reason} for t, w in self.weights.items()}}


@dataclass
class RmsZController:
    """Keep bond rmsZ in ``[low, high]`` by moving the restraint weight between cycles.

    The next cycle's ratio is relative to the balance at that cycle's start, where a converged
    stage has |w g_restraints| ~ |g_xray|: ``update(rmsz)`` returns ``rmsz / high`` (clamped to
    ``[min_step, max_step]``) when the geometry is looser than ``high``, the inverse of
    ``low / rmsz`` (clamped likewise) when it is tighter than ``low``, and 1 (keep the balance)
    inside the range.
    """

    ratio: float = 1.0
    low: float = 0.5
    high: float = 1.0
    min_step: float = 1.5
    max_step: float = 4.0

    def update(self, bond_rmsz: float) -> tuple[float, str]:
        """The ratio of the next cycle and the reason."""
        if bond_rmsz > self.high:
            self.ratio = min(max(bond_rmsz / self.high, self.min_step), self.max_step)
            why = (f"bond rmsZ {bond_rmsz:.2f} > {self.high:g}: next cycle's restraint weight "
                   f"x{self.ratio:.3g} of its gradient-norm balance")
        elif bond_rmsz < self.low:
            self.ratio = 1.0 / min(max(self.low / max(bond_rmsz, 1e-6), self.min_step), self.max_step)
            why = (f"bond rmsZ {bond_rmsz:.2f} < {self.low:g}: next cycle's restraint weight "
                   f"x{self.ratio:.3g} of its gradient-norm balance")
        else:
            self.ratio = 1.0
            why = f"bond rmsZ {bond_rmsz:.2f} in [{self.low:g}, {self.high:g}]: next cycle keeps the balance (x1)"
        return self.ratio, why
