import pytest
import torch

from equipoise.core import Fit, Stage, Term, schedules
from equipoise.errors import InputError


def test_cyclical_shape_at_cycle_boundaries_and_ramp_ratio():
    s = schedules.Cyclical(period=10, ratio=0.5)
    values = [s(k) for k in range(25)]
    assert values[0] == values[10] == values[20] == 0.0  # each cycle starts at 0
    assert values[1:5] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # ramp over the first ratio*period steps
    assert values[5:10] == [1.0] * 5  # then hold
    assert values[11] == pytest.approx(0.2)
    short = schedules.Cyclical(period=10, ratio=0.2, high=2.0)
    assert [short(k) for k in range(4)] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    spread = schedules.Cyclical.over(total_steps=100, cycles=4, ratio=0.5)
    assert spread.period == 25 and spread(25) == 0.0 and spread(12) == pytest.approx(12 / 12.5)
    with pytest.raises(InputError):
        schedules.Cyclical(period=10, ratio=0.0)


def test_ramps_and_curriculum_table():
    lin = schedules.Linear(0.0, 1.0, steps=10, begin=5)
    assert [lin(k) for k in (0, 5, 10, 15, 100)] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    cos = schedules.Cosine(1.0, 0.0, steps=4)
    assert [cos(k) for k in (0, 2, 4, 8)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    table = schedules.Piecewise(((0, 0.0), (10, 0.5), (20, 1.0)))
    assert [table(k) for k in (0, 9, 10, 19, 20, 99)] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert schedules.Constant(3.0)(7) == 3.0
    with pytest.raises(InputError):
        schedules.Piecewise(((5, 1.0),))


def test_free_bits_floor_and_gradient():
    kl = torch.tensor([[0.01, 0.5, 2.0], [0.03, 0.7, 2.0]], dtype=torch.float64, requires_grad=True)
    value = schedules.free_bits(kl, floor=0.1)
    assert float(value.detach()) == pytest.approx(0.1 + 0.6 + 2.0)
    (grad,) = torch.autograd.grad(value, kl)
    assert torch.equal(grad[:, 0], torch.zeros(2, dtype=torch.float64))  # below the floor: no push
    assert grad[:, 1:] == pytest.approx(torch.full((2, 2), 0.5, dtype=torch.float64))


def test_schedule_multiplies_weight_in_record():
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    terms = [Term("data", lambda o: (x ** 2).sum()),
             Term("kl", lambda o: (x ** 2).sum(), weight=2.0, schedule=schedules.Cyclical(period=4, ratio=0.5))]
    fit = Fit({"x": x}, terms, [Stage("s", ["x"], steps=2), Stage("t", ["x"], steps=3)], progress="quiet")
    result = fit.run()
    # stage t ends at global step 4: start of a new cycle -> multiplier 0
    assert result.stages[1].final_terms["kl"]["weight"] == 0.0
    assert result.stages[0].final_terms["kl"]["weight"] == pytest.approx(2.0 * 0.5)
