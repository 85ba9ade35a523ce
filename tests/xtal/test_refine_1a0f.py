"""1A0F (real 2.0 Å data of the seed failure), slow: the issue's quality bar and the seed failure.

- Bar: 5 macro-cycles from 1a0f_round0.pdb: R-free never more than 0.005 above its lowest value,
  ends at or below its start, bonds <= 0.02 Å, angles <= 2.5°.
- Seed failure: the same refinement with weights computed once with xyz and B free and reused in
  each stage (``scheme="joint-once"``) inflates the ADP weight and ends with R-free clearly above
  ours; ours stays within 0.005 of its best. The seed's R-free *jump* in one B step does not
  reproduce with our B stage (an xfail, strict, with the measured numbers).
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


def test_1a0f_seed_failure_joint_weights_vs_per_stage(seed_runs):
    """Measured 2026-12-02 (load ~4, 1 thread, ~2.5 min for both runs): ADP weight 3.2e-4 vs 4.7e-6
    (67x); R-free per round 0.2250 0.2223 0.2173 0.2222 (broken) vs 0.2250 0.2118 0.1949 0.1963. After the
    x-ray term became the total over working reflections (B refines; servalcat benchmark work), 18:15 UTC:
    final R-free 0.2095 (broken) vs 0.1965 (ours), a 0.013 gap, hence the 0.01 margin below."""
    broken, ours = seed_runs
    w_broken = broken.cycles[0].weights["b"]["adp"]
    w_ours = ours.cycles[0].weights["b"]["adp"]
    assert w_broken > 10 * w_ours                      # the ADP weight is inflated
    ours_free = [ours.start.r_free] + [c.r_free for c in ours.cycles]
    assert max_rise(ours_free) <= 0.005                # ours stays within 0.005 of its best
    # round 1: both xyz stages are the same (|g_xray| on xyz+B ~ on xyz alone), so the difference is the B stage's
    # (measured 0.2223 vs 0.2118); later rounds add the broken scheme's fixed geometry weight (no rmsZ control)
    assert broken.cycles[0].r_free > ours.cycles[0].r_free + 0.005
    assert broken.final.r_free > ours.final.r_free + 0.01   # the broken scheme ends clearly worse


@pytest.mark.xfail(reason="measured 2026-12-02: with the seed's weighting reproduced (ADP weight 67x ours) our "
                   "B stage (L-BFGS, strong-Wolfe line search, bonded-pair ADP similarity) only smooths B "
                   "(std 14.6 -> 12.0 Å^2 in round 1) and R-free rises 0.009 in that B stage, 0.0049 over the "
                   "rounds; the seed's one-step jump (0.23 -> 0.59) needed its B flattened near 60 Å^2 and is "
                   "not reproduced", strict=True)
def test_1a0f_seed_failure_r_free_jumps(seed_runs):
    broken, _ = seed_runs
    broken_free = [broken.start.r_free] + [c.r_free for c in broken.cycles]
    assert max_rise(broken_free) > 0.02                 # R-free jumps
