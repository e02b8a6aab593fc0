"""Hand-worked metric cases (1-row images, so every number can be checked on paper)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from segflow.solvers import metrics as M

# one prediction covering two cells: |G1| = |G2| = 2, |P| = 5, each intersection 2, IoU 0.4
MERGE_GT = np.array([[1, 1, 0, 2, 2, 0]])
MERGE_PRED = np.array([[1, 1, 1, 1, 1, 0]])
# two matches (IoU 3/4 and 2/3) plus a one-pixel false positive; labels not sequential
MIX_GT = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 0, 0]])
MIX_PRED = np.array([[3, 3, 3, 0, 0, 5, 5, 5, 0, 9]])


def test_merge_case():
    assert M.dice(MERGE_PRED, MERGE_GT) == pytest.approx(8 / 9)
    assert M.iou(MERGE_PRED, MERGE_GT) == pytest.approx(4 / 5)
    assert M.object_f1(MERGE_PRED, MERGE_GT) == 0.0
    assert M.aji(MERGE_PRED, MERGE_GT) == pytest.approx(4 / 10)      # P counted in both unions
    assert M.aji_plus(MERGE_PRED, MERGE_GT) == pytest.approx(2 / 7)  # P paired once, G2 alone
    assert tuple(M.pq(MERGE_PRED, MERGE_GT)) == (0.0, 0.0, 0.0)
    assert M.ctc_seg(MERGE_PRED, MERGE_GT) == pytest.approx(0.4)     # P covers > half of each cell
    assert M.ctc_det(MERGE_PRED, MERGE_GT) == pytest.approx(1 - 5 / 20)  # one split (5) of AOGM0 20


def test_mixed_case():
    assert M.dice(MIX_PRED, MIX_GT) == pytest.approx(10 / 13)
    assert M.iou(MIX_PRED, MIX_GT) == pytest.approx(5 / 8)
    assert M.object_f1(MIX_PRED, MIX_GT) == pytest.approx(0.8)
    q = M.pq(MIX_PRED, MIX_GT)
    assert q.dq == pytest.approx(0.8)
    assert q.sq == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert q.pq == pytest.approx(0.8 * (3 / 4 + 2 / 3) / 2)
    assert M.aji(MIX_PRED, MIX_GT) == pytest.approx(5 / 8)
    assert M.aji_plus(MIX_PRED, MIX_GT) == pytest.approx(5 / 8)
    assert M.ctc_seg(MIX_PRED, MIX_GT) == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert M.ctc_det(MIX_PRED, MIX_GT) == pytest.approx(1 - 1 / 20)  # one false positive


def test_empty_prediction():
    gt, pred = np.array([[1, 1, 0, 2]]), np.zeros((1, 4), int)
    for f in (M.dice, M.iou, M.object_f1, M.aji, M.aji_plus, M.ctc_seg, M.ctc_det):
        assert f(pred, gt) == 0.0, f.__name__
    assert tuple(M.pq(pred, gt)) == (0.0, 0.0, 0.0)


def test_empty_ground_truth():
    gt, pred = np.zeros((1, 4), int), np.array([[0, 1, 1, 0]])
    for f in (M.dice, M.iou, M.object_f1, M.aji, M.aji_plus):
        assert f(pred, gt) == 0.0, f.__name__
    assert tuple(M.pq(pred, gt)) == (0.0, 0.0, 0.0)
    assert math.isnan(M.ctc_seg(pred, gt)) and math.isnan(M.ctc_det(pred, gt))


def test_both_empty_is_perfect():
    z = np.zeros((2, 3), int)
    for f in (M.dice, M.iou, M.object_f1, M.aji, M.aji_plus):
        assert f(z, z) == 1.0
    assert tuple(M.pq(z, z)) == (1.0, 1.0, 1.0)


def test_split_prediction():
    gt, pred = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 2]])
    assert M.object_f1(pred, gt) == 0.0                      # IoU 0.5 is not > 0.5
    assert M.aji(pred, gt) == pytest.approx(2 / 6)           # tie -> lower label; P2 unused
    assert M.aji_plus(pred, gt) == pytest.approx(2 / 6)
    assert M.ctc_seg(pred, gt) == 0.0                        # no prediction covers more than half
    assert M.ctc_det(pred, gt) == 0.0                        # miss 10 + 2 false positives > AOGM0 10


def test_metrics_are_label_permutation_invariant():
    perm = np.array([0, 7, 2, 40, 3, 11, 9, 1, 5, 6, 8])[MIX_PRED]
    assert M.image_metrics(perm, MIX_GT) == M.image_metrics(MIX_PRED, MIX_GT)


def test_evaluate_pools_and_averages():
    out = M.evaluate([MERGE_PRED, MIX_PRED], [MERGE_GT, MIX_GT])
    assert out["n_images"] == 2
    assert out["pooled"]["dice"] == pytest.approx(2 * (4 + 5) / (9 + 13))
    assert out["pooled"]["ctc_seg"] == pytest.approx((0.8 + 3 / 4 + 2 / 3) / 4)
    assert out["pooled"]["ctc_det"] == pytest.approx(1 - (5 + 1) / 40)
    assert out["mean"]["aji"] == pytest.approx((0.4 + 5 / 8) / 2)
    assert len(out["per_image"]) == 2


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        M.dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_relabel():
    assert M.relabel(np.array([[5, 0, 5, 2]])).tolist() == [[2, 0, 2, 1]]
    assert M.relabel(np.array([[3, 3]])).tolist() == [[1, 1]]
