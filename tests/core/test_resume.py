import json

import pytest
import torch

from equipoise.core import Fit, GradNormRatioBalancer, Stage, Term

DTYPE = torch.float64


class Killed(Exception):
    """Stands in for a kill -9 in the middle of a step."""


def make_fit(run_dir, optimizer, kill_at=None):
    torch.manual_seed(0)  # what a script does at start-up; the noise in forward() draws from it
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, dtype=DTYPE, generator=gen).requires_grad_(True)
    s = torch.tensor([0.5], dtype=DTYPE, requires_grad=True)
    design = torch.randn(40, 6, dtype=DTYPE, generator=gen)
    observed = design @ torch.linspace(-1, 1, 6, dtype=DTYPE)
    seen = {"n": 0}

    def forward():  # stochastic: resume must restore the RNG state
        noise = 0.01 * torch.randn(40, dtype=DTYPE)
        return design @ w * torch.exp(s) + noise

    def summarize():
        seen["n"] += 1
        if kill_at is not None and seen["n"] == kill_at + 1:
            raise Killed
        return {"scale": float(torch.exp(s.detach()))}

    terms = [Term("data", lambda pred: ((pred - observed) ** 2).mean()),
             Term("ridge", lambda pred: (w ** 2).sum(), weight=0.1),
             Term("scale", lambda pred: (s ** 2).sum(), weight=0.01)]
    second = dict(optimizer="lbfgs", lr=1.0) if optimizer == "lbfgs" else dict(optimizer="adam", lr=0.02)
    stages = [Stage("w", ["w"], steps=17, lr=0.05, balancer=GradNormRatioBalancer("data"), rebalance_every=4),
              Stage("all", ["w", "s"], steps=16, balancer=GradNormRatioBalancer("data"), **second)]
    fit = Fit({"w": w, "s": s}, terms, stages, forward=forward, run_dir=run_dir, progress="quiet",
              checkpoint_every=5, summarize=summarize, grad_every=3)
    return fit, (w, s)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
@pytest.mark.parametrize("kill_at", [12, 27])
def test_killed_run_resumes_to_identical_result(tmp_path, optimizer, kill_at):
    fit, reference = make_fit(tmp_path / "whole", optimizer)
    expected = fit.run()

    fit, _ = make_fit(tmp_path / "killed", optimizer, kill_at=kill_at)
    with pytest.raises(Killed):
        fit.run()
    fit, resumed_params = make_fit(tmp_path / "killed", optimizer)  # a new process: fresh initial values
    result = fit.run(resume=True)

    for a, b in zip(reference, resumed_params):
        assert torch.equal(a.detach(), b.detach())
    assert result.final_loss == expected.final_loss and result.steps == expected.steps == 33
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "record.jsonl").read_text().splitlines()]
    assert steps == list(range(33))  # no duplicates, no gaps
    assert "resumed from checkpoint at step" in (tmp_path / "killed" / "run.log").read_text()


def test_max_steps_stops_and_resume_completes(tmp_path):
    fit, reference = make_fit(tmp_path / "whole", "lbfgs")
    fit.run()
    fit, params = make_fit(tmp_path / "parts", "lbfgs")
    first = fit.run(max_steps=20)
    assert not first.completed and first.steps == 20
    fit, params = make_fit(tmp_path / "parts", "lbfgs")
    final = fit.run()
    assert final.completed
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(reference, params))
    again, params2 = make_fit(tmp_path / "parts", "lbfgs")
    assert again.run().final_loss == final.final_loss  # a finished run returns its result
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(reference, params2))


def test_ctrl_c_during_a_checkpoint_write_arrives_after_a_complete_file(tmp_path):
    """SIGINT while torch.save writes is held until the checkpoint is in place, then raised."""
    import os
    import signal

    from equipoise.core.record import RunDir

    run = RunDir(tmp_path)

    class Interrupting(dict):
        def __reduce_ex__(self, protocol):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the write
            return dict, (dict(self),)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # CI may run us with SIGINT ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            run.save_checkpoint({"state": Interrupting(step=3)})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.load(run.checkpoint, weights_only=False)["state"] == {"step": 3}
