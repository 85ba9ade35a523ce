import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equipoise.core import robust
from equipoise.errors import InputError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(finite)
def test_wrap_angle_range_and_period(x):
    y = float(robust.wrap_angle(torch.tensor(x, dtype=torch.float64)))
    assert -math.pi < y <= math.pi
    turns = (x - y) / (2 * math.pi)
    assert abs(turns - round(turns)) < 1e-6


def test_wrap_angle_edges_and_gradient():
    x = torch.tensor([math.pi, -math.pi, 3 * math.pi, -1e-300, 0.0], dtype=torch.float64, requires_grad=True)
    y = robust.wrap_angle(x)
    assert y.tolist() == pytest.approx([math.pi, math.pi, math.pi, -1e-300, 0.0])
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e3))
def test_huber_value_and_slope_are_continuous_at_delta(delta):
    eps = delta * 1e-7
    x = torch.tensor([delta - eps, delta + eps, -delta - eps, -delta + eps], dtype=torch.float64,
                     requires_grad=True)
    h = robust.huber(x, delta)
    assert float(h[0].detach()) == pytest.approx(float(h[1].detach()), rel=1e-5)
    (grad,) = torch.autograd.grad(h.sum(), x)
    assert grad.tolist() == pytest.approx([delta - eps, delta, -delta, -delta + eps], rel=1e-5)


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e7), st.floats(min_value=1e-2, max_value=1e4))
def test_log_scaled_gradient_is_analytic_and_positive(x, scale):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(robust.log_scaled(t, scale), t)
    assert float(grad) == pytest.approx(scale / (scale + x), rel=1e-9)
    assert float(grad) > 0


def test_angle_losses_have_gradient_for_small_and_large_errors():
    a = torch.tensor([0.0, 0.0, 3.1], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([math.radians(5), math.radians(10), -3.1], dtype=torch.float64)
    diff = robust.angle_difference(a, b)
    assert diff.tolist() == pytest.approx([-math.radians(5), -math.radians(10), 6.2 - 2 * math.pi])
    (grad,) = torch.autograd.grad(robust.angular_huber(a, b, delta=0.1).sum(), a)
    assert grad.tolist() == pytest.approx([-math.radians(5), -0.1, 6.2 - 2 * math.pi])


def test_bad_scales_raise():
    with pytest.raises(InputError):
        robust.log_scaled(torch.ones(1), 0.0)
    with pytest.raises(InputError):
        robust.huber(torch.ones(1), -1.0)
