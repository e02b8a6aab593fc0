"""H-EMD: initial state and padding on hand-made trees, and a synthetic 2D+time sequence."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.solvers import metrics
from segflow.solvers.baselines import threshold_instances, watershed_instances
from segflow.solvers.forest import build_forest
from segflow.solvers.hemd import HEMDConfig, available, hemd, initial_state, pad, select_sequence

# two trees: a single path (x=0..2, peak at 0.9) and a branching tree (x=4..8, peaks at 0.9 and 0.8)
ROW = np.array([[0.6, 0.9, 0.6, 0.2, 0.6, 0.9, 0.6, 0.8, 0.6]])


def test_initial_state_selects_roots_of_single_path_trees_only():
    f = build_forest(ROW, collapse=False)
    sel = initial_state(f)
    single_root = f.node_map[0, 0]
    assert np.flatnonzero(sel).tolist() == [single_root]
    avail = available(f, sel)
    assert not avail[f.root == single_root].any()          # its whole path is settled
    assert avail[f.root == f.node_map[0, 4]].all()          # the branching tree is untouched


def test_padding_adds_the_roots_of_what_is_left():
    f = build_forest(ROW)                                   # collapsed: roots 0, 1; children 2 (x=5), 3 (x=7)
    assert f.parent.tolist() == [-1, -1, 1, 1]
    assert np.flatnonzero(pad(f, initial_state(f))).tolist() == [0, 1]
    sel = np.zeros(4, bool)
    sel[2] = True                                           # one child chosen: its sibling is what remains
    assert np.flatnonzero(pad(f, sel)).tolist() == [0, 2, 3]


def _disk_sequence():
    """Deterministic 2D+time sequence: moving disks, a touching big/small pair and one division.

    Probability = 0.55 + 0.45 (1 - d / r) inside each disk, 0.05 outside, and a ridge on pixels where two
    labels meet: 0.3 (cells apart at 0.5) except in frame 2, where the big/small pair's ridge is 0.6, so
    the 0.5 threshold merges them while frames 1 and 3 show them apart. One bilobed (dumbbell) cell has a
    single probability ridge along its axis but two distance-map peaks, the case where watershed splits.
    """
    size, frames = 72, 5
    yy, xx = np.mgrid[:size, :size]
    probs, gts = [], []
    for t in range(frames):
        cells = [((20 + t, 22), 12.0), ((20 + t, 37 + t * 0.5), 6.5),        # big/small touching pair
                 ((55, 14 + 2 * t), 7.0), ((12, 58 - t), 6.0)]              # free movers
        if t < 2:
            cells.append(((52, 50), 8.0))                                    # mother cell
        else:
            s = 5 + 2 * (t - 2)
            cells += [((52, 50 - s), 6.0), ((52, 50 + s), 6.0)]             # daughters moving apart
        lab = np.zeros((size, size), np.int64)
        dist = np.full((size, size), np.inf)
        prob = np.full((size, size), 0.05)
        for i, ((cy, cx), r) in enumerate(cells, start=1):
            d = np.hypot(yy - cy, xx - cx)
            inside = (d < r) & (d < dist)
            lab[inside], dist[inside] = i, d[inside]
            prob[inside] = 0.55 + 0.45 * (1 - d[inside] / r)
        # dumbbell: distance d to the segment between two lobe centres, kept where it is inside a lobe
        ax = np.clip((xx - 50 - 0.5 * t) / 12.0, 0, 1)
        d = np.hypot(yy - 36, xx - (50 + 0.5 * t + 12 * ax))
        lobes = np.minimum(np.hypot(yy - 36, xx - 50 - 0.5 * t), np.hypot(yy - 36, xx - 62 - 0.5 * t)) < 6.5
        lab[lobes] = len(cells) + 1
        prob[lobes] = 0.55 + 0.45 * np.clip(1 - d[lobes] / 6.5, 0, 1)
        ridge = np.zeros_like(lab, bool)
        for axis in (0, 1):
            a, b = lab, np.roll(lab, 1, axis)
            meet = (a != b) & (a > 0) & (b > 0)
            ridge |= meet | np.roll(meet, -1, axis)
        pair = ridge & np.isin(lab, [1, 2])
        prob[ridge] = 0.3
        if t == 2:
            prob[pair] = 0.6
        probs.append(prob)
        gts.append(lab)
    return np.stack(probs), np.stack(gts)


def test_synthetic_sequence_hemd_separates_the_merged_pair_and_beats_baselines():
    probs, gts = _disk_sequence()
    res = hemd(probs)
    assert res.n_fallbacks == 0 and res.iterations >= 1
    # frame 2: the 0.5 threshold merges cells 1 and 2, H-EMD keeps them apart using frames 1 and 3
    merged = threshold_instances(probs[2])
    assert np.unique(merged[np.isin(gts[2], [1, 2])]).size == 1
    sep = res.labels[2]
    assert set(np.unique(sep[gts[2] == 1])) != set(np.unique(sep[gts[2] == 2]))
    scores = {}
    for name, labs in {"hemd": list(res.labels),
                       "threshold": [threshold_instances(p) for p in probs],
                       "watershed": [watershed_instances(p) for p in probs]}.items():
        m = metrics.evaluate(labs, list(gts))["mean"]
        scores[name] = (m["aji"], m["object_f1"])
    for base in ("threshold", "watershed"):
        assert scores["hemd"][0] > scores[base][0], scores
        assert scores["hemd"][1] > scores[base][1], scores


def test_single_frame_reduces_to_roots_and_no_change_stops_early():
    probs, _ = _disk_sequence()
    res = hemd(probs[2:3], fill=False)
    f = res.forests[0]
    assert res.selected[0].tolist() == f.roots.tolist() and res.iterations == 0


@pytest.mark.parametrize("solver", ["highs", "pulp"])
def test_solvers_agree_on_the_sequence(solver):
    probs, _ = _disk_sequence()
    forests = [build_forest(p) for p in probs]
    base, _, _ = select_sequence(forests, HEMDConfig())
    other, _, _ = select_sequence(forests, HEMDConfig(solver=solver))
    assert all((a == b).all() for a, b in zip(base, other, strict=True))


def test_bad_input_shape():
    with pytest.raises(ValueError, match="3-D"):
        hemd(np.zeros((4, 4)))
