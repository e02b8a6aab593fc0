"""COIN pseudo-labels: Sinkhorn (log-domain and scaling form), haematoxylin seeds, OT refinement (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.trainer import coin_seeds
from segflow.trainer.coin_seeds import (
    nuclear_channel,
    refine_seeds,
    seed_instances,
    sinkhorn,
    split_instances,
)

from segflow.synthetic import synthetic_nuclei


@pytest.mark.parametrize("reg", [1.0, 0.1, 0.01])
def test_sinkhorn_uniform_marginals_hold(reg):
    rng = np.random.default_rng(0)
    cost = rng.random((200, 6))
    res = sinkhorn(cost, reg=reg, tol=1e-10, max_iter=20000)
    np.testing.assert_allclose(res.plan.sum(1), 1 / 200, atol=1e-6)
    np.testing.assert_allclose(res.plan.sum(0), 1 / 6, atol=1e-6)
    assert res.error <= 1e-10
    assert (res.plan >= 0).all()


def test_sinkhorn_given_marginals_and_small_reg_stability():
    rng = np.random.default_rng(1)
    a = rng.random(50)
    a /= a.sum()
    b = np.array([0.7, 0.2, 0.1])
    cost = rng.random((50, 3)) * 10  # exp(-cost / reg) underflows to 0 without the log domain
    assert np.exp(-cost / 1e-2).min() == 0.0
    res = sinkhorn(cost, a, b, reg=1e-2, tol=1e-10, max_iter=20000)
    assert np.isfinite(res.plan).all()
    np.testing.assert_allclose(res.plan.sum(1), a, atol=1e-6)
    np.testing.assert_allclose(res.plan.sum(0), b, atol=1e-6)


def test_sinkhorn_approaches_exact_ot_as_reg_shrinks():
    # 2x2 with uniform marginals: the optimal plan puts 1/2 on the cheap diagonal
    cost = np.array([[0.0, 1.0], [1.0, 0.0]])
    loose, tight = sinkhorn(cost, reg=1.0).plan, sinkhorn(cost, reg=0.05).plan
    assert loose[0, 1] > tight[0, 1] > 0
    # closed form for this case: off-diagonal mass = 1 / (2 (1 + e^{1/reg}))
    assert tight[0, 1] == pytest.approx(1 / (2 * (1 + np.exp(20.0))), rel=1e-6)


@pytest.mark.parametrize("reg", [0.05, 0.5])
def test_sinkhorn_scaling_form_equals_the_log_domain_iterations(reg, monkeypatch):
    rng = np.random.default_rng(3)
    cost = rng.random((300, 8))
    a = rng.random(300) + 0.1
    a /= a.sum()
    b = np.full(8, 1 / 8)
    fast = sinkhorn(cost, a, b, reg=reg, max_iter=500, tol=1e-9)
    monkeypatch.setattr(coin_seeds, "_SCALING_LIMIT", 0.0)  # force the log-domain loop
    slow = sinkhorn(cost, a, b, reg=reg, max_iter=500, tol=1e-9)
    assert fast.n_iter == slow.n_iter
    np.testing.assert_allclose(fast.plan, slow.plan, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(fast.f - fast.f[0], slow.f - slow.f[0], atol=1e-9)
    assert fast.error <= 1e-9 or fast.n_iter == 500


def test_sinkhorn_bad_inputs():
    with pytest.raises(ValueError, match="equal mass"):
        sinkhorn(np.zeros((2, 2)), np.array([0.5, 0.5]), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="reg"):
        sinkhorn(np.zeros((2, 2)), reg=0)
    with pytest.raises(ValueError, match="2-D"):
        sinkhorn(np.zeros(3))


def test_nuclear_channel_finds_haematoxylin():
    img, lab = synthetic_nuclei((64, 64), n=6, seed=3)
    h = nuclear_channel(img)
    assert h.min() >= 0 and h.max() <= 1
    assert h[lab > 0].mean() > h[lab == 0].mean() + 0.3


def test_split_instances_separates_two_touching_discs():
    yy, xx = np.mgrid[:30, :40]
    mask = ((yy - 15) ** 2 + (xx - 12) ** 2 <= 64) | ((yy - 15) ** 2 + (xx - 26) ** 2 <= 64)
    lab = split_instances(mask)
    assert lab.max() == 2
    assert lab[15, 12] != lab[15, 26] and lab[15, 12] > 0
    assert ((lab > 0) == mask).all()
    assert split_instances(np.zeros((5, 5), bool)).max() == 0
    tiny = np.zeros((10, 10), bool)
    tiny[0, 0] = True
    assert split_instances(tiny, min_area=2).max() == 0


def test_seeds_and_refinement_on_synthetic_image():
    from segflow.runtime.confidence import best_match_iou

    img, lab = synthetic_nuclei((96, 96), n=10, touching=0.0, seed=5)
    seeds = seed_instances(img)
    assert abs(int(seeds.max()) - int(lab.max())) <= 2
    assert np.median(best_match_iou(lab, seeds)) > 0.7
    ref = refine_seeds(img, seeds, max_pixels=3000, seed=0)
    assert ref.fg_prob.shape == lab.shape and 0 <= ref.fg_prob.min() and ref.fg_prob.max() <= 1
    assert ref.prototype_fg.any() and not ref.prototype_fg.all()
    fg = lab > 0
    iou = (fg & (ref.labels > 0)).sum() / (fg | (ref.labels > 0)).sum()
    assert iou > 0.7


def test_refinement_keeps_the_seeds_foreground_fraction():
    # 8 prototypes with uniform marginals gave the ~16 % of nuclei pixels a single prototype of 12.5 %: every
    # refined mask shrank to about 3/4 of its seed. The seeds' fraction is now the foreground prototypes' mass.
    img, lab = synthetic_nuclei((128, 128), n=15, seed=1)
    seeds = seed_instances(img)
    ref = refine_seeds(img, seeds, max_pixels=4000, seed=0)
    fg, ref_fg = lab > 0, ref.labels > 0
    assert 0.12 < (seeds > 0).mean() < 0.25
    assert abs(ref_fg.sum() / (seeds > 0).sum() - 1) < 0.1
    assert (fg & ref_fg).sum() / (fg | ref_fg).sum() > 0.85
    assert ref.prototype_fg.sum() == 4
    with pytest.raises(ValueError, match="n_prototypes"):
        refine_seeds(img, seeds, n_prototypes=1)
