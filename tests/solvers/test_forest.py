"""The candidate forest equals thresholding at every level; collapsing, min_area and persistence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from segflow.solvers.forest import build_forest, quantize

STRUCT = {1: ndi.generate_binary_structure(2, 1), 2: ndi.generate_binary_structure(2, 2)}


def random_map(seed: int, shape=(24, 31)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), 1.5) * 1.4 - 0.2


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label images describe the same regions (up to renumbering)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("connectivity", [1, 2])
def test_forest_equals_thresholding_at_every_level(seed, connectivity):
    prob = np.clip(random_map(seed), 0, 1)
    f = build_forest(prob, connectivity=connectivity, collapse=False)
    q = quantize(prob, 2)
    expected_levels = np.unique(q[q >= 50]) / 100
    np.testing.assert_allclose(f.levels, expected_levels)
    for k, lv in enumerate(f.levels):
        nodes = np.flatnonzero(f.level == k)
        ours = f.to_labels(nodes)
        ref, n = ndi.label(q >= round(lv * 100), structure=STRUCT[connectivity])
        assert n == nodes.size
        assert same_partition(ours, ref)
        assert sorted(f.area[nodes].tolist()) == sorted(np.bincount(ref.ravel())[1:].tolist())
    # parents: every node lies inside its parent
    for node in np.flatnonzero(f.parent >= 0):
        assert (f.node_mask(node) <= f.node_mask(f.parent[node])).all()


@pytest.mark.parametrize("seed", range(3))
def test_collapsed_nodes_are_components_and_chains_are_gone(seed):
    prob = np.clip(random_map(seed + 10), 0, 1)
    f = build_forest(prob)
    q = quantize(prob, 2)
    for node in range(f.n_nodes):
        mask = f.node_mask(node)
        ref, _ = ndi.label(q >= round(f.levels[f.level[node]] * 100), structure=STRUCT[1])
        vals = np.unique(ref[mask])
        assert vals.size == 1 and vals[0] > 0 and (ref == vals[0]).sum() == mask.sum() == f.area[node]
    nonroot = f.parent >= 0
    assert (f.n_children[f.parent[nonroot]] >= 2).all()   # every kept child has a sibling


def test_hand_worked_tree_and_persistence():
    p = np.array([[0.6, 0.9, 0.6, 0.8, 0.6, 0.2, 0.7]])
    f = build_forest(p)
    assert f.parent.tolist() == [-1, -1, 0, 0]
    assert f.area.tolist() == [5, 1, 1, 1]
    # root 0 exists from 0.6 until it splits at 0.7; node 1 (x=6) lasts 0.6-0.7; node 2 (x=1) 0.7-0.9;
    # node 3 (x=3) 0.7-0.8; a region that vanishes counts its last level as one step (0.01)
    np.testing.assert_allclose(f.persistence, [0.1, 0.11, 0.21, 0.11])
    assert [p_.tolist() for p_ in f.paths()] == [[1], [0, 2], [0, 3]]
    assert f.roots.tolist() == [0, 1] and f.leaves.tolist() == [1, 2, 3]


def test_min_area_drops_small_components():
    p = np.array([[0.6, 0.9, 0.9, 0.6, 0.8, 0.6, 0.0, 0.7]])
    f = build_forest(p, min_area=2)
    assert f.n_nodes == 1 and f.area.tolist() == [6]      # the one-pixel peak and the single 0.7 pixel go
    assert (f.node_map[0, :6] == 0).all() and (f.node_map[0, 6:] == -1).all()


def test_tau_and_empty_map():
    f = build_forest(np.full((3, 3), 0.4))
    assert f.n_nodes == 0 and (f.node_map == -1).all()
    assert build_forest(np.full((3, 3), 0.4), tau=0.3).n_nodes == 1


def test_related_and_assign():
    p = np.array([[0.6, 0.9, 0.6, 0.8, 0.6, 0.2, 0.7]])
    f = build_forest(p)
    assert f.related([2]).tolist() == [True, False, True, False]
    assert f.to_labels(np.array([3, 2, 1])).tolist() == [[0, 2, 0, 1, 0, 0, 3]]


def test_bad_inputs():
    with pytest.raises(ValueError, match="prob must lie in"):
        build_forest(np.array([[1.5]]))
    with pytest.raises(ValueError, match="connectivity"):
        build_forest(np.zeros((2, 2)), connectivity=3)
