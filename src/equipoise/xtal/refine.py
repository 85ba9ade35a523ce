"""Refinement of coordinates and B-factors against X-ray data, on equipoise.core.

Each macro-cycle (as phenix.refine, REFMAC and servalcat do):

1. update the scales and bulk solvent at the current model (``XrayModel.update_scales``) and
   move their overall isotropic fall-off into the atoms' B (``overall_b_to_atoms``, as servalcat
   and phenix.refine do), so that B stays on the data's absolute scale and cannot drift;
2. xyz stage: L-BFGS on the coordinates, terms ``xray`` + one term per restraint kind (bond,
   angle, torsion, plane, chiral, nonbonded), one restraint weight computed on the xyz group only
   (``weights.RestraintRatioBalancer``), its ratio moved between cycles to keep bond rmsZ in
   [0.5, 1.0] (``weights.RmsZController``);
3. B stage: L-BFGS on the B-factors, terms ``xray`` + ``adp`` (similarity of the B of
   neighbouring atoms, in the relative, KL-divergence form of REFMAC and servalcat) +
   ``b_prior`` (weak pull to the start), both with the x-ray weight of the restraints that this
   cycle's xyz stage computed (``weights.SharedWeightBalancer``; see ``_Refinement.stage``);
4. occupancy stage (``occupancy="auto"``, when the model has alternate conformers or partially
   occupied residues): L-BFGS on the occupancies of ``occupancy.OccupancyGroups`` (conformers
   of a residue keep their total, a lone group stays in [0, 1]) against the x-ray term alone,
   as phenix.refine's default occupancy refinement.

``scheme="joint-once"`` reproduces the seed failure of DESIGN.md for comparison: the same
gradient-norm weights computed once with xyz and B both free, then reused in every stage (the
ADP weight is then |g_xray| over xyz *and* B divided by |g_adp| over B: inflated by about
|g_xray,xyz| / |g_xray,B|).

Each stage runs ``xyz_steps`` / ``b_steps`` L-BFGS iterations as core steps of up to
``LBFGS_ITERATIONS_PER_STEP`` iterations: torch's L-BFGS evaluates the target once at the start
of every ``step`` call, a point its line search has just evaluated, so one iteration per step
costs about two structure-factor evaluations where five per step cost about 1.3 each.

Each stage is one core ``Fit`` in ``run_dir/cycle_NN/<stage>`` (record, log, checkpoint, plots);
the model after each cycle is saved, so a killed run resumes at the cycle it was in.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from equipoise.core import Fit, FixedBalancer, Stage, Term, Weight
from equipoise.errors import InputError
from equipoise.xtal.hydrogens import RidingHydrogens
from equipoise.xtal.model import AtomModel
from equipoise.xtal.occupancy import OccupancyGroups
from equipoise.xtal.restraints import KINDS, Restraints
from equipoise.xtal.weights import RestraintRatioBalancer, RmsZController, SharedWeightBalancer

#: sigma of the weak prior pulling B to its start value, Å^2
B_PRIOR_SIGMA = 50.0
#: the B stage's restraint terms (one weight for both; their sigmas set their relative strength)
ADP_TERMS = ("adp", "b_prior")
#: B-factors are kept in this range, Å^2
B_MIN, B_MAX = 2.0, 300.0
SCHEMES = ("per-stage", "joint-once")
OCCUPANCY_MODES = ("auto", "off")
#: occupancy groups named in the log line of a cycle (all are in summary.json)
MAX_LOGGED_GROUPS = 8
#: L-BFGS iterations per core step (one ``optimizer.step`` call; see the module docstring)
LBFGS_ITERATIONS_PER_STEP = 5
#: extra factors the first cycle's ADP-weight screen may try past an end of ``adp_screen``
ADP_SCREEN_EXTENSIONS = 2
#: R-free differences below this are ties in the ADP-weight screen (the factor nearest 1 wins):
#: on 1A0F two factors' first-cycle R-free came out 0.2017 and 0.2017, and which one "won"
#: changed with 1e-7 changes of the solvent mask, and with it the whole refinement
ADP_SCREEN_MARGIN = 0.0002
#: the screen goes past the grid only with this many free reflections: on fewer, its R-free
#: differences are noise (5e5z's 44 free reflections sent it to x0.125)
ADP_SCREEN_EXTEND_MIN_FREE = 500


class XrayModel(Protocol):
    """What refinement needs from the data side (``equipoise.xtal.xray.XrayModel`` is the real one).

    Optional attributes, read with ``getattr``: ``refl`` and ``work`` ((m,) bool working set,
    which sizes the x-ray term), ``twin_fit`` (the last ``TwinFractionFit``, logged with the
    scales and stored in ``CycleStats.twin``), ``overall_b_to_atoms(xyz, b, occ, b_range)`` (moves
    the scales' overall isotropic fall-off into the atoms and returns their new B and the B moved;
    called after every scale update).
    """

    def update_scales(self, xyz: Tensor, b_iso: Tensor, occ: Tensor):
        """Refit scales, bulk solvent (and ML parameters) at this model, without gradient."""

    def fcalc(self, xyz: Tensor, b_iso: Tensor, occ: Tensor) -> Tensor:
        """(m,) complex atomic structure factors, differentiable in xyz, B, occ."""

    def target(self, fcalc: Tensor) -> Tensor:
        """The x-ray target on the working set (scalar)."""

    def r_factors(self, fcalc: Tensor) -> dict:
        """At least {"r_work", "r_free"} with the current scales; "n_free" (the free-set size)
        lets the ADP-weight screen go past its grid (``ADP_SCREEN_EXTEND_MIN_FREE``)."""


@dataclass
class RefineOptions:
    """Settings of a refinement (defaults as for a routine run at 1.5-2.5 Å).

    cycles: macro-cycles. xyz_steps, b_steps: L-BFGS iterations per stage and cycle.
    restraint_ratio: ratio |g_restraints| / |g_xray| of the first xyz stage (later cycles: the
        bond-rmsZ controller's).
    rmsz_range: target range of bond rmsZ for the ratio controller (servalcat: [0.5, 1]).
    adp_ratio: ratio |g_adp| / |g_xray| of the joint-once scheme's ADP weight (the per-stage B
        stage uses the xyz stage's restraint weight). refine_b: run the B stage.
    occupancy: "auto" (refine the occupancies of alternate conformers and partially occupied
        residues, when the model has any) or "off". occ_steps: L-BFGS iterations of that stage.
    adp_screen: factors of the B stage's restraint weight tried in the first cycle's B stage,
        each from the same model; the one with the lowest R-free is kept for every cycle (a
        validation screen, as phenix.refine's ADP-weight optimisation). ``(1.0,)``: no screen.
    scheme: "per-stage" (ours) or "joint-once" (the seed failure, for comparison only).
    """

    cycles: int = 5
    xyz_steps: int = 15
    b_steps: int = 10
    restraint_ratio: float = 1.0
    rmsz_range: tuple[float, float] = (0.5, 1.0)
    adp_ratio: float = 0.5
    refine_b: bool = True
    scheme: str = "per-stage"
    adp_screen: tuple[float, ...] = (0.5, 1.0, 2.0)
    occupancy: str = "auto"
    occ_steps: int = 5

    def check(self) -> None:
        """``InputError`` for impossible settings."""
        if self.cycles < 1:
            raise InputError(f"must be >= 1, got {self.cycles}", field="--cycles")
        for name in ("xyz_steps", "b_steps", "occ_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        lo, hi = self.rmsz_range
        if not 0 < lo < hi:
            raise InputError(f"need 0 < low < high, got {self.rmsz_range}", field="rmsz_range")
        for name in ("restraint_ratio", "adp_ratio"):
            if not getattr(self, name) > 0:
                raise InputError(f"must be > 0, got {getattr(self, name)}", field=name)
        if not self.adp_screen or not all(f > 0 for f in self.adp_screen):
            raise InputError(f"need one or more factors > 0, got {self.adp_screen}", field="adp_screen")
        if self.scheme not in SCHEMES:
            raise InputError(f"must be one of {SCHEMES}, got {self.scheme!r}", field="scheme")
        if self.occupancy not in OCCUPANCY_MODES:
            raise InputError(f"must be one of {OCCUPANCY_MODES}, got {self.occupancy!r}", field="--occupancy")


@dataclass
class CycleStats:
    """Statistics of the model after one macro-cycle (or of the start, cycle 0)."""

    cycle: int
    r_work: float
    r_free: float
    bond_rmsd: float
    angle_rmsd: float
    bond_rmsz: float
    angle_rmsz: float
    mean_b: float
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    scales: str = ""
    time_s: float = 0.0
    #: twin refinement: this cycle's fraction fit (``TwinFractionFit.as_dict()``: laws, alphas,
    #: start, losses, reason) and R-work/R-free without the twin model; None when untwinned
    twin: dict | None = None
    #: R-work and R-free after this cycle's xyz stage ({"r_work", "r_free"}), so that the log
    #: shows what each stage did to R-free (the cycle's own values are after its last stage)
    after_xyz: dict | None = None
    #: occupancy refinement: [{"group", "occ"}] after this cycle; None without an occupancy stage
    occupancies: list[dict] | None = None


@dataclass
class RefineResult:
    """Start, per-cycle and final statistics; the refined tensors; where the outputs are."""

    start: CycleStats
    cycles: list[CycleStats]
    xyz: Tensor
    b_iso: Tensor
    #: (n,) refined occupancies (the model's own where no group was refined)
    occ: Tensor
    run_dir: Path | None
    options: RefineOptions
    #: ``TwinningSummary.as_dict()`` of the data (set by the caller that measured it), or None
    twinning: dict | None = None
    #: twin refinement: laws, fractions, counts, R without the twin model (set by the caller), or None
    twin_refinement: dict | None = None

    @property
    def final(self) -> CycleStats:
        """The last cycle's statistics (the start when no cycle ran)."""
        return self.cycles[-1] if self.cycles else self.start

    def summary(self) -> str:
        """A table: one row for the start and one per cycle."""
        head = (f"{'cycle':>5} {'R-work':>7} {'R-free':>7} {'R-free after xyz':>16} {'bonds Å':>8} {'angles °':>8} "
                f"{'rmsZ(b)':>7} {'<B>':>6} {'time s':>7}")
        rows = [head]
        for s in [self.start, *self.cycles]:
            after = "" if s.after_xyz is None else f"{s.after_xyz['r_free']:.4f}"
            rows.append(f"{s.cycle:>5} {s.r_work:>7.4f} {s.r_free:>7.4f} {after:>16} {s.bond_rmsd:>8.4f} "
                        f"{s.angle_rmsd:>8.3f} {s.bond_rmsz:>7.3f} {s.mean_b:>6.1f} {s.time_s:>7.1f}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        """summary.json content: ``start``, ``cycles``, the final values at top level and
        ``twinning`` (the data's twinning statistics and verdict, when measured) and
        ``twin_refinement`` (when a twin model was refined)."""
        f = self.final
        return {"twinning": self.twinning, "twin_refinement": self.twin_refinement,
                "start": asdict(self.start), "cycles": [asdict(c) for c in self.cycles],
                "r_work": f.r_work, "r_free": f.r_free, "bond_rmsd": f.bond_rmsd,
                "angle_rmsd": f.angle_rmsd, "bond_rmsz": f.bond_rmsz, "angle_rmsz": f.angle_rmsz,
                "options": asdict(self.options)}


def stats_line(s: CycleStats) -> str:
    """One readable line of a cycle's statistics."""
    line = (f"cycle {s.cycle}: R-work {s.r_work:.4f} R-free {s.r_free:.4f} bonds {s.bond_rmsd:.4f} Å "
            f"(rmsZ {s.bond_rmsz:.2f}) angles {s.angle_rmsd:.2f}° (rmsZ {s.angle_rmsz:.2f}) <B> {s.mean_b:.1f}")
    if s.twin is not None:
        fractions = ", ".join(f"{a:.3f}" for a in s.twin["alphas"])
        line += (f"; twin model, fraction {fractions} (without it R-work {s.twin['r_work_untwinned']:.4f} "
                 f"R-free {s.twin['r_free_untwinned']:.4f})")
    return line


def adp_similarity(b_iso: Tensor, pairs: Tensor, weight: Tensor) -> Tensor:
    """Sum over pairs (m, 2) of ``weight (B_i - B_j)^2 / (B_i B_j)``; b_iso (n,) Å^2, weight (m,)
    (``Restraints.adp_pairs``: 1/sigma^2 times a distance factor).

    The relative difference is the isotropic form of the KL-divergence ADP restraint of REFMAC
    and servalcat (Murshudov et al. 2011, Acta Cryst. D67, 355): two atoms' displacement
    distributions are compared by their ratio, so atoms with large B may differ more in B than
    well-ordered ones. B_i B_j is floored at B_MIN^2 (a line-search trial below B_MIN).
    """
    if pairs.shape[0] == 0:
        return b_iso.sum() * 0.0
    bi, bj = b_iso[pairs[:, 0]], b_iso[pairs[:, 1]]
    return (weight * (bi - bj) ** 2 / (bi * bj).clamp(min=B_MIN ** 2)).sum()


def b_prior(b_iso: Tensor, b_start: Tensor) -> Tensor:
    """Weak Gaussian prior of B around its start: sum ((B - B0) / B_PRIOR_SIGMA)^2."""
    return (((b_iso - b_start) / B_PRIOR_SIGMA) ** 2).sum()


class _Refinement:
    """The state of one refinement: tensors, restraints, x-ray model, controller, log."""

    def __init__(self, model: AtomModel, restraints: Restraints, xray: XrayModel, options: RefineOptions,
                 run_dir: Path | None, log: Callable[[str], None], progress: str) -> None:
        self.model, self.restraints, self.xray, self.options = model, restraints, xray, options
        self.run_dir, self.log, self.progress = run_dir, log, progress
        self.xyz = model.xyz.detach().clone()
        self.b = model.b_iso.detach().clone().clamp(B_MIN, B_MAX)
        self.occ = model.occ.detach().clone()
        self.occ_groups = OccupancyGroups.from_model(model) if options.occupancy == "auto" else None
        if self.occ_groups is not None and self.occ_groups.n_groups == 0:
            self.occ_groups = None
        #: riding hydrogens (model read with hydrogens "riding" or "add"), placed ideally at the start
        self.riding = None
        if model.hydrogens == "riding" and restraints.hydrogen is not None and bool(restraints.hydrogen.any()):
            self.riding = RidingHydrogens.build(model, restraints)
            self.xyz = self.riding.idealize(self.xyz)
            self.b = self.riding.b_iso(self.b)
        self.b_start = self.b.clone()
        self.controller = RmsZController(ratio=options.restraint_ratio, low=options.rmsz_range[0],
                                         high=options.rmsz_range[1])
        #: the x-ray term is the target times the working-set size (the total -log-likelihood, as
        #: REFMAC and servalcat minimise): a per-reflection mean has gradients ~1e-4 on B, and
        #: torch's L-BFGS then never stores a curvature pair (its threshold s.y > 1e-10 is
        #: absolute) and creeps along the raw gradient, leaving B at its start values
        refl = getattr(xray, "refl", None)
        work = getattr(xray, "work", None if refl is None else refl.work)
        self.xray_count = float(work.sum()) if work is not None else 1.0
        self.joint_weights: dict[str, float] | None = None
        #: factor of the B stage's restraint weight; None until the first cycle's screen chose it
        self.adp_factor: float | None = None
        #: stage fits resume from their checkpoints (False: start every stage afresh)
        self.resume = True

    # ------------------------------------------------------------------ terms
    def terms(self, xyz: Tensor, b: Tensor, weights: dict[str, float] | None = None,
              occ: Callable[[], Tensor] | None = None) -> list[Term]:
        """All terms as functions of the group tensors ``xyz`` and ``b``; base weights 1 or ``weights``;
        ``occ()`` the (n,) occupancies the x-ray term sees (default: the current ones). With riding
        hydrogens the terms see them on their parents (``ride_xyz``, ``ride_b``), and the ADP terms
        leave them out (their B is their parent's)."""
        occ_of, r, b0 = occ or (lambda: self.occ), self.restraints, self.b_start
        pairs, pair_weight = r.adp_pairs()
        at, b_of = (lambda: self.ride_xyz(xyz)), (lambda: self.ride_b(b))
        heavy: Tensor | slice = slice(None)
        if self.riding is not None:
            heavy = ~r.hydrogen
            heavy_pairs = ~r.hydrogen[pairs].any(dim=1)
            pairs, pair_weight = pairs[heavy_pairs], pair_weight[heavy_pairs]
        n = self.xray_count
        fns = {"xray": lambda _: n * self.xray.target(self.xray.fcalc(at(), b_of(), occ_of()))}
        fns.update({kind: (lambda k: lambda _: r.loss(k, at()))(kind) for kind in KINDS})
        fns.update(adp=lambda _: adp_similarity(b, pairs, pair_weight),
                   b_prior=lambda _: b_prior(b[heavy], b0[heavy]))
        return [Term(name, fn, weight=(weights or {}).get(name, 1.0)) for name, fn in fns.items()]

    def ride_xyz(self, xyz: Tensor) -> Tensor:
        """The coordinates (n, 3) Å that the terms see: with riding hydrogens, each on its parent
        at its offset in the current model (the stage's start)."""
        return xyz if self.riding is None else self.riding.positions(xyz, self.riding.offsets(self.xyz))

    def ride_b(self, b: Tensor) -> Tensor:
        """The B (n,) Å^2 that the terms see: with riding hydrogens, each with its parent's."""
        return b if self.riding is None else self.riding.b_iso(b)

    def update_scales(self) -> str:
        """Refit the x-ray model's scales at the current model and move their overall isotropic
        fall-off into the atoms (where the x-ray model can); the B prior's centre moves with the
        atoms, so it keeps pulling only on changes of B relative to each other. Returns the log line."""
        scales = self.xray.update_scales(self.xyz, self.b, self.occ)
        moved = ""
        if hasattr(self.xray, "overall_b_to_atoms"):
            self.b, delta = self.xray.overall_b_to_atoms(self.xyz, self.b, self.occ, (B_MIN, B_MAX))
            self.b_start = self.b_start + delta
            moved = f"; overall B {delta:+.2f} Å^2 moved from the scales to the atoms"
        return _scales_line(scales, getattr(self.xray, "twin_fit", None)) + moved

    def r_factors(self) -> dict:
        """R-work, R-free (and what else the x-ray model reports) of the current model."""
        with torch.no_grad():
            return self.xray.r_factors(self.xray.fcalc(self.xyz, self.b, self.occ))

    def stats(self, cycle: int, elapsed: float = 0.0, weights=None, reasons=None, scales: str = "") -> CycleStats:
        r = self.r_factors()
        r_work, r_free = r["r_work"], r["r_free"]
        g = self.restraints.statistics(self.xyz)
        fit = getattr(self.xray, "twin_fit", None)
        twin = None if fit is None else {**fit.as_dict(), "r_work_untwinned": r.get("r_work_untwinned"),
                                         "r_free_untwinned": r.get("r_free_untwinned")}
        return CycleStats(cycle, r_work, r_free, g["bond"]["rmsd"], g["angle"]["rmsd"], g["bond"]["rmsz"],
                          g["angle"]["rmsz"], float(self.b.mean()), weights or {}, reasons or {}, scales, elapsed,
                          twin)

    # ------------------------------------------------------------------ stages
    def _fit(self, name: str, stage: Stage, xyz: Tensor, b: Tensor, cycle_dir: Path | None,
             free: Sequence[str]) -> Fit:
        return Fit({"xyz": xyz, "b": b}, self.terms(xyz, b, self.joint_weights), [stage],
                   run_dir=None if cycle_dir is None else cycle_dir / name,
                   progress=self.progress, grad_every=5, checkpoint_every=10,
                   summarize=lambda: {"mean B (Å^2)": float(b.detach().mean())},
                   config={"stage": name, "free": list(free), "scheme": self.options.scheme})

    def occupancy_stage(self, cycle_dir: Path | None) -> list[dict]:
        """L-BFGS on the occupancy groups' logits against the x-ray term alone (no restraint,
        so no weight: phenix.refine refines occupancies against the data with constraints only).
        Returns the groups' occupancies for the record."""
        groups, xyz, b, base = self.occ_groups, self.xyz.clone(), self.b.clone(), self.occ
        z = groups.logits(base).requires_grad_(True)
        xray = [t for t in self.terms(xyz, b, occ=lambda: groups.occupancies(z, base)) if t.name == "xray"]
        iterations = self.options.occ_steps
        steps = math.ceil(iterations / LBFGS_ITERATIONS_PER_STEP)
        stage = Stage("occ", free=["occ"], terms=["xray"], optimizer="lbfgs", lr=1.0, steps=steps,
                      balancer=FixedBalancer(), optimizer_options={"max_iter": math.ceil(iterations / steps)})
        Fit({"xyz": xyz, "b": b, "occ": z}, xray, [stage],
            run_dir=None if cycle_dir is None else cycle_dir / "occ", progress=self.progress,
            grad_every=5, checkpoint_every=10, config={"stage": "occ", "free": ["occ"], "groups": groups.n_groups}
            ).run(resume=self.resume)
        with torch.no_grad():
            self.occ = groups.occupancies(z, base).detach().clone()
        return groups.table(self.occ)

    def geometry_rmsz(self) -> float:
        """rms z-score of the current model over all bonded restraints (bond, angle, torsion,
        plane, chiral; non-bonded left out: its count is of pairs, not of violations)."""
        g = self.restraints.statistics(self.xyz)
        kinds = [k for k in KINDS if k != "nonbonded" and g[k]["n"] > 0]
        n = sum(g[k]["n"] for k in kinds)
        return math.sqrt(sum(g[k]["n"] * g[k]["rmsz"] ** 2 for k in kinds) / n) if n else 0.0

    def balancer(self, geometry_ratio: float | None, adp_ratio: float | None) -> RestraintRatioBalancer:
        """Geometry weight: the gradient-norm ratio with |g_geometry| taken at unit rmsZ (so a
        shaken start does not get restraints ~rmsZ times too weak); ADP: the plain ratio."""
        groups, unit_z = {}, {}
        if geometry_ratio is not None:
            groups["geometry"] = (list(KINDS), geometry_ratio)
            unit_z["geometry"] = self.geometry_rmsz()
        if adp_ratio is not None:
            groups["adp"] = (list(ADP_TERMS), adp_ratio)
        return RestraintRatioBalancer("xray", groups, unit_z)

    def compute_joint_weights(self) -> dict[str, float]:
        """The seed failure: the same gradient-norm weights, but computed with xyz and B both free."""
        xyz, b = self.xyz.clone().requires_grad_(True), self.b.clone().requires_grad_(True)
        stage = Stage("joint", free=["xyz", "b"], optimizer="lbfgs", lr=1.0, steps=1,
                      balancer=self.balancer(self.options.restraint_ratio, self.options.adp_ratio))
        fit = Fit({"xyz": xyz, "b": b}, self.terms(xyz, b), [stage], progress="quiet")
        weights = fit.balance("joint")
        self.log("joint-once scheme: weights computed once with xyz and B free, reused in every stage: " +
                 ", ".join(f"{t} {w.value:.4g}" for t, w in weights.items()))
        return {t: w.value for t, w in weights.items()}

    def b_stage(self, cycle_dir: Path | None, restraint_weight: float | None) -> tuple[dict, dict]:
        """The B stage, per-stage scheme: with the screened factor of ``restraint_weight`` once
        the first cycle has chosen it; in that cycle, one B stage per ``adp_screen`` factor from
        the same model, then (with ``ADP_SCREEN_EXTEND_MIN_FREE`` free reflections) up to
        ``ADP_SCREEN_EXTENSIONS`` more past an end of the grid while the end beats its neighbour
        by ``ADP_SCREEN_MARGIN``; kept: the factor nearest 1 among
        those within ``ADP_SCREEN_MARGIN`` of the lowest R-free. Returns the kept stage's weights
        and reasons, the screen's reason added as ``adp_screen``."""
        factors = self.options.adp_screen
        if self.joint_weights is not None or restraint_weight is None:
            return self.stage("b", cycle_dir, restraint_weight)
        if self.adp_factor is not None or len(factors) == 1:
            self.adp_factor = self.adp_factor or factors[0]
            return self.stage("b", cycle_dir, restraint_weight, factor=self.adp_factor)
        start, tried = self.b.clone(), {}

        def trial(factor: float) -> int:
            """One B stage from the screen's start; tried[factor] = (R-free, B, weights, reasons);
            returns the free-set size (0 when the x-ray model does not report it)."""
            self.b = start.clone()
            weights, reasons = self.stage("b", cycle_dir, restraint_weight, label=f"b_x{factor:.3g}", factor=factor)
            r = self.r_factors()
            tried[factor] = (r["r_free"], self.b.clone(), weights, reasons)
            return r.get("n_free", 0)

        n_free = [trial(factor) for factor in sorted(factors, key=lambda f: abs(math.log(f)))][-1]
        # an end of the grid that beats its neighbour by more than the margin: go on past it in the
        # grid's steps (the best weight can lie outside a fixed grid: 5wkd, mean B 9 A^2, wants x0.3)
        for _ in range(ADP_SCREEN_EXTENSIONS if len(factors) > 1 and n_free >= ADP_SCREEN_EXTEND_MIN_FREE else 0):
            grid = sorted(tried)
            if tried[grid[0]][0] < tried[grid[1]][0] - ADP_SCREEN_MARGIN:
                trial(grid[0] ** 2 / grid[1])
            elif tried[grid[-1]][0] < tried[grid[-2]][0] - ADP_SCREEN_MARGIN:
                trial(grid[-1] ** 2 / grid[-2])
            else:
                break
        # the factor nearest 1 among those within the margin of the lowest R-free
        lowest = min(t[0] for t in tried.values())
        self.adp_factor = min((f for f, t in tried.items() if t[0] <= lowest + ADP_SCREEN_MARGIN),
                              key=lambda f: abs(math.log(f)))
        _, self.b, weights, reasons = tried[self.adp_factor]
        why = (f"R-free screen of the ADP weight (x the xyz stage's restraint weight {restraint_weight:.4g}): "
               + ", ".join(f"x{f:.3g} {tried[f][0]:.4f}" for f in sorted(tried))
               + f"; kept x{self.adp_factor:.3g} for every cycle")
        self.log(why)
        return weights, {**reasons, "adp_screen": why}

    def stage(self, name: str, cycle_dir: Path | None, restraint_weight: float | None = None,
              label: str | None = None, factor: float = 1.0) -> tuple[dict, dict]:
        """Run the ``xyz`` or ``b`` stage (records in ``cycle_dir/label``, default the name);
        returns its weights and reasons. The B stage's restraints get ``factor * restraint_weight``.

        The per-stage B stage gives its restraints ``restraint_weight``, the weight of the
        geometry terms in this cycle's xyz stage. REFMAC and servalcat weight the x-ray term
        against all restraints, geometry and ADP, with one number (Murshudov et al. 2011;
        Yamashita et al. 2023): both are priors in the same units (squared z-scores), and that
        number is calibrated on the geometry, here by the xyz stage's gradient balance on xyz
        and the bond-rmsZ controller. A gradient balance of its own on B is no substitute: at
        the start of a B stage the previous cycle has left the B near the balance w |g_adp| ~
        |g_xray|, so a ratio r there multiplies the weight by about r per cycle (measured on
        1A0F: r = 0.5 loosened the B every cycle, r = 2 tightened them past the best R-free).
        """
        xyz = self.xyz.clone().requires_grad_(name == "xyz")
        b = self.b.clone().requires_grad_(name == "b")
        terms = ["xray", *KINDS] if name == "xyz" else ["xray", *ADP_TERMS]
        iterations = self.options.xyz_steps if name == "xyz" else self.options.b_steps
        steps = math.ceil(iterations / LBFGS_ITERATIONS_PER_STEP)
        if self.joint_weights is not None:
            balancer = FixedBalancer()
        elif name == "xyz":
            balancer = self.balancer(self.controller.ratio, None)
        else:
            if restraint_weight is None:
                raise ValueError("the per-stage B stage needs the xyz stage's restraint weight")
            why = (f"the xyz stage's restraint weight {restraint_weight:.4g} x {factor:g} (one x-ray weight for "
                   "geometry and ADP restraints, as REFMAC and servalcat, times the screened factor)")
            balancer = SharedWeightBalancer({"xray": Weight(1.0, "base weight"),
                                             **{t: Weight(factor * restraint_weight, why) for t in ADP_TERMS}})
        stage = Stage(name, free=[name], terms=terms, optimizer="lbfgs", lr=1.0, steps=steps, balancer=balancer,
                      optimizer_options={"max_iter": math.ceil(iterations / steps)})
        result = self._fit(label or name, stage, xyz, b, cycle_dir, [name]).run(resume=self.resume)
        if name == "xyz":
            xyz = self.ride_xyz(xyz.detach())
            self.xyz = xyz.clone() if self.riding is None else self.riding.idealize(xyz)
        else:
            self.b = self.ride_b(b.detach()).clamp(B_MIN, B_MAX).clone()
        st = result.stages[0]
        return st.weights, st.reasons


def refine(model: AtomModel, restraints: Restraints, xray: XrayModel, *, options: RefineOptions | None = None,
           run_dir: str | Path | None = None, log: Callable[[str], None] = print, progress: str = "quiet",
           resume: bool = True) -> RefineResult:
    """Refine ``model`` against ``xray`` with ``restraints``; see the module docstring.

    ``run_dir`` gets per-cycle stage records and ``state.pt`` after every cycle (``resume=True``
    continues after the last finished cycle). Returns a :class:`RefineResult`.
    """
    options = options or RefineOptions()
    options.check()
    run = _Refinement(model, restraints, xray, options, None if run_dir is None else Path(run_dir), log, progress)
    run.resume = resume
    state_path = None if run.run_dir is None else run.run_dir / "state.pt"
    cycles: list[CycleStats] = []
    start: CycleStats | None = None
    if state_path is not None and resume and state_path.is_file():
        saved = torch.load(state_path, weights_only=False)
        _check_resumable(state_path, saved, options, model)
        run.xyz = saved["xyz"].to(model.xyz)
        run.b = saved["b"].to(model.xyz)
        run.b_start = saved["b_start"].to(model.xyz)
        run.occ = saved.get("occ", model.occ).to(model.xyz)
        run.controller.ratio = saved["ratio"]
        run.joint_weights = saved["joint_weights"]
        run.adp_factor = saved.get("adp_factor")
        start = CycleStats(**saved["start"])
        cycles = [CycleStats(**c) for c in saved["cycles"]]
        log(f"resuming after cycle {len(cycles)} from {state_path}")
    #: scales fitted at the current model and not yet used by a cycle (the start's: cycle 1 reuses them)
    fresh_scales: str | None = None
    if start is None:
        fresh_scales = run.update_scales()
        start = run.stats(0, scales=fresh_scales)
        log("start: " + stats_line(start))
    for cycle in range(len(cycles) + 1, options.cycles + 1):
        t0 = time.perf_counter()
        cycle_dir = None if run.run_dir is None else run.run_dir / f"cycle_{cycle:02d}"
        if fresh_scales is None:
            fresh_scales = run.update_scales()
        scales, fresh_scales = fresh_scales, None
        log(f"cycle {cycle}: scales {scales}")
        if options.scheme == "joint-once" and run.joint_weights is None:
            run.joint_weights = run.compute_joint_weights()
        restraints.update_pairs(run.xyz)
        w_xyz, why_xyz = run.stage("xyz", cycle_dir)
        after_xyz = {k: float(v) for k, v in run.r_factors().items() if k in ("r_work", "r_free")}
        log(f"cycle {cycle}: after the xyz stage R-work {after_xyz['r_work']:.4f} R-free {after_xyz['r_free']:.4f}")
        g = restraints.statistics(run.xyz)
        weights, reasons = {"xyz": w_xyz}, {f"xyz:{t}": why for t, why in why_xyz.items() if t in ("bond", "xray")}
        if options.scheme == "per-stage":
            _, why = run.controller.update(g["bond"]["rmsz"])
            reasons["xyz:next_ratio"] = why
            log(f"cycle {cycle}: {why}")
        if options.refine_b:
            w_b, why_b = run.b_stage(cycle_dir, w_xyz.get("bond"))
            weights["b"] = w_b
            reasons.update({f"b:{t}": why for t, why in why_b.items()})
        occupancies = None
        if run.occ_groups is not None:
            occupancies = run.occupancy_stage(cycle_dir)
            log(f"cycle {cycle}: occupancies of {len(occupancies)} group(s): " +
                ", ".join(f"{g['group']} {g['occ']:.2f}" for g in occupancies[:MAX_LOGGED_GROUPS]) +
                (" ..." if len(occupancies) > MAX_LOGGED_GROUPS else ""))
        stats = run.stats(cycle, time.perf_counter() - t0, weights, reasons, scales)
        stats.after_xyz, stats.occupancies = after_xyz, occupancies
        cycles.append(stats)
        log(stats_line(stats) + f" ({stats.time_s:.1f} s)")
        for key, why in reasons.items():
            log(f"  weight {key}: {why}")
        if state_path is not None:
            _save_state(state_path, run, start, cycles)
    return RefineResult(start, cycles, run.xyz, run.b, run.occ, run.run_dir, options)


def _scales_line(scales, twin_fit=None) -> str:
    """k_sol and B_sol of a ``Scales`` (or the text an x-ray model returned) for the log, and
    the twin fraction fit (``TwinFractionFit``) with its reason when there is one."""
    line = f"k_sol {scales.k_sol:.3f} B_sol {scales.b_sol:.1f} Å^2" if hasattr(scales, "k_sol") else str(scales)
    return line if twin_fit is None else f"{line}; {twin_fit.line()}"


#: settings that a resumed run may change (more cycles continue a finished run)
RESUMABLE_CHANGES = ("cycles",)


def _settings(options: RefineOptions) -> dict:
    """The settings that must match for a run to resume (all but ``RESUMABLE_CHANGES``)."""
    return {k: v for k, v in asdict(options).items() if k not in RESUMABLE_CHANGES}


def _check_resumable(path: Path, saved: dict, options: RefineOptions, model: AtomModel) -> None:
    """``InputError`` when the saved run in ``path`` was made for other atoms or other settings."""
    if saved["xyz"].shape[0] != model.n_atoms:
        raise InputError(f"this run refined {saved['xyz'].shape[0]} atoms, the model has {model.n_atoms}: "
                         "another model's run; use --restart or another --out", path=path)
    before = saved.get("settings")
    if before is None:
        return
    now = _settings(options)
    differ = [f"{k} {before.get(k)!r} -> {now[k]!r}" for k in now if before.get(k) != now[k]]
    if differ:
        raise InputError("this run was made with other settings (" + "; ".join(differ) +
                         "): rerun with the same settings to resume, or use --restart or another --out", path=path)


def _save_state(path: Path, run: _Refinement, start: CycleStats, cycles: list[CycleStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"xyz": run.xyz.cpu(), "b": run.b.cpu(), "b_start": run.b_start.cpu(), "occ": run.occ.cpu(),
                "ratio": run.controller.ratio, "joint_weights": run.joint_weights, "adp_factor": run.adp_factor,
                "settings": _settings(run.options),
                "start": asdict(start), "cycles": [asdict(c) for c in cycles]}, tmp)
    tmp.replace(path)


def write_outputs(result: RefineResult, model: AtomModel, xray: XrayModel, out: str | Path,
                  write_maps: Callable[[Tensor, Path], None] | None = None, plots: bool = True) -> dict[str, Path]:
    """refined.pdb/.cif (statistics in the header), summary.json, cycle plots, and maps.mtz via
    ``write_maps(fcalc, path)`` (the data side's map-coefficient writer) when given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f, s = result.final, result.start
    remarks = ["REFINEMENT: equipoise xtal refine",
               f"R-work {f.r_work:.4f}  R-free {f.r_free:.4f}  (start {s.r_work:.4f} / {s.r_free:.4f})",
               f"RMSD bonds {f.bond_rmsd:.4f} A (rmsZ {f.bond_rmsz:.2f})  angles {f.angle_rmsd:.3f} deg "
               f"(rmsZ {f.angle_rmsz:.2f})",
               f"macro-cycles {len(result.cycles)}  scheme {result.options.scheme}"]
    if f.twin is not None:
        remarks.append("TWIN REFINEMENT: " + ", ".join(f"law {law} fraction {a:.3f}"
                                                       for law, a in zip(f.twin["laws"], f.twin["alphas"])) +
                       f"  (R-work/R-free without the twin model {f.twin['r_work_untwinned']:.4f} / "
                       f"{f.twin['r_free_untwinned']:.4f})")
    written = dict(remarks=remarks, xyz=result.xyz, b_iso=result.b_iso, occ=result.occ)
    paths = {"pdb": model.write(out / "refined.pdb", **written), "cif": model.write(out / "refined.cif", **written)}
    if write_maps is not None:
        with torch.no_grad():
            write_maps(xray.fcalc(result.xyz, result.b_iso, result.occ), out / "maps.mtz")
        paths["maps"] = out / "maps.mtz"
    summary = out / "summary.json"
    tmp = summary.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2, default=str))
    tmp.replace(summary)
    paths["summary"] = summary
    if plots:
        paths.update(plot_cycles(result, out / "plots"))
    return paths


def plot_cycles(result: RefineResult, directory: Path) -> dict[str, Path]:
    """R-work/R-free per cycle, geometry per cycle and the stage weights per cycle (PNG)."""
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    rows = [result.start, *result.cycles]
    x = [r.cycle for r in rows]
    out = {}
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, [r.r_work for r in rows], "o-", label="R-work")
    ax.plot(x, [r.r_free for r in rows], "s-", label="R-free")
    ax.set_xlabel("macro-cycle")
    ax.set_ylabel("R")
    ax.legend()
    out["r_factors"] = directory / "r_factors.png"
    fig.savefig(out["r_factors"], dpi=100)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for stage in ("xyz", "b"):
        names = sorted({t for c in result.cycles for t in c.weights.get(stage, {})})
        for t in names:
            ax.semilogy([c.cycle for c in result.cycles],
                        [c.weights.get(stage, {}).get(t, math.nan) for c in result.cycles], "o-",
                        label=f"{stage}:{t}")
    ax.set_xlabel("macro-cycle")
    ax.set_ylabel("weight (stage start)")
    ax.legend(fontsize=7, ncol=2)
    out["weights"] = directory / "weights.png"
    fig.savefig(out["weights"], dpi=100)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, [r.bond_rmsz for r in rows], "o-", label="bond rmsZ")
    ax.plot(x, [r.angle_rmsz for r in rows], "s-", label="angle rmsZ")
    ax.axhspan(*result.options.rmsz_range, alpha=0.15, label="target range")
    ax.set_xlabel("macro-cycle")
    ax.legend()
    out["geometry"] = directory / "geometry.png"
    fig.savefig(out["geometry"], dpi=100)
    return out
