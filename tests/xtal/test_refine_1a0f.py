"""1A0F (real 2.0 Å data of the seed failure), slow: the issue's quality bar and the seed failure.

- Bar: 5 macro-cycles from 1a0f_round0.pdb: R-free never more than 0.005 above its lowest value,
  ends at or below its start, bonds <= 0.02 Å, angles <= 2.5°.
- Seed failure: the same refinement with weights computed once with xyz and B free and reused in
  each stage (``scheme="joint-once"``) inflates the ADP weight (against the same balance on B
  alone), and each of its B stages raises R-free (the inflated ADP weight flattens B against the
  data); ours stays within 0.005 of its best. The broken scheme ends worse, but by less than
  0.01, and the seed's R-free *jump* in one B step does not reproduce (both strict xfails, with
  the measured numbers).
"""

import pytest

from equipoise.xtal.model import AtomModel
from equipoise.xtal.refine import RefineOptions, refine
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.restraints import Restraints
from equipoise.xtal.xray import XrayModel
from tests.xtal.shared_data import data_file, monlib_or_skip

pytestmark = pytest.mark.slow


def run_1a0f(scheme: str, cycles: int, tmp_path):
    monlib_or_skip()
    refl = Reflections.from_file(data_file("1a0f/1a0f_data.mtz"))
    model = AtomModel.from_file(data_file("1a0f/1a0f_round0.pdb"))
    xray = XrayModel(model, refl)
    restraints = Restraints.build(model)
    return refine(model, restraints, xray, options=RefineOptions(cycles=cycles, scheme=scheme),
                  run_dir=tmp_path / scheme, log=print, resume=False)


def max_rise(values):
    """Largest rise of a sequence above its lowest value so far."""
    return max(v - min(values[: k + 1]) for k, v in enumerate(values))


def test_1a0f_quality_bar(tmp_path):
    result = run_1a0f("per-stage", 5, tmp_path)
    print(result.summary())
    r_free = [result.start.r_free] + [c.r_free for c in result.cycles]
    assert max_rise(r_free) <= 0.005
    assert result.final.r_free <= result.start.r_free
    assert result.final.bond_rmsd <= 0.02 and result.final.angle_rmsd <= 2.5


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """3 rounds of xyz then B from 1a0f_round0.pdb with the broken scheme and with ours."""
    tmp = tmp_path_factory.mktemp("seed")
    broken = run_1a0f("joint-once", 3, tmp)
    ours = run_1a0f("per-stage", 3, tmp)
    print("joint-once\n" + broken.summary() + "\nper-stage\n" + ours.summary())
    return broken, ours


def b_only_adp_balance(model, xray, restraints) -> float:
    """The ADP weight that the same gradient balance (ratio ``adp_ratio``) gives on B alone at the
    start, where the joint-once scheme computes its weights with xyz and B free."""
    from equipoise.core import Fit, Stage
    from equipoise.xtal.refine import ADP_TERMS, _Refinement

    opts = RefineOptions()
    run = _Refinement(model, restraints, xray, opts, None, print, "quiet")
    xray.update_scales(run.xyz, run.b, run.occ)
    xyz, b = run.xyz.clone(), run.b.clone().requires_grad_(True)
    stage = Stage("b", free=["b"], terms=["xray", *ADP_TERMS], optimizer="lbfgs", lr=1.0, steps=1,
                  balancer=run.balancer(None, opts.adp_ratio))
    return Fit({"xyz": xyz, "b": b}, run.terms(xyz, b), [stage], progress="quiet").balance("b")["adp"].value


def test_1a0f_seed_failure_joint_weights_vs_per_stage(seed_runs):
    """The seed's mechanism: weights balanced with xyz and B free give the ADP term |g_xray| over
    xyz *and* B, far above the same balance on B alone; ours stays within 0.005 of its best.

    Measured 2026-12-07 (overall B moved into the atoms, ADP screen, load ~1.5): joint-once ADP
    weight 0.741, B-only balance 0.00145, ours 0.0947 (the xyz stage's 0.0473 x the screened 2);
    R-free per round 0.2252 0.1995 0.2011 0.2012 (joint-once) vs 0.2252 0.1942 0.1918 0.1933 (ours);
    R-free change in each B stage +0.0042 +0.0040 +0.0015 (joint-once) vs -0.0011 +0.0014 +0.0001."""
    broken, ours = seed_runs
    w_broken = broken.cycles[0].weights["b"]["adp"]
    monlib_or_skip()
    refl = Reflections.from_file(data_file("1a0f/1a0f_data.mtz"))
    model = AtomModel.from_file(data_file("1a0f/1a0f_round0.pdb"))
    w_b_only = b_only_adp_balance(model, XrayModel(model, refl), Restraints.build(model))
    print(f"ADP weight: joint-once {w_broken:.4g}, B-only balance {w_b_only:.4g}, "
          f"ours {ours.cycles[0].weights['b']['adp']:.4g}")
    assert w_broken > 10 * w_b_only                    # the ADP weight is inflated
    ours_free = [ours.start.r_free] + [c.r_free for c in ours.cycles]
    assert max_rise(ours_free) <= 0.005                # ours stays within 0.005 of its best
    broken_b, ours_b = b_stage_r_free_changes(broken), b_stage_r_free_changes(ours)
    print(f"R-free change in each B stage: joint-once {broken_b}, ours {ours_b}")
    assert all(d > 0 for d in broken_b)                # every broken B stage makes R-free worse
    assert sum(broken_b) > sum(ours_b) + 0.005         # its B stages cost R-free that ours do not


def b_stage_r_free_changes(result) -> list[float]:
    """R-free after each cycle's B stage minus R-free after its xyz stage."""
    return [round(c.r_free - c.after_xyz["r_free"], 4) for c in result.cycles]


@pytest.mark.xfail(reason="measured 2026-12-07, overall B moved into the atoms, ADP screen: joint-once ADP weight "
                   "0.741 vs ours 0.0947, R-free per round 0.2252 0.1995 0.2011 0.2012 vs 0.2252 0.1941 0.1916 "
                   "0.1935: +0.0054 after round 1, +0.0077 at the end (asserted: > 0.01). "
                   "Measured 2026-12-03: with the KL-form ADP restraints (pairs within 4 Å, "
                   "servalcat's sigmas) the joint-once weights no longer hurt on 1A0F: their ADP weight "
                   "(0.066) lands near ours (0.047, the xyz stage's restraint weight), R-free after round 1 "
                   "0.1969 vs 0.1963 and after round 3 0.1934 vs 0.1937. With the former bonded-pair "
                   "restraint (sigma 5 Å^2) the joint-once scheme ended 0.013 worse (0.2095 vs 0.1965, "
                   "2026-12-02)", strict=True)
def test_1a0f_seed_failure_ends_worse(seed_runs):
    broken, ours = seed_runs
    # round 1: both xyz stages are the same (|g_xray| on xyz+B ~ on xyz alone), so the difference is the B stage's
    assert broken.cycles[0].r_free > ours.cycles[0].r_free + 0.005
    assert broken.final.r_free > ours.final.r_free + 0.01   # the broken scheme ends clearly worse


@pytest.mark.xfail(reason="measured 2026-12-02: with the seed's weighting reproduced (ADP weight 67x ours) our "
                   "B stage (L-BFGS, strong-Wolfe line search, bonded-pair ADP similarity) only smooths B "
                   "(std 14.6 -> 12.0 Å^2 in round 1) and R-free rises 0.009 in that B stage, 0.0049 over the "
                   "rounds; the seed's one-step jump (0.23 -> 0.59) needed its B flattened near 60 Å^2 and is "
                   "not reproduced; 2026-12-03, KL-form ADP restraints: joint-once R-free 0.2250 0.1969 0.1938 0.1934, "
                   "no rise; 2026-12-07 (overall B in the atoms, ADP screen): 0.2252 0.1995 0.2011 0.2012, "
                   "largest rise 0.0017", strict=True)
def test_1a0f_seed_failure_r_free_jumps(seed_runs):
    broken, _ = seed_runs
    broken_free = [broken.start.r_free] + [c.r_free for c in broken.cycles]
    assert max_rise(broken_free) > 0.02                 # R-free jumps
