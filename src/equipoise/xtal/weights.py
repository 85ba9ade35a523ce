"""Restraint weights of a refinement stage, on exactly that stage's free parameters, with reasons.

``RestraintRatioBalancer`` (a core ``Balancer``) gives every restraint kind of a stage the same
weight ``w = ratio * |g_xray| / |g_restraints|``, gradient norms on the stage's free groups only,
with ``|g_restraints| = sqrt(sum_k |g_k|^2)`` over the kinds. One weight for all kinds keeps the
relative weighting that the library's sigmas set (REFMAC and servalcat weight the whole geometry
target with one number, Murshudov et al. 2011; Yamashita et al. 2023).

``RmsZController`` then moves ``ratio`` between macro-cycles so that the bond rmsZ stays in a
target range, as servalcat's ``--adjust_weight`` keeps it in [0.5, 1.0]
(``servalcat/refine/refine.py``, ``Refine.run_cycles``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from equipoise.core import Balancer, Weight
from equipoise.errors import InputError


class RestraintRatioBalancer(Balancer):
    """One weight for the ``restraints`` terms: ``ratio |g_reference| / |g_restraints|``.

    Other active terms keep their base weight. Norms are on the stage's free groups only (the
    engine's ``norms()``). A zero restraint gradient leaves the base weights.
    """

    needs_grads = True

    def __init__(self, reference: str, restraints: Sequence[str], ratio: float) -> None:
        if not ratio > 0 or not math.isfinite(ratio):
            raise InputError(f"ratio must be finite and > 0, got {ratio!r}", field="ratio")
        self.reference, self.restraints, self.ratio = reference, list(restraints), float(ratio)

    def bind(self, terms, base, free, dtype, device) -> None:
        super().bind(terms, base, free, dtype, device)
        missing = [t for t in [self.reference, *self.restraints] if t not in self.terms]
        if missing:
            raise InputError(f"terms {missing} are not active in this stage", field="RestraintRatioBalancer")

    def rebalance(self, ctx) -> dict[str, Weight]:
        norms = ctx.norms()
        g_ref = norms[self.reference]["*"]
        g_geo = math.sqrt(sum(norms[t]["*"] ** 2 for t in self.restraints))
        where = f"free groups {self.free} at stage step {ctx.stage_step}"
        out = {t: Weight(self.base[t], "base weight") for t in self.terms}
        if not (g_ref > 0 and g_geo > 0 and math.isfinite(g_ref) and math.isfinite(g_geo)):
            for t in self.restraints:
                out[t] = Weight(self.base[t], f"base weight: |g_{self.reference}| {g_ref:.3g}, "
                                              f"|g_restraints| {g_geo:.3g} on {where}")
            return out
        w = self.ratio * g_ref / g_geo
        for t in self.restraints:
            out[t] = Weight(w * self.base[t], f"ratio {self.ratio:.4g} x |g_{self.reference}| {g_ref:.4g} / "
                                              f"|g_restraints| {g_geo:.4g} on {where}")
        return out

    def describe(self) -> dict:
        return {"balancer": "RestraintRatioBalancer", "reference": self.reference,
                "restraints": self.restraints, "ratio": self.ratio}


@dataclass
class RmsZController:
    """Keep bond rmsZ in ``[low, high]`` by scaling the restraint ratio between cycles.

    ``update(rmsz)`` returns the next ratio and the reason: multiplied by ``factor`` when the
    geometry is looser than ``high``, divided when tighter than ``low``, kept otherwise; clamped
    to ``[min_ratio, max_ratio]``.
    """

    ratio: float = 1.0
    low: float = 0.5
    high: float = 1.0
    factor: float = 2.0
    min_ratio: float = 1e-3
    max_ratio: float = 1e3

    def update(self, bond_rmsz: float) -> tuple[float, str]:
        old = self.ratio
        if bond_rmsz > self.high:
            self.ratio = min(old * self.factor, self.max_ratio)
            why = f"bond rmsZ {bond_rmsz:.2f} > {self.high:g}: restraint ratio {old:.4g} -> {self.ratio:.4g}"
        elif bond_rmsz < self.low:
            self.ratio = max(old / self.factor, self.min_ratio)
            why = f"bond rmsZ {bond_rmsz:.2f} < {self.low:g}: restraint ratio {old:.4g} -> {self.ratio:.4g}"
        else:
            why = f"bond rmsZ {bond_rmsz:.2f} in [{self.low:g}, {self.high:g}]: ratio kept at {old:.4g}"
        return self.ratio, why

    def state(self) -> Mapping[str, float]:
        return {"ratio": self.ratio}
