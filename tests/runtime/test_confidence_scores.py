"""Instance confidence from K-sample agreement, COIN's adaptive threshold and instance filtering."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.runtime.confidence import (
    InstanceScores,
    adaptive_threshold,
    best_match_iou,
    filter_instances,
    instance_confidence,
    parse_min_confidence,
)

from segflow.sdf import mask_to_sdf


def _disc_labels(shape=(40, 60), centres=((12, 12), (12, 40), (30, 25)), r=6):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return lab


def test_identical_samples_score_one():
    lab = _disc_labels()
    sdf = mask_to_sdf(lab)
    scores = instance_confidence(lab, np.stack([sdf] * 5))
    assert scores.ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(scores.confidence, 1.0)
    np.testing.assert_array_equal(scores.mean_std, 0.0)
    np.testing.assert_array_equal(scores.area, np.bincount(lab.ravel())[1:])


def test_hand_worked_shrink_and_vanish():
    lab = np.zeros((4, 8), np.int64)
    lab[0:2, 0:2] = 3  # 4 pixels
    lab[0:2, 4:8] = 9  # 8 pixels
    good = lab > 0
    s1 = good.copy()
    s1[0:2, 6:8] = False  # instance 9 drawn at half size: IoU 0.5
    s2 = good.copy()
    s2[0:2, 0:2] = False  # instance 3 missing: IoU 0
    s2[2, 0] = True  # an unrelated speck
    sc = instance_confidence(lab, np.stack([good, s1, s2]))
    assert sc.ids.tolist() == [3, 9]
    np.testing.assert_allclose(sc.confidence, [(1 + 1 + 0) / 3, (1 + 0.5 + 1) / 3])
    assert np.isnan(sc.mean_std).all()  # boolean samples carry no spread


def test_grown_instance_hand_worked():
    lab = np.zeros((5, 5), int)
    lab[1:3, 1:3] = 1  # 4 px
    grown = np.zeros((5, 5), bool)
    grown[1:4, 1:3] = True  # 6 px, covers the instance: IoU 4/6
    sc = instance_confidence(lab, grown[None])
    np.testing.assert_allclose(sc.confidence, [4 / 6])


def test_score_falls_monotonically_as_samples_disagree():
    lab = _disc_labels()
    sdf = mask_to_sdf(lab)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(6,) + lab.shape).astype(np.float32)
    means = []
    for sigma in (0.0, 0.2, 0.5, 1.0, 2.0):
        sc = instance_confidence(lab, sdf[None] + sigma * noise)
        means.append(sc.confidence.mean())
        assert ((sc.confidence >= 0) & (sc.confidence <= 1)).all()
    assert means[0] == 1.0
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), means


def test_score_falls_with_number_of_disagreeing_samples():
    lab = _disc_labels()
    good = lab > 0
    bad = np.zeros_like(good)
    bad[2:10, 2:10] = True  # a wrong shape near instance 1, nothing elsewhere
    prev = 1.1
    for n_bad in range(5):
        samples = np.stack([good] * (4 - n_bad) + [bad] * n_bad)
        c = instance_confidence(lab, samples).confidence
        assert c.max() < prev or n_bad == 0
        prev = c.max()
        np.testing.assert_allclose(c[1:], (4 - n_bad) / 4)


def test_touching_instances_exclusive_vs_plain():
    lab = np.zeros((3, 6), int)
    lab[:, 0:3] = 1
    lab[:, 3:6] = 2  # two touching instances that a thresholded sample draws as one blob
    blob = np.ones((3, 6), bool)
    assert instance_confidence(lab, blob[None]).confidence.tolist() == [1.0, 1.0]
    np.testing.assert_allclose(instance_confidence(lab, blob[None], exclusive=False).confidence, [0.5, 0.5])


def test_non_consecutive_and_huge_ids_and_empty():
    lab = np.zeros((4, 4), np.uint32)
    lab[0, 0] = 7
    lab[3, 3] = 4_000_000_000
    sc = instance_confidence(lab, (lab > 0)[None])
    assert sc.ids.tolist() == [7, 4_000_000_000]
    np.testing.assert_array_equal(sc.confidence, 1.0)
    empty = instance_confidence(np.zeros((4, 4), int), np.ones((2, 4, 4)))
    assert len(empty) == 0 and empty.to_rows() == []


def test_std_argument_mean_inside_instance():
    lab = np.zeros((2, 4), int)
    lab[:, :2] = 1
    lab[:, 2:] = 2
    std = np.array([[0.0, 1.0, 2.0, 2.0], [1.0, 2.0, 4.0, 0.0]])
    sc = instance_confidence(lab, np.full((1, 2, 4), -1.0), std=std)
    np.testing.assert_allclose(sc.mean_std, [1.0, 2.0])
    rows = sc.to_rows()
    assert rows[0] == {"id": 1, "confidence": 1.0, "mean_std": 1.0, "area": 4}


def test_connectivity_splits_diagonal():
    lab = np.zeros((2, 2), int)
    lab[0, 0] = lab[1, 1] = 1  # one (8-connected) instance
    m = (lab > 0)[None]
    assert instance_confidence(lab, m, connectivity=2).confidence.tolist() == [1.0]
    assert instance_confidence(lab, m, connectivity=1).confidence.tolist() == [0.5]


def test_best_match_iou_two_views():
    a = np.array([[1, 1, 0, 2, 2, 0]])
    b = np.array([[4, 4, 4, 0, 6, 0]])
    np.testing.assert_allclose(best_match_iou(a, b), [2 / 3, 0.5])
    np.testing.assert_allclose(best_match_iou(b, a), [2 / 3, 0.5])


def test_bad_inputs():
    lab = np.zeros((3, 3), int)
    with pytest.raises(ValueError, match="sample_sdfs"):
        instance_confidence(lab, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="integer"):
        instance_confidence(lab.astype(float), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="connectivity"):
        instance_confidence(lab, np.zeros((2, 3, 3)), connectivity=3)


def test_adaptive_threshold_hand_worked():
    # mean 0.5, population std 0.1 -> 0.6
    assert adaptive_threshold(np.array([0.4, 0.6])) == pytest.approx(0.6)
    # mean 0.9, std 0.1 -> 1.0, capped at 0.9
    assert adaptive_threshold(np.array([0.8, 1.0])) == pytest.approx(0.9)
    assert adaptive_threshold(np.array([0.8, 1.0]), cap=0.95) == pytest.approx(0.95)
    assert adaptive_threshold(np.array([0.3, 0.3, 0.3])) == pytest.approx(0.3)
    assert adaptive_threshold(np.array([])) == 0.9


def _scores(conf):
    conf = np.asarray(conf, float)
    ids = np.arange(1, conf.size + 1)
    return InstanceScores(ids, conf, np.full(conf.size, np.nan), np.ones(conf.size, np.int64))


def test_filter_instances_fixed_and_adaptive():
    lab = np.array([[1, 2, 0], [3, 4, 4]], np.uint16)
    sc = _scores([0.2, 0.4, 0.6, 0.8])  # mean 0.5, std sqrt(0.05) = 0.2236 -> delta 0.7236
    out = filter_instances(lab, sc, 0.4)
    assert out.dtype == np.uint16
    assert out.tolist() == [[0, 2, 0], [3, 4, 4]]
    assert filter_instances(lab, sc, "adaptive").tolist() == [[0, 0, 0], [0, 4, 4]]
    assert lab.tolist() == [[1, 2, 0], [3, 4, 4]]  # input untouched


def test_parse_min_confidence():
    assert parse_min_confidence("adaptive") == "adaptive"
    assert parse_min_confidence("0.25") == 0.25
    assert parse_min_confidence(None) is None
    for bad in ("1.5", "high", -0.1):
        with pytest.raises(ValueError, match="min-confidence"):
            parse_min_confidence(bad)
