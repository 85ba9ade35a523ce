import math

import pytest
import torch

from equipoise.core import Fit, Stage, Term, robust
from equipoise.errors import NonFiniteError

DTYPE = torch.float64


def kinds(result, kind):
    return {f["term"] for f in result.flags if f["kind"] == kind}


def test_clamped_term_is_flagged_dead_and_log_scaled_term_is_not():
    err = torch.tensor(25_000.0, dtype=DTYPE, requires_grad=True)  # precursor error, ppm
    scale = 100.0
    terms = [Term("clamped", lambda o: torch.clamp(err, max=100.0)),
             Term("log_scaled", lambda o: robust.log_scaled(err, scale))]
    result = Fit({"err": err}, terms, [Stage("s", ["err"], steps=1)], progress="quiet", grad_every=1).run()
    assert kinds(result, "dead_gradient") == {"clamped"}
    x = float(err.detach())  # one Adam step moved it by about lr
    assert x == pytest.approx(25_000.0, abs=0.1)
    (grad,) = torch.autograd.grad(robust.log_scaled(err, scale), err)
    assert float(grad) == pytest.approx(scale / (scale + x), rel=1e-12)


def test_dead_gradient_flag_in_record(tmp_path):
    import json
    err = torch.tensor(25_000.0, dtype=DTYPE, requires_grad=True)
    terms = [Term("clamped", lambda o: torch.clamp(err, max=100.0)), Term("l2", lambda o: 1e-6 * err ** 2)]
    Fit({"err": err}, terms, [Stage("s", ["err"], steps=3)], run_dir=tmp_path, progress="quiet", grad_every=1).run()
    lines = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert all(any(f["kind"] == "dead_gradient" and f["term"] == "clamped" for f in line["flags"]) for line in lines)
    assert lines[0]["grad_norms"]["clamped"]["err"] == 0.0
    assert lines[0]["grad_norms"]["l2"]["err"] == pytest.approx(2e-6 * 25_000.0)


def test_dominance_flag_above_threshold():
    x = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    terms = [Term("precursor", lambda o: ((x - 7.0) ** 2).sum() * 0 + 98.0 + (x ** 2).sum()),
             Term("sequence", lambda o: 2.0 + 0 * x.sum())]
    result = Fit({"x": x}, terms, [Stage("s", ["x"], steps=2)], progress="quiet").run()
    assert kinds(result, "dominance") == {"precursor"}
    flag = next(f for f in result.flags if f["kind"] == "dominance")
    assert flag["value"] == pytest.approx(0.98, abs=1e-3)
    relaxed = Fit({"x": x}, terms, [Stage("s", ["x"], steps=2)], progress="quiet", dominance_threshold=0.99).run()
    assert not kinds(relaxed, "dominance")


def test_nan_term_stops_fit_naming_term_and_step():
    x = torch.ones(3, dtype=DTYPE, requires_grad=True)
    calls = {"n": 0}

    def forward():
        calls["n"] += 1
        return calls["n"]

    terms = [Term("data", lambda n: ((x - 2.0) ** 2).sum()),
             Term("prior", lambda n: (x ** 2).sum() * (math.nan if n == 4 else 1.0))]
    fit = Fit({"x": x}, terms, [Stage("s", ["x"], steps=10)], forward=forward, progress="quiet")
    with pytest.raises(NonFiniteError) as info:
        fit.run()
    assert info.value.term == "prior" and info.value.step == 3
    assert "'prior'" in str(info.value) and "step 3" in str(info.value)


def test_nan_gradient_names_term_and_group():
    x = torch.ones(3, dtype=DTYPE, requires_grad=True)
    y = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    terms = [Term("data", lambda o: ((x - 2.0) ** 2).sum()), Term("sqrt", lambda o: torch.sqrt(y).sum())]
    with pytest.raises(NonFiniteError) as info:
        Fit({"x": x, "y": y}, terms, [Stage("s", ["x", "y"], steps=3)], progress="quiet").run()
    assert (info.value.term, info.value.group, info.value.step) == ("sqrt", "y", 0)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_skip_policy_skips_the_step_and_continues(tmp_path, optimizer):
    import json
    x = torch.ones(3, dtype=DTYPE, requires_grad=True)
    calls = {"n": 0}

    def forward():
        calls["n"] += 1
        return calls["n"]

    bad_call = {"adam": 3, "lbfgs": 2}[optimizer]
    terms = [Term("data", lambda n: ((x - 2.0) ** 2).sum() * (math.inf if n == bad_call else 1.0))]
    fit = Fit({"x": x}, terms, [Stage("s", ["x"], steps=6, optimizer=optimizer, lr=0.1)], forward=forward,
              nonfinite="skip", run_dir=tmp_path, progress="quiet")
    result = fit.run()
    lines = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(6))
    skipped = [line for line in lines if line.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["flags"][0]["kind"] == "nonfinite"
    assert result.steps == 6 and torch.isfinite(x).all()
    assert result.final_loss < result.initial_loss


def test_gradient_conflict_flag():
    x = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    terms = [Term("pull_up", lambda o: ((x - 1.0) ** 2).sum()), Term("pull_down", lambda o: ((x + 1.0) ** 2).sum())]
    result = Fit({"x": x}, terms, [Stage("s", ["x"], steps=1)], progress="quiet").run()
    flag = next(f for f in result.flags if f["kind"] == "conflict")
    assert {flag["term"], flag["other"]} == {"pull_up", "pull_down"}
    assert flag["value"] == pytest.approx(-1.0)
    aligned = [Term("a", lambda o: ((x - 1.0) ** 2).sum()), Term("b", lambda o: ((x - 2.0) ** 2).sum())]
    assert not kinds(Fit({"x": x}, aligned, [Stage("s", ["x"], steps=1)], progress="quiet").run(), "conflict")


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs", "sgd"])
def test_frozen_groups_are_bitwise_untouched(refinement, optimizer):
    params, terms = refinement()
    before = params["xyz"].detach().clone()
    b_before = params["b"].detach().clone()
    Fit(params, terms, [Stage("b", ["b"], steps=5, optimizer=optimizer, lr=0.01)], progress="quiet").run()
    assert torch.equal(params["xyz"].detach(), before)
    assert params["xyz"].grad is None and params["b"].grad is None
    assert not torch.equal(params["b"].detach(), b_before)
    assert params["xyz"].requires_grad and params["b"].requires_grad  # flags restored after the fit


def test_application_monitor_flags_are_recorded_and_logged(tmp_path):
    import json

    from equipoise.core import Flag
    x = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    terms = [Term("l2", lambda o: ((x - 1.0) ** 2).sum())]

    def monitor(step):
        return [Flag("posterior_collapse", step, "latent unused", value=0.0)] if step >= 2 else []

    result = Fit({"x": x}, terms, [Stage("s", ["x"], steps=4)], run_dir=tmp_path, progress="quiet",
                 monitor=monitor).run()
    (flag,) = [f for f in result.flags if f["kind"] == "posterior_collapse"]
    assert flag["first_step"] == 2 and flag["count"] == 2
    lines = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [any(f["kind"] == "posterior_collapse" for f in line.get("flags", [])) for line in lines] == [
        False, False, True, True]
    assert "flag posterior_collapse: latent unused" in (tmp_path / "run.log").read_text()
