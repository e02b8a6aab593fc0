"""Single-image DP selection, instances_from_sdf / instances_from_prob and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.solvers import (
    dp_select,
    forest_instances,
    instances_from_prob,
    instances_from_sdf,
    maxvalue_instances,
    otsu_instances,
    threshold_instances,
)
from segflow.solvers.forest import build_forest
from segflow.solvers.single import agreement_score

from segflow.sdf import mask_to_sdf


def touching_squares():
    lab = np.zeros((10, 18), int)
    lab[1:9, 1:9] = 1
    lab[1:9, 9:17] = 2
    return lab


def test_dp_matches_brute_force_on_random_trees():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    sizes = []
    for seed in range(8):
        p = np.clip(ndi.gaussian_filter(np.random.default_rng(seed).random((9, 9)), 0.8) * 2 - 0.5, 0, 1)
        f = build_forest(p)
        if f.n_nodes > 10:
            continue
        sizes.append(f.n_nodes)
        s = rng.normal(size=f.n_nodes)
        chosen = dp_select(f, s)
        assert all(f.related([a])[chosen].sum() == 1 for a in chosen)      # pairwise disjoint
        best = 0.0
        for bits in range(2 ** f.n_nodes):
            nodes = [i for i in range(f.n_nodes) if bits >> i & 1]
            if all(f.related([a])[nodes].sum() == 1 for a in nodes):
                best = max(best, float(s[nodes].sum()))
        assert s[chosen].sum() == pytest.approx(best)
    assert max(sizes) >= 3


def test_persistence_splits_touching_sdf_instances_and_roots_merge_them():
    sdf = mask_to_sdf(touching_squares(), delta=4.0)
    lab = instances_from_sdf(sdf, min_area=1)
    assert lab.max() == 2
    assert ((lab > 0) == (sdf <= 0)).all()                # grown back to the whole mask
    roots = instances_from_sdf(sdf, min_area=1, score="roots")
    assert roots.max() == 1


@pytest.mark.parametrize("method", ["hemd", "watershed", "threshold"])
def test_instances_from_sdf_methods_recover_the_squares(method):
    gt = touching_squares()
    lab = instances_from_sdf(mask_to_sdf(gt, delta=4.0), method=method, min_area=1)
    assert lab.dtype == np.uint32 and lab.max() == 2
    for g in (1, 2):                                       # each square is mostly one instance
        vals, counts = np.unique(lab[gt == g], return_counts=True)
        assert vals[np.argmax(counts)] > 0 and counts.max() >= 0.8 * (gt == g).sum()


def test_min_area_and_unknown_method():
    sdf = mask_to_sdf(touching_squares(), delta=4.0)
    assert instances_from_sdf(sdf, min_area=65).max() == 1     # squares (64 px) drop, the union stays
    assert instances_from_sdf(sdf, min_area=129).max() == 0
    with pytest.raises(ValueError, match="unknown method"):
        instances_from_sdf(sdf, method="magic")


def test_agreement_score_hand_worked():
    f = build_forest(np.array([[0.6, 0.9, 0.6, 0.8, 0.6]]))          # root (5 px), children x=1 and x=3
    samples = [np.array([[1, 1, 1, 1, 1]]), np.array([[0, 1, 0, 2, 0]])]
    np.testing.assert_allclose(agreement_score(f, samples), [(1 + 0.2) / 2, (0.2 + 1) / 2, (0.2 + 1) / 2])
    lab = forest_instances(np.array([[0.6, 0.9, 0.6, 0.8, 0.6]]), score="agreement", samples=samples[1:],
                           fill=False)
    assert lab.tolist() == [[0, 1, 0, 2, 0]]


def test_baselines_hand_worked():
    p = np.array([[0.2, 0.7, 0.7, 0.1, 0.9, 0.4]])
    assert threshold_instances(p).tolist() == [[0, 1, 1, 0, 2, 0]]
    assert otsu_instances(p).max() == 2
    assert instances_from_prob(p, method="threshold", min_area=2).tolist() == [[0, 1, 1, 0, 0, 0]]
    classes = np.zeros((3, 1, 6))
    classes[0, 0, [0, 5]] = 1                               # background
    classes[1, 0, [1, 4]] = 1                               # interiors
    classes[2, 0, [2, 3]] = 1                               # boundary: grown into by the interiors
    assert maxvalue_instances(classes).tolist() == [[0, 1, 1, 2, 2, 0]]
