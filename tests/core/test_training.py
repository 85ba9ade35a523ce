"""Training on the core Fit: mini-batches, lr schedules, clipping, validation, time budget, resume."""

import json

import pytest
import torch

from equipoise.core import Batches, Fit, Stage, Term, schedules
from equipoise.core.record import read_record
from equipoise.errors import InputError

from tests.core.training_problem import DTYPE, Points, make_training


def test_batches_cover_each_epoch_once_and_resume_mid_epoch():
    data = list(range(10))
    batches = Batches(data, batch_size=3, seed=2, collate=list, drop_last=True)
    assert len(batches) == 3
    epoch0 = [next(batches) for _ in range(3)]
    seen = sorted(i for b in epoch0 for i in b)
    assert len(seen) == 9 and len(set(seen)) == 9
    epoch1 = [next(batches) for _ in range(3)]
    assert epoch1 != epoch0  # a new permutation every epoch
    again = Batches(data, batch_size=3, seed=2, collate=list)
    first = [next(again) for _ in range(4)]
    state = again.state_dict()
    resumed = Batches(data, batch_size=3, seed=2, collate=list)
    resumed.load_state_dict(state)
    assert resumed.peek() == next(resumed) == epoch1[1]
    assert first == epoch0 + epoch1[:1]
    with pytest.raises(InputError, match="batch_size"):
        resumed.load_state_dict({**state, "batch_size": 4})


def test_batches_keep_last_and_shard_by_rank():
    data = list(range(10))
    whole = Batches(data, batch_size=4, seed=1, collate=list, drop_last=False)
    assert [len(next(whole)) for _ in range(3)] == [4, 4, 2]
    ranks = [Batches(data, batch_size=2, seed=1, collate=list, rank=r, world_size=2) for r in (0, 1)]
    union = Batches(data, batch_size=4, seed=1, collate=list)
    for _ in range(5):
        assert next(ranks[0]) + next(ranks[1]) == next(union)
    padded = [Batches(data, batch_size=3, seed=1, collate=list, drop_last=False, rank=r, world_size=2) for r in (0, 1)]
    last = [[next(b) for _ in range(2)][-1] for b in padded]
    assert [len(b) for b in last] == [3, 3]  # 10 = 6 + 4: the last step is padded to 3 + 3
    with pytest.raises(InputError, match="exceeds"):
        len(Batches(data, batch_size=11, collate=list))
    with pytest.raises(InputError, match="empty"):
        Batches([], batch_size=1)


def test_interleaved_batches_draw_one_source_per_step_and_resume():
    from equipoise.core import Interleaved

    def sources():
        return [Batches(list(range(6)), batch_size=2, seed=1, collate=lambda b: ("a", b)),
                Batches(list(range(18)), batch_size=2, seed=1, collate=lambda b: ("b", b))]

    mixed = Interleaved(sources(), seed=4)
    first = [next(mixed) for _ in range(7)]
    state = mixed.state_dict()
    rest = [next(mixed) for _ in range(20)]
    again = Interleaved(sources(), seed=4)
    assert [next(again) for _ in range(7)] == first  # seeded by the step
    resumed = Interleaved(sources(), seed=4)
    resumed.load_state_dict(state)
    assert resumed.peek() == rest[0] and [next(resumed) for _ in range(20)] == rest
    drawn = [name for name, _ in first + rest]
    assert {"a", "b"} == set(drawn) and drawn.count("b") > drawn.count("a")  # weights 3 and 9 batches/epoch
    ranks = [Interleaved([Batches(list(range(8)), 2, seed=1, collate=lambda b: ("a", b), rank=r, world_size=2),
                          Batches(list(range(8)), 2, seed=1, collate=lambda b: ("b", b), rank=r, world_size=2)], seed=2)
             for r in (0, 1)]
    for _ in range(6):
        (name0, items0), (name1, items1) = next(ranks[0]), next(ranks[1])
        assert name0 == name1 and not set(items0) & set(items1)  # same source on every rank, disjoint items
    with pytest.raises(InputError, match="resume with the same data"):
        Interleaved(sources()[:1], seed=4).load_state_dict(state)
    with pytest.raises(InputError, match="weight"):
        Interleaved(sources(), weights=[1.0])


def test_warmup_cosine_schedule():
    lr = schedules.WarmupCosine(warmup=4, total=14, floor=0.1)
    assert [lr(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr(4) == 1.0 and lr(9) == pytest.approx(0.55) and lr(14) == pytest.approx(0.1) and lr(100) == 0.1
    with pytest.raises(InputError, match="warmup"):
        schedules.WarmupCosine(warmup=5, total=5)


def test_warmup_cosine_follows_the_clock_when_asked():
    by_steps = schedules.WarmupCosine(warmup=4, total=1000, floor=0.1)
    by_time = schedules.WarmupCosine(warmup=4, total=1000, floor=0.1, by_time=True)
    assert by_steps.at(10, 0.5) == by_steps(10) > 0.99  # steps only: the clock is ignored
    assert by_time.at(2, 0.9) == 0.75  # the warm-up counts steps
    assert by_time.at(10, 0.5) == pytest.approx(0.55) and by_time.at(10, 1.5) == pytest.approx(0.1)
    assert by_time.at(1000, 0.1) == pytest.approx(0.1)  # whichever budget runs out first
    stage = Stage("s", free=["x"], lr=0.2, steps=1000, lr_schedule=by_time, max_seconds=60.0)
    assert stage.lr_at(10, seconds=30.0) == pytest.approx(0.2 * 0.55)
    assert Stage("s", free=["x"], lr=0.2, steps=1000, lr_schedule=by_time).lr_at(10, seconds=30.0) \
        == pytest.approx(0.2 * by_time(10))  # no budget: steps only


def test_minibatch_training_records_lr_grad_norm_and_validation(tmp_path):
    fit, model, _ = make_training(tmp_path, steps=12, validate_every=4)
    result = fit.run()
    lines = list(read_record(tmp_path))
    assert [line["step"] for line in lines] == list(range(12))
    lr = schedules.WarmupCosine(warmup=3, total=12, floor=0.1)
    assert [line["lr"] for line in lines] == pytest.approx([0.05 * lr(s) for s in range(12)])
    assert all(line["grad_norm"] > 0 for line in lines)  # pre-clip norm, every step with clipping
    validated = [line["step"] for line in lines if "validation" in line]
    assert validated == [3, 7, 11]  # after steps 4, 8 and 12
    history = [line["validation"]["val_mse"] for line in lines if "validation" in line]
    assert result.validation["last"] == {"step": 12, "metrics": lines[-1]["validation"]}
    best = result.validation["best"]
    assert best["val_mse"]["value"] == min(history) and best["neg"]["value"] == -min(history)
    assert history[-1] < history[0]  # it learns
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["validation"]["best"]["val_mse"] == best["val_mse"]
    assert "validation after step 12" in (tmp_path / "run.log").read_text()
    assert result.stages[0].ended == "steps"


def test_clipping_bounds_the_applied_step():
    def step_size(clip):
        torch.manual_seed(0)
        w = torch.zeros(3, dtype=DTYPE, requires_grad=True)
        target = torch.tensor([30.0, -40.0, 0.0], dtype=DTYPE)
        fit = Fit({"w": w}, [Term("sq", lambda out: ((w - target) ** 2).sum())],
                  [Stage("s", ["w"], optimizer="sgd", lr=0.1, steps=1, clip_grad_norm=clip)], progress="quiet")
        fit.run()
        return float(w.detach().norm())

    assert step_size(None) == pytest.approx(0.1 * 100.0)  # gradient norm 2 * 50
    assert step_size(1.0) == pytest.approx(0.1 * 1.0)


def test_time_budget_ends_the_stage_unconverged(tmp_path):
    fit, _, _ = make_training(tmp_path, steps=10 ** 6, validate_every=10 ** 6)
    fit.stages[0].max_seconds = 0.3
    fit.stages[0].lr_schedule = None
    result = fit.run()
    assert 0 < result.steps < 10 ** 6 and result.stages[0].ended == "time" and not result.converged
    assert "time budget" in (tmp_path / "run.log").read_text()
    assert result.validation["last"]["step"] == result.steps  # validated after the last step


@pytest.mark.parametrize("how", ["max_steps", "kill"])
def test_minibatch_resume_is_bitwise(tmp_path, how):
    fit, whole, _ = make_training(tmp_path / "whole", steps=14)
    expected = fit.run()
    if how == "max_steps":
        fit, _, _ = make_training(tmp_path / "cut", steps=14)
        assert not fit.run(max_steps=7).completed
    else:
        fit, _, _ = make_training(tmp_path / "cut", steps=14, kill_at=9)
        with pytest.raises(KeyboardInterrupt):
            fit.run()
    fit, resumed, _ = make_training(tmp_path / "cut", steps=14)  # new process: new model, new batches
    result = fit.run()
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert result.final_loss == expected.final_loss and result.validation == expected.validation
    steps = [line["step"] for line in read_record(tmp_path / "cut")]
    assert steps == list(range(14))


def test_extra_state_is_checkpointed(tmp_path):
    store = {"calls": 0}
    saved = {}

    def make():
        w = torch.zeros(2, dtype=DTYPE, requires_grad=True)
        data = Batches(Points(16), batch_size=4, seed=0)

        def forward(batch):
            store["calls"] += 1
            return batch[0][:, :2] @ w - batch[1]

        return Fit({"w": w}, [Term("mse", lambda r: (r ** 2).mean())], [Stage("s", ["w"], steps=6)],
                   forward=forward, data=data, run_dir=tmp_path, progress="quiet", checkpoint_every=2,
                   extra_state={"calls": (lambda: dict(store), lambda value: saved.update(value))})

    make().run(max_steps=3)
    make().run()
    assert saved["calls"] >= 2


def test_training_input_errors():
    w = torch.zeros(2, requires_grad=True)
    term = [Term("t", lambda out: w.sum())]
    stage = [Stage("s", ["w"])]
    with pytest.raises(InputError, match="Batches"):
        Fit({"w": w}, term, stage, data=[1, 2, 3])
    with pytest.raises(InputError, match="validate"):
        Fit({"w": w}, term, stage, validate_every=5)
    with pytest.raises(InputError, match="clip_grad_norm"):
        Stage("s", ["w"], clip_grad_norm=0.0)
    with pytest.raises(InputError, match="lr_schedule"):
        Stage("s", ["w"], lr_schedule=lambda s: 1.0)
    fit = Fit({"w": w}, term, stage, validate=lambda: {"bad": "x"}, progress="quiet")
    with pytest.raises(InputError, match="not a number"):
        fit.run()
