"""The SSB bridge in the runtime: schedule, posterior, sub-grids, sampler with oracle fields, guidance, X1."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.runtime.bridge import (
    bridge_nfe,
    bridge_schedule,
    default_x1_recipe,
    sample_bridge,
    sampling_grid,
    x1_from_image,
)

from segflow.card import ModelCard

N, BETA_MAX = 20, 0.6
SCHED = bridge_schedule(N, BETA_MAX)
BRIDGE = {"n_timesteps": N, "beta_max": BETA_MAX, "n_labels": 3, "x1": default_x1_recipe()}


class Oracle:
    """Field returning the exact bridge noise (x - X0) / sigma_n; X0 may depend on the bound label."""

    def __init__(self, x0_by_label: dict[int, np.ndarray]):
        self.x0_by_label, self.label, self.calls, self.seen = x0_by_label, None, 0, []

    def __call__(self, x, t):
        self.calls += 1
        n = int(round(t * N))
        self.seen.append((n, None if self.label is None else self.label.copy()))
        labels = self.label if self.label is not None else [0] * len(x)
        x0 = np.stack([self.x0_by_label[int(lab)][row] for row, lab in enumerate(labels)])
        return (x - x0) / SCHED.sigma[n]


def gaussian_condition(cov: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """For W with covariance cov: (coefficient of W_j, variance) of W_i given W_j."""
    return cov[i, j] / cov[j, j], cov[i, i] - cov[i, j] ** 2 / cov[j, j]


def test_schedule_is_symmetric_with_exact_ends():
    ramp = np.linspace(np.sqrt(1e-4), np.sqrt(BETA_MAX / N), N) ** 2
    np.testing.assert_allclose(SCHED.betas[: N // 2], ramp[: N // 2])
    np.testing.assert_array_equal(SCHED.betas, SCHED.betas[::-1])
    assert SCHED.sigma[0] == 0 and SCHED.sigma_bar[-1] == 0
    np.testing.assert_allclose(SCHED.sigma ** 2 + SCHED.sigma_bar ** 2, SCHED.betas.sum())
    np.testing.assert_allclose(SCHED.sigma[1:] ** 2, np.cumsum(SCHED.betas))


def test_odd_schedule_is_symmetric():
    s = bridge_schedule(7, 0.3)
    assert len(s.betas) == 7
    np.testing.assert_array_equal(s.betas, s.betas[::-1])


def test_posterior_ends_and_brownian_bridge_variance():
    assert tuple(map(float, SCHED.posterior(0))) == (1.0, 0.0, 0.0)
    assert tuple(map(float, SCHED.posterior(N))) == (0.0, 1.0, 0.0)
    # X_n = X0 + W(sigma_n^2) with W Brownian; condition on X_N = X1 with the Gaussian formula.
    cum = SCHED.sigma ** 2
    for n in (1, 5, 10, 19):
        cov = np.minimum.outer(cum[[n, N]], cum[[n, N]])
        coef, var = gaussian_condition(cov, 0, 1)
        mu0, mu1, std = SCHED.posterior(n)
        assert mu1 == pytest.approx(coef) and mu0 == pytest.approx(1 - coef)
        assert std ** 2 == pytest.approx(var)


def test_step_is_the_posterior_between_two_bridge_times():
    cum = SCHED.sigma ** 2
    for n, m in ((20, 13), (13, 6), (6, 1), (1, 0)):
        c_x0, c_xn, std = SCHED.step(n, m)
        cov = np.minimum.outer(cum[[m, n]], cum[[m, n]])
        coef, var = gaussian_condition(cov, 0, 1) if m else (0.0, 0.0)
        assert (c_xn, c_x0) == pytest.approx((coef, 1 - coef))
        assert std ** 2 == pytest.approx(var, abs=1e-15)
    with pytest.raises(ValueError):
        SCHED.step(3, 3)


def test_sampling_grid():
    assert sampling_grid(20, 4) == [20, 15, 10, 5, 0]
    assert sampling_grid(20, 20) == list(range(20, -1, -1))
    assert sampling_grid(1000, 50)[:3] == [1000, 980, 960]
    for steps in (1, 3, 7, 19):
        g = sampling_grid(20, steps)
        assert len(g) == steps + 1 and g[0] == 20 and g[-1] == 0 and all(np.diff(g) < 0)
    with pytest.raises(ValueError, match="1..20"):
        sampling_grid(20, 21)


def test_bridge_nfe_counts_guidance_twice():
    assert bridge_nfe(50) == 50 and bridge_nfe(10, 0.5) == 20


@pytest.fixture
def x0_x1():
    rng = np.random.default_rng(0)
    x0 = np.where(rng.random((2, 1, 8, 8)) < 0.3, -1.0, 1.0).astype(np.float32)
    x1 = rng.normal(0, 0.7, x0.shape).astype(np.float32)
    return x0, x1


@pytest.mark.parametrize("ode", [False, True])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_oracle_sampler_reproduces_x0(x0_x1, ode, steps):
    x0, x1 = x0_x1
    f = Oracle({1: x0})
    out = sample_bridge(f, x1, steps=steps, bridge=BRIDGE, ode=ode, label=1, rng=np.random.default_rng(1))
    np.testing.assert_allclose(out, x0, atol=1e-5)
    assert f.calls == steps
    assert x1.dtype == np.float32 and out.dtype == np.float32


def test_ode_trajectory_is_the_posterior_mean(x0_x1):
    x0, x1 = x0_x1
    states = {}
    sample_bridge(Oracle({1: x0}), x1, steps=5, bridge=BRIDGE, ode=True, label=1,
                  callback=lambda n, m, x, x0_hat: states.__setitem__(m, x))
    for m, x in states.items():
        mu0, mu1, _ = SCHED.posterior(m)
        np.testing.assert_allclose(x, mu0 * x0 + mu1 * x1, atol=1e-5)


def test_ancestral_marginals_match_the_bridge_posterior():
    x0 = np.full((1, 1, 200, 200), -1.0, np.float32)
    x1 = np.full_like(x0, 0.5)
    states = {}
    sample_bridge(Oracle({2: x0}), x1, steps=4, bridge=BRIDGE, label=2, rng=np.random.default_rng(3),
                  callback=lambda n, m, x, x0_hat: states.__setitem__(m, x.copy()))
    for m in (15, 10, 5):
        mu0, mu1, std = SCHED.posterior(m)
        vals = states[m].ravel().astype(np.float64)
        se = std / np.sqrt(vals.size)
        assert abs(vals.mean() - (mu0 * -1.0 + mu1 * 0.5)) < 5 * se
        assert vals.std() == pytest.approx(std, rel=0.03)


def test_guidance_zero_equals_conditional_sampling(x0_x1):
    x0, x1 = x0_x1
    fields = {0: -x0, 1: x0}
    runs = []
    for guidance in (None, 0.0):
        f = Oracle(fields)
        kw = {} if guidance is None else {"guidance": guidance}
        runs.append(sample_bridge(f, x1, steps=6, bridge=BRIDGE, label=1, rng=np.random.default_rng(7), **kw))
        assert f.calls == 6 and all(int(lab[0]) == 1 for _, lab in f.seen)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_guidance_formula_and_evaluation_count(x0_x1):
    x0, x1 = x0_x1
    null = np.zeros_like(x0)
    f = Oracle({0: null, 1: x0})
    w = 0.5
    out = sample_bridge(f, x1, steps=5, bridge=BRIDGE, ode=True, guidance=w, label=1, clip=False)
    np.testing.assert_allclose(out, (1 + w) * x0 - w * null, atol=1e-5)
    assert f.calls == bridge_nfe(5, w)
    assert sorted({int(lab[0]) for _, lab in f.seen}) == [0, 1]


def test_per_row_labels(x0_x1):
    x0, x1 = x0_x1
    other = -x0
    f = Oracle({1: x0, 2: other})
    out = sample_bridge(f, x1, steps=3, bridge=BRIDGE, ode=True, label=[1, 2])
    np.testing.assert_allclose(out, np.concatenate([x0[:1], other[1:]]), atol=1e-5)
    with pytest.raises(ValueError, match="one label per row"):
        sample_bridge(f, x1, steps=3, bridge=BRIDGE, ode=True, label=[1, 2, 3])


def test_ancestral_needs_rng_and_unconditional_label_zero(x0_x1):
    x0, x1 = x0_x1
    with pytest.raises(ValueError, match="rng"):
        sample_bridge(Oracle({0: x0}), x1, steps=3, bridge=BRIDGE)
    f = Oracle({0: x0})
    np.testing.assert_allclose(sample_bridge(f, x1, steps=3, bridge=BRIDGE, rng=np.random.default_rng(0)),
                               x0, atol=1e-5)
    assert all(int(lab[0]) == 0 for _, lab in f.seen)


def test_x1_from_image_projection_and_noise():
    card = ModelCard(kind="ssb", in_channels=3, tile=16, bridge={**BRIDGE, "x1": default_x1_recipe(noise=0.0)})
    img = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    x1 = x1_from_image(img, card, rng=np.random.default_rng(0))
    np.testing.assert_allclose(x1[:, 0], 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2], atol=1e-6)
    noisy = {**BRIDGE, "x1": default_x1_recipe(scale=-1.0, noise=0.5)}
    flat = np.zeros((4, 1, 32, 32), np.float32)
    x1 = x1_from_image(flat + 0.25, noisy, rng=np.random.default_rng(1))
    assert x1.shape == (4, 1, 32, 32) and x1.dtype == np.float32
    assert x1.mean() == pytest.approx(-0.25, abs=0.03) and x1.std() == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="images must be"):
        x1_from_image(img, {"x1": {**noisy["x1"], "weights": [1.0]}}, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="1 or 3 image channels"):
        x1_from_image(img[:, :2], noisy, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="X1 recipe"):
        x1_from_image(flat, {"n_timesteps": 5}, rng=np.random.default_rng(0))
