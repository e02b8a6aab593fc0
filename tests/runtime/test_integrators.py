"""Integrators: exact hand-worked steps, honest NFE counts, and convergence order on analytic ODEs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from segflow.runtime.integrators import STAGES, STEPS, array_namespace, integrate, nfe, uniform_grid


class Counting:
    """Wrap a field and count its evaluations."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.f(x, t)


# analytic ODEs on [0, 1]: name -> (f(x, t), x0, exact x(1))
ODES = {
    "decay": (lambda x, t: -x, np.array([1.0, -2.0]), np.array([1.0, -2.0]) * math.exp(-1.0)),
    "time_varying": (lambda x, t: np.cos(t) * x, np.array([0.5]), np.array([0.5 * math.exp(math.sin(1.0))])),
    "forced": (lambda x, t: -2.0 * x + t, np.array([1.0]),
               # x = (x0 - c) e^{-2t} + t/2 - 1/4 with c = -1/4
               np.array([(1.0 + 0.25) * math.exp(-2.0) + 0.5 - 0.25])),
}
ORDERS = {"euler": 1, "heun": 2, "rk4": 4}


def test_registry_is_consistent():
    assert set(STEPS) == set(STAGES) == set(ORDERS)


@pytest.mark.parametrize("method,expected", [("euler", 0.0), ("heun", 0.5), ("rk4", 0.375)])
def test_one_step_of_decay_by_hand(method, expected):
    # one step dt=1 on dx/dt=-x from 1: Euler 1-1, Heun 1-1+1/2, RK4 1-1+1/2-1/6+1/24
    x1 = integrate(lambda x, t: -x, np.array([1.0]), [0.0, 1.0], method=method)
    assert x1[0] == pytest.approx(expected, abs=1e-15)


def test_euler_four_steps_is_three_quarters_to_the_fourth():
    x1 = integrate(lambda x, t: -x, np.array([2.0]), uniform_grid(4))
    assert x1[0] == 2.0 * 0.75**4


@pytest.mark.parametrize("method", sorted(STEPS))
@pytest.mark.parametrize("n", [1, 3, 4, 7])
def test_nfe_is_exact(method, n):
    f = Counting(lambda x, t: -x)
    integrate(f, np.ones(3), uniform_grid(n), method=method)
    assert f.calls == nfe(method, n) == n * STAGES[method]


@pytest.mark.parametrize("method", sorted(STEPS))
def test_times_passed_to_the_field(method):
    seen = []
    integrate(lambda x, t: seen.append(t) or x * 0, np.zeros(1), uniform_grid(2), method=method)
    expected = {"euler": [0.0, 0.5], "heun": [0.0, 0.5, 0.5, 1.0],
                "rk4": [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]}[method]
    assert seen == expected


@pytest.mark.parametrize("name", sorted(ODES))
@pytest.mark.parametrize("method", sorted(STEPS))
def test_convergence_order(name, method):
    f, x0, exact = ODES[name]
    errs = [np.abs(integrate(f, x0, uniform_grid(n), method=method) - exact).max() for n in (8, 16, 32)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    order = ORDERS[method]
    for r in ratios:  # error ∝ h^order: halving dt divides the error by ~2^order
        assert 2**order * 0.8 < r < 2**order * 1.25, (name, method, errs)


@pytest.mark.parametrize("method", sorted(STEPS))
def test_converges_to_exact(method):
    f, x0, exact = ODES["decay"]
    np.testing.assert_allclose(integrate(f, x0, uniform_grid(200), method=method), exact, rtol=1e-2)


def test_float32_state_stays_float32_and_input_untouched():
    x0 = np.ones((2, 1, 4, 4), np.float32)
    x1 = integrate(lambda x, t: -x, x0, uniform_grid(3), method="rk4")
    assert x1.dtype == np.float32 and (x0 == 1).all()


def test_backward_grid_inverts_the_flow():
    x1 = integrate(lambda x, t: -x, np.array([1.0]), uniform_grid(64), method="rk4")
    back = integrate(lambda x, t: -x, x1, uniform_grid(64, t0=1.0, t1=0.0), method="rk4")
    assert back[0] == pytest.approx(1.0, abs=1e-8)


def test_callback_sees_every_step():
    seen = []
    integrate(lambda x, t: -x, np.array([1.0]), uniform_grid(4), callback=lambda i, t, x: seen.append((i, t)))
    assert seen == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]


def test_errors():
    with pytest.raises(ValueError, match="euler"):
        integrate(lambda x, t: x, np.ones(1), [0.0, 1.0], method="dopri5")
    with pytest.raises(ValueError, match="monotonic"):
        integrate(lambda x, t: x, np.ones(1), [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="two"):
        integrate(lambda x, t: x, np.ones(1), [0.0])
    with pytest.raises(ValueError):
        uniform_grid(0)
    with pytest.raises(ValueError):
        nfe("midpoint", 3)


def test_array_namespace_is_numpy_for_numpy():
    assert array_namespace(np.ones(2)) is np
    assert array_namespace(np.float32(1.0)) is np
