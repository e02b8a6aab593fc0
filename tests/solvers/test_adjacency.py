"""Adjacent / non-adjacent split of AJI and IoU, with hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.solvers import adjacency
from segflow.solvers.adjacency import adjacency_split, adjacent_cells, mean_split

# cells 1 and 2 touch, 3 is 2 px from 2 (one background pixel between), 4 is isolated
GT = np.array([
    [1, 1, 2, 2, 0, 3, 0, 0, 0, 0],
    [1, 1, 2, 2, 0, 3, 0, 0, 4, 4],
    [0, 0, 0, 0, 0, 0, 0, 0, 4, 4],
])


def test_adjacent_cells_distance():
    assert adjacent_cells(GT).tolist() == [1, 2, 3]
    assert adjacent_cells(GT, distance=1).tolist() == [1, 2]
    assert adjacent_cells(GT, distance=3).tolist() == [1, 2, 3, 4]  # (1, 5) to (1, 8) is 3 px
    assert adjacent_cells(np.zeros((3, 3), int)).tolist() == []


def test_adjacent_cells_diagonal_and_euclidean():
    lab = np.zeros((5, 5), int)
    lab[0, 0] = 1
    lab[2, 2] = 2  # Euclidean distance sqrt(8) = 2.83 > 2
    assert adjacent_cells(lab).tolist() == []
    lab[1, 2] = 3  # 3 touches 2 and is sqrt(5) from 1
    assert adjacent_cells(lab).tolist() == [2, 3]
    assert adjacent_cells(lab, distance=3).tolist() == [1, 2, 3]


def test_perfect_prediction():
    s = adjacency_split(GT, GT * 10)
    assert (s.aji, s.iou, s.aji_adjacent, s.aji_non_adjacent, s.iou_adjacent, s.iou_non_adjacent) == (1,) * 6
    assert (s.n_adjacent, s.n_non_adjacent) == (3, 1)


def test_merge_of_touching_pair_and_stray():
    pred = np.zeros_like(GT)
    pred[0:2, 0:4] = 7  # merges 1 and 2 (4 px each): both match it with IoU 1/2
    pred[0:2, 5] = 8  # cell 3 exactly
    pred[1:3, 8:10] = 9  # cell 4 exactly
    pred[2, 0] = 5  # a false positive on background: charged to both groups
    s = adjacency_split(GT, pred)
    # adjacent: C = 4 + 4 + 2 = 10, U = 8 + 8 + 2 + 1 (stray) = 19
    assert s.aji_adjacent == pytest.approx(10 / 19)
    # non-adjacent: C = 4, U = 4 + 1 (stray)
    assert s.aji_non_adjacent == pytest.approx(4 / 5)
    # IoU adjacent: pred union 8 + 2 + 1 = 11, gt 10, inter 10 -> 10/11; non-adjacent: 4 / 5
    assert s.iou_adjacent == pytest.approx(10 / 11)
    assert s.iou_non_adjacent == pytest.approx(4 / 5)
    # overall AJI: C = 4 + 4 + 2 + 4 = 14, U = 8 + 8 + 2 + 4 + 1 = 23
    assert s.aji == pytest.approx(14 / 23)
    assert s.iou == pytest.approx(14 / 15)


def test_prediction_joins_group_of_largest_overlap():
    gt = np.array([[1, 1, 1, 0, 0, 0, 2, 2, 2, 2, 3, 3]])
    pred = np.array([[0, 0, 5, 5, 5, 5, 5, 5, 5, 0, 0, 0]])  # 1 px on cell 1, 3 px on cell 2
    s = adjacency_split(gt, pred)
    assert (s.n_adjacent, s.n_non_adjacent) == (2, 1)
    # adjacent group = {2, 3} with pred 5: cell 2 IoU 3/8, cell 3 no match
    assert s.aji_adjacent == pytest.approx(3 / (8 + 2))
    # non-adjacent = {1}, no prediction assigned: C = 0
    assert s.aji_non_adjacent == 0.0
    assert s.iou_non_adjacent == 0.0


def test_empty_groups_are_nan_and_mean_skips_them():
    iso = np.zeros((5, 5), int)
    iso[0, 0] = 1
    a = adjacency_split(iso, iso)
    assert np.isnan(a.aji_adjacent) and a.aji_non_adjacent == 1.0
    b = adjacency_split(GT, np.zeros_like(GT))
    assert b.aji == 0.0 and b.aji_adjacent == 0.0 and b.iou_non_adjacent == 0.0
    m = mean_split([a, b])
    assert m["aji_adjacent"] == 0.0  # only b has adjacent cells
    assert m["aji_non_adjacent"] == pytest.approx(0.5)
    assert m["n_adjacent"] == 3 and m["n_non_adjacent"] == 2
    e = adjacency_split(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert e.aji == 1.0 and np.isnan(e.aji_adjacent)


def test_reference_aji_agrees_with_metrics():
    metrics = pytest.importorskip("segflow.solvers.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, p = rng.integers(0, 5, (10, 12)), rng.integers(0, 6, (10, 12))
        assert adjacency._reference_aji(g, p) == pytest.approx(metrics.aji(p, g), abs=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        adjacency_split(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="integer"):
        adjacency_split(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="distance"):
        adjacent_cells(GT, distance=0)
