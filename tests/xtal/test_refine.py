"""refine(): synthetic 5e5z case (truth known) with a least-squares x-ray model by direct summation.

The x-ray side here is a small test double (overall scale + LS amplitude target); the real one
(bulk solvent, ML target, FFT) is xtal-B's and is used by the slow 1A0F tests.
"""

import json
import math

import pytest
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.refine import ADP_SCREEN_EXTENSIONS, ADP_SCREEN_MARGIN, RefineOptions, refine, write_outputs
from equipoise.xtal.restraints import Restraints
from equipoise.xtal.structure_factors import direct_structure_factors
from tests.xtal.shared_data import data_file, monlib_or_skip


class LeastSquaresXray:
    """|F_obs| vs k |F_calc| with one overall scale k refitted by update_scales."""

    def __init__(self, model: AtomModel, hkl, f_obs, free):
        self.model, self.hkl, self.f_obs, self.free, self.k = model, hkl, f_obs, free, 1.0

    def fcalc(self, xyz, b, occ):
        m = self.model
        return direct_structure_factors(self.hkl, xyz, b, occ, m.elements, m.cell, m.spacegroup)

    def update_scales(self, xyz, b, occ):
        with torch.no_grad():
            fc = self.fcalc(xyz, b, occ).abs()[~self.free]
            self.k = float((self.f_obs[~self.free] * fc).sum() / (fc * fc).sum())
        return f"k {self.k:.4f}"

    def target(self, fcalc):
        w = ~self.free
        return ((self.f_obs[w] - self.k * fcalc.abs()[w]) ** 2).sum()

    def r_factors(self, fcalc):
        fc = self.k * fcalc.abs()
        r = [float((self.f_obs[s] - fc[s]).abs().sum() / self.f_obs[s].sum()) for s in (~self.free, self.free)]
        return {"r_work": r[0], "r_free": r[1], "n_free": int(self.free.sum())}


@pytest.fixture(scope="module")
def synthetic():
    monlib_or_skip()
    truth = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    refl = Reflections.from_file(data_file("5e5z.mtz.gz"))
    gen = torch.Generator().manual_seed(7)
    f_true = direct_structure_factors(refl.hkl, truth.xyz, truth.b_iso, truth.occ, truth.elements,
                                      truth.cell, truth.spacegroup).abs()
    f_obs = f_true * (1 + 0.02 * torch.randn(f_true.shape, generator=gen, dtype=torch.float64))
    # 10% free set (the file's 18 free reflections are too few for a stable R-free)
    free = torch.rand(f_obs.shape, generator=gen, dtype=torch.float64) < 0.1
    shaken = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    shaken.xyz = truth.xyz + 0.25 * torch.randn(truth.xyz.shape, generator=gen, dtype=torch.float64)
    return truth, shaken, LeastSquaresXray(shaken, refl.hkl, f_obs, free)


def rmsd(a, b):
    return float(((a - b) ** 2).sum(-1).mean().sqrt())


def test_refine_recovers_truth_and_writes_outputs(synthetic, tmp_path):
    truth, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    result = refine(shaken, restraints, xray, options=RefineOptions(cycles=3, xyz_steps=15, b_steps=5),
                    run_dir=tmp_path / "run", log=lambda s: None)
    start, final = result.start, result.final
    assert rmsd(result.xyz, truth.xyz) < 0.5 * rmsd(shaken.xyz, truth.xyz)
    assert final.r_free < start.r_free and final.r_work < start.r_work
    assert final.bond_rmsd < 0.02 and final.angle_rmsd < 2.5
    assert all("|g_xray|" in c.reasons["xyz:bond"] for c in result.cycles)
    paths = write_outputs(result, shaken, xray, tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["r_free"] == pytest.approx(final.r_free) and len(summary["cycles"]) == 3
    assert {"r_work", "r_free", "bond_rmsd", "angle_rmsd", "weights", "reasons", "time_s"} <= set(summary["cycles"][0])
    # R-factors after the xyz stage are recorded; on this shaken model that stage lowers R-work
    after = summary["cycles"][0]["after_xyz"]
    assert set(after) == {"r_work", "r_free"} and after["r_work"] < start.r_work
    assert "R-free after xyz" in result.summary()
    assert "R-free" in paths["pdb"].read_text()[:2000]
    assert (tmp_path / "run" / "cycle_01" / "xyz" / "record.jsonl").is_file()


def test_resume_continues_after_last_cycle(synthetic, tmp_path):
    _, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    opts = RefineOptions(cycles=1, xyz_steps=3, b_steps=2)
    first = refine(shaken, restraints, xray, options=opts, run_dir=tmp_path, log=lambda s: None)
    lines = []
    opts2 = RefineOptions(cycles=2, xyz_steps=3, b_steps=2)
    second = refine(shaken, restraints, xray, options=opts2, run_dir=tmp_path, log=lines.append)
    assert any("resuming after cycle 1" in line for line in lines)
    assert second.cycles[0] == first.cycles[0] and len(second.cycles) == 2


def test_resume_with_other_settings_is_an_error(synthetic, tmp_path):
    """A rerun into the same directory with other settings must not mix two refinements."""
    from equipoise.errors import InputError

    _, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    refine(shaken, restraints, xray, options=RefineOptions(cycles=1, xyz_steps=3, b_steps=2, adp_screen=(1.0,)),
           run_dir=tmp_path, log=lambda s: None)
    with pytest.raises(InputError, match=r"other settings \(b_steps 2 -> 4\)"):
        refine(shaken, restraints, xray, options=RefineOptions(cycles=2, xyz_steps=3, b_steps=4, adp_screen=(1.0,)),
               run_dir=tmp_path, log=lambda s: None)


def test_joint_once_scheme_inflates_the_adp_weight(synthetic):
    """The seed failure's mechanism in miniature: the ADP weight balanced with xyz and B both free
    is |g_xray| over xyz and B divided by |g_adp|, far above the same balance on B alone (the
    x-ray gradient on xyz dwarfs the one on B), and it is then used in the B-only stage."""
    from equipoise.core import Fit, Stage
    from equipoise.xtal.refine import ADP_TERMS, _Refinement

    _, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    opts = RefineOptions(scheme="joint-once")
    run = _Refinement(shaken, restraints, xray, opts, None, lambda s: None, "quiet")
    xray.update_scales(run.xyz, run.b, run.occ)
    joint = run.compute_joint_weights()["adp"]
    xyz, b = run.xyz.clone(), run.b.clone().requires_grad_(True)
    stage = Stage("b", free=["b"], terms=["xray", *ADP_TERMS], optimizer="lbfgs", lr=1.0, steps=1,
                  balancer=run.balancer(None, opts.adp_ratio))
    b_only = Fit({"xyz": xyz, "b": b}, run.terms(xyz, b), [stage], progress="quiet").balance("b")["adp"].value
    assert joint > 10 * b_only


def test_b_stage_shares_the_xyz_stage_restraint_weight(synthetic):
    """Per-stage scheme without a screen: the ADP restraints get the restraint weight that the
    cycle's xyz stage computed (one x-ray weight for all restraints, as REFMAC and servalcat)."""
    _, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    result = refine(shaken, restraints, xray, log=lambda s: None,
                    options=RefineOptions(cycles=2, xyz_steps=3, b_steps=2, adp_screen=(1.0,)))
    for c in result.cycles:
        assert c.weights["b"]["adp"] == pytest.approx(c.weights["xyz"]["bond"])
        assert c.weights["b"]["b_prior"] == pytest.approx(c.weights["xyz"]["bond"])
        assert "xyz stage's restraint weight" in c.reasons["b:adp"]


def test_adp_weight_screen_keeps_the_lowest_r_free(synthetic, tmp_path, monkeypatch):
    """The first cycle's B stage runs once per screened factor from the same model, goes past an
    end of the grid that wins (with enough free reflections), and keeps the lowest R-free (the
    factor nearest 1 within the margin); every later cycle uses that factor; a resumed run keeps
    it too."""
    import re

    import equipoise.xtal.refine as refine_module

    _, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    options = RefineOptions(cycles=1, xyz_steps=3, b_steps=2, adp_screen=(0.2, 1.0, 5.0))
    # this set has fewer free reflections than ADP_SCREEN_EXTEND_MIN_FREE: the grid only
    assert int(xray.free.sum()) < refine_module.ADP_SCREEN_EXTEND_MIN_FREE
    refine(shaken, restraints, xray, options=options, run_dir=tmp_path / "small", log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "small" / "cycle_01").iterdir()) == ["b_x0.2", "b_x1", "b_x5", "xyz"]
    monkeypatch.setattr(refine_module, "ADP_SCREEN_EXTEND_MIN_FREE", 0)
    options.cycles = 2
    result = refine(shaken, restraints, xray, options=options, run_dir=tmp_path, log=lambda s: None)
    why = result.cycles[0].reasons["b:adp_screen"]
    tried = {float(f): float(r) for f, r in re.findall(r"x([0-9.]+) ([0-9.]+)", why.split(":", 1)[1])}
    # replay the rule: past an end of the grid while it beats its neighbour by the margin, in the
    # grid's steps, twice at most; kept: nearest 1 within the margin of the lowest R-free
    margin = ADP_SCREEN_MARGIN + 1e-4                  # the log rounds R-free to 4 decimals
    seen = {f: tried[f] for f in (0.2, 1.0, 5.0)}
    for _ in range(ADP_SCREEN_EXTENSIONS):
        grid = sorted(seen)
        if seen[grid[0]] < seen[grid[1]] - margin:
            nxt = grid[0] ** 2 / grid[1]
        elif seen[grid[-1]] < seen[grid[-2]] - margin:
            nxt = grid[-1] ** 2 / grid[-2]
        else:
            break
        seen[nxt] = tried[float(f"{nxt:.3g}")]
    assert len(seen) == len(tried)
    kept = float(re.search(r"kept x([0-9.]+)", why).group(1))
    lowest = min(tried.values())
    assert tried[kept] <= lowest + margin
    tied = [f for f, r in tried.items() if r < lowest + ADP_SCREEN_MARGIN - 1e-4]
    assert all(abs(math.log(f)) >= abs(math.log(kept)) for f in tied)
    assert sorted(p.name for p in (tmp_path / "cycle_01").iterdir()) == sorted(
        ["xyz"] + [f"b_x{f:.3g}" for f in seen])
    for c in result.cycles:
        assert c.weights["b"]["adp"] == pytest.approx(kept * c.weights["xyz"]["bond"])
    assert "b:adp_screen" not in result.cycles[1].reasons
    options.cycles = 3
    resumed = refine(shaken, restraints, xray, options=options, run_dir=tmp_path, log=lambda s: None)
    assert resumed.cycles[2].weights["b"]["adp"] == pytest.approx(kept * resumed.cycles[2].weights["xyz"]["bond"])


def test_adp_similarity_is_relative_and_scale_free():
    """KL form: (B_i - B_j)^2 / (B_i B_j) per pair times its weight; multiplying all B by a
    constant leaves it unchanged; pairs within 4 Å are listed with bonds weighted most."""
    from equipoise.xtal.refine import adp_similarity

    pairs = torch.tensor([[0, 1], [1, 2]])
    w = torch.tensor([100.0, 2.0], dtype=torch.float64)
    b = torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64)
    expected = 100.0 * 100.0 / 200.0 + 2.0 * 400.0 / 800.0
    assert float(adp_similarity(b, pairs, w)) == pytest.approx(expected)
    assert float(adp_similarity(3 * b, pairs, w)) == pytest.approx(expected)


def test_adp_pairs_weight_by_relation(synthetic):
    from equipoise.xtal.restraints import ADP_PAIR_SIGMAS

    truth, _, _ = synthetic
    restraints = Restraints.build(truth)
    index, weight = restraints.adp_pairs()
    assert index.shape[0] == weight.shape[0] > restraints.count("bond")
    bonded = {tuple(sorted(p)) for p in restraints.sets["bond"].index.tolist()}
    listed: dict[tuple, float] = {}                  # a pair may also meet as symmetry mates: keep the largest
    for p, w in zip(index.tolist(), weight.tolist()):
        listed[tuple(sorted(p))] = max(w, listed.get(tuple(sorted(p)), 0.0))
    assert bonded <= set(listed)
    assert all(listed[p] == pytest.approx(1 / ADP_PAIR_SIGMAS[1] ** 2) for p in bonded)
    assert float(weight.min()) < 1 / ADP_PAIR_SIGMAS[0] ** 2 + 1e-9   # non-bonded pairs, damped by distance


def test_geometry_weight_is_balanced_at_unit_rmsz(synthetic):
    """A shaken start (rmsZ >> 1) must not get restraints rmsZ times too weak: the first xyz
    stage's geometry weight is the gradient-norm ratio with |g_geometry| taken at unit rmsZ."""
    _, shaken, xray = synthetic
    restraints = Restraints.build(shaken)
    result = refine(shaken, restraints, xray, options=RefineOptions(cycles=1, xyz_steps=1, b_steps=1),
                    log=lambda s: None)
    assert "at unit rmsZ" in result.cycles[0].reasons["xyz:bond"]


def test_unit_z_divides_the_group_norm():
    from equipoise.xtal.weights import RestraintRatioBalancer

    class Ctx:
        stage_step = 0

        @staticmethod
        def norms():
            return {"xray": {"*": 2.0}, "bond": {"*": 8.0}}

    for z, expected in ((0.5, 0.25), (4.0, 1.0)):
        b = RestraintRatioBalancer("xray", {"geometry": (["bond"], 1.0)}, unit_z={"geometry": z})
        b.bind(["xray", "bond"], {"xray": 1.0, "bond": 1.0}, ["xyz"], torch.float64, "cpu")
        assert b.rebalance(Ctx())["bond"].value == pytest.approx(expected)


def test_xray_term_is_the_total_over_the_working_set():
    """The x-ray term of a real XrayModel is target x n_work (a total -log-likelihood), so that
    L-BFGS stores curvature pairs on B (per-reflection gradients ~1e-4 left B unrefined)."""
    from equipoise.xtal.refine import _Refinement

    class Refl:
        work = torch.tensor([True, True, False, True])

    class Fake(LeastSquaresXray):
        refl = Refl()

    monlib_or_skip()
    model = AtomModel.from_file(data_file("5e5z.pdb.gz"))
    run = _Refinement(model, None, Fake(model, None, None, None), RefineOptions(), None, lambda s: None, "quiet")
    assert run.xray_count == 3.0
