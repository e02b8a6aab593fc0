"""Segmentation metrics on label images (numpy in, numbers out). Labels are relabelled to 1..N first.

Conventions: when prediction and ground truth are both empty, every overlap metric is 1.0 (perfect
agreement); when exactly one is empty it is 0.0. The Cell Tracking Challenge measures SEG and DET are defined
over reference objects only, so they are ``nan`` for an empty ground truth (and ignored by :func:`evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from ._validate import check_label_image, check_same_shape

DET_WEIGHTS = {"split": 5.0, "miss": 10.0, "false_positive": 1.0}


def relabel(label_image: NDArray) -> NDArray[np.int64]:
    """Labels renumbered 1..N in increasing order of the old labels (0 stays background).

    Examples
    --------
    >>> relabel(np.array([[0, 7, 7, 3]])).tolist()
    [[0, 2, 2, 1]]
    """
    lab = check_label_image(label_image, "label_image", ndim=np.ndim(label_image))
    vals, inv = np.unique(lab, return_inverse=True)
    out = inv.reshape(lab.shape).astype(np.int64)
    return out if vals.size and vals[0] == 0 else out + 1


@dataclass(frozen=True)
class _Pairs:
    """Overlapping (gt, pred) pairs with intersections, plus all object areas (index 0 = label 1)."""

    g: NDArray[np.int64]
    p: NDArray[np.int64]
    inter: NDArray[np.int64]
    area_g: NDArray[np.int64]
    area_p: NDArray[np.int64]

    @property
    def iou(self) -> NDArray[np.float64]:
        return self.inter / (self.area_g[self.g] + self.area_p[self.p] - self.inter)


def _pairs(pred: NDArray, gt: NDArray) -> _Pairs:
    check_same_shape(pred, gt, "pred", "gt")
    p, g = relabel(pred).ravel(), relabel(gt).ravel()
    ng, np_ = int(g.max(initial=0)), int(p.max(initial=0))
    both = (g > 0) & (p > 0)
    m = sparse.coo_matrix((np.ones(int(both.sum()), np.int64), (g[both] - 1, p[both] - 1)),
                          shape=(ng, np_)).tocsr().tocoo()   # csr sums duplicate pixels
    return _Pairs(m.row.astype(np.int64), m.col.astype(np.int64), m.data.astype(np.int64),
                  np.bincount(g, minlength=ng + 1)[1:], np.bincount(p, minlength=np_ + 1)[1:])


def dice(pred: NDArray, gt: NDArray) -> float:
    """Foreground Dice ``2|P & G| / (|P| + |G|)`` (1.0 when both are empty)."""
    check_same_shape(pred, gt, "pred", "gt")
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    total = p.sum() + g.sum()
    return 1.0 if total == 0 else float(2 * (p & g).sum() / total)


def iou(pred: NDArray, gt: NDArray) -> float:
    """Foreground IoU ``|P & G| / |P | G|`` (1.0 when both are empty)."""
    check_same_shape(pred, gt, "pred", "gt")
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    union = (p | g).sum()
    return 1.0 if union == 0 else float((p & g).sum() / union)


def pooled_dice_iou(preds: Sequence[NDArray], gts: Sequence[NDArray]) -> tuple[float, float]:
    """Dice and IoU with intersections and sizes summed over all images first (FlowSDF's reporting)."""
    inter = size = union = 0
    for pr, gt in zip(preds, gts, strict=True):
        check_same_shape(pr, gt, "pred", "gt")
        p, g = np.asarray(pr) != 0, np.asarray(gt) != 0
        inter += int((p & g).sum())
        size += int(p.sum() + g.sum())
        union += int((p | g).sum())
    return (1.0 if size == 0 else 2 * inter / size), (1.0 if union == 0 else inter / union)


def _matched_05(pr: _Pairs) -> NDArray[np.bool_]:
    return pr.iou > 0.5  # IoU > 0.5 makes the matching one-to-one


def object_f1(pred: NDArray, gt: NDArray) -> float:
    """Object F1 with one-to-one matching at IoU > 0.5: ``2 TP / (2 TP + FP + FN)``."""
    pr = _pairs(pred, gt)
    n_g, n_p = pr.area_g.size, pr.area_p.size
    if n_g + n_p == 0:
        return 1.0
    tp = int(_matched_05(pr).sum())
    return 2 * tp / (n_g + n_p)


class PanopticQuality(NamedTuple):
    """Detection quality, segmentation quality and their product."""

    dq: float
    sq: float
    pq: float


def pq(pred: NDArray, gt: NDArray) -> PanopticQuality:
    """Panoptic quality: DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the TP, PQ = DQ * SQ (IoU > 0.5)."""
    pr = _pairs(pred, gt)
    n_g, n_p = pr.area_g.size, pr.area_p.size
    if n_g + n_p == 0:
        return PanopticQuality(1.0, 1.0, 1.0)
    m = _matched_05(pr)
    tp = int(m.sum())
    dq = tp / (0.5 * (n_g + n_p))
    sq = float(pr.iou[m].mean()) if tp else 0.0
    return PanopticQuality(dq, sq, dq * sq)


def aji(pred: NDArray, gt: NDArray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017): each GT object with its best-IoU prediction; unused
    predictions are added to the union."""
    pr = _pairs(pred, gt)
    if pr.area_g.size + pr.area_p.size == 0:
        return 1.0
    order = np.lexsort((pr.p, -pr.iou, pr.g))          # per GT: highest IoU first, ties by lower label
    first = order[np.r_[True, pr.g[order][1:] != pr.g[order][:-1]]] if order.size else order
    c = int(pr.inter[first].sum())
    u = int((pr.area_g[pr.g[first]] + pr.area_p[pr.p[first]] - pr.inter[first]).sum())
    unmatched_g = np.ones(pr.area_g.size, bool)
    unmatched_g[pr.g[first]] = False
    used_p = np.zeros(pr.area_p.size, bool)
    used_p[pr.p[first]] = True
    u += int(pr.area_g[unmatched_g].sum() + pr.area_p[~used_p].sum())
    return c / u


def aji_plus(pred: NDArray, gt: NDArray) -> float:
    """AJI+ (Graham et al. 2019): like AJI but with a one-to-one maximum-IoU pairing, so no prediction is
    counted twice."""
    pr = _pairs(pred, gt)
    if pr.area_g.size + pr.area_p.size == 0:
        return 1.0
    c = u = 0
    used_g = np.zeros(pr.area_g.size, bool)
    used_p = np.zeros(pr.area_p.size, bool)
    if pr.g.size:
        gs, gi = np.unique(pr.g, return_inverse=True)
        ps, pi = np.unique(pr.p, return_inverse=True)
        w = np.zeros((gs.size, ps.size))
        w[gi, pi] = pr.iou
        rows, cols = linear_sum_assignment(w, maximize=True)
        keep = w[rows, cols] > 0
        lookup = {(a, b): k for k, (a, b) in enumerate(zip(gi.tolist(), pi.tolist(), strict=True))}
        k = np.array([lookup[(r, q)] for r, q in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True)],
                     np.int64)
        if k.size:
            c = int(pr.inter[k].sum())
            u = int((pr.area_g[pr.g[k]] + pr.area_p[pr.p[k]] - pr.inter[k]).sum())
            used_g[pr.g[k]] = True
            used_p[pr.p[k]] = True
    u += int(pr.area_g[~used_g].sum() + pr.area_p[~used_p].sum())
    return c / u


def _ctc_match(pr: _Pairs) -> NDArray[np.bool_]:
    return pr.inter > 0.5 * pr.area_g[pr.g]  # a prediction covering more than half of a reference object


def _seg_parts(pr: _Pairs) -> tuple[float, int]:
    m = _ctc_match(pr)
    return float(pr.iou[m].sum()), int(pr.area_g.size)


def _aogm_parts(pr: _Pairs) -> tuple[float, int]:
    m = _ctc_match(pr)
    n_g, n_p = pr.area_g.size, pr.area_p.size
    per_p = np.bincount(pr.p[m], minlength=n_p)
    misses = n_g - int(m.sum())
    splits = int(np.maximum(per_p - 1, 0).sum())
    fps = int((per_p == 0).sum())
    w = DET_WEIGHTS
    return w["split"] * splits + w["miss"] * misses + w["false_positive"] * fps, n_g


def ctc_seg(pred: NDArray, gt: NDArray) -> float:
    """Cell Tracking Challenge SEG: mean over reference objects of the Jaccard index with the prediction
    covering more than half of it (0 if none); ``nan`` for an empty reference."""
    total, n = _seg_parts(_pairs(pred, gt))
    return total / n if n else float("nan")


def ctc_det(pred: NDArray, gt: NDArray) -> float:
    """Cell Tracking Challenge DET: ``1 - min(AOGM-D, AOGM-D0) / AOGM-D0`` with weights 5 per split, 10 per
    missed object, 1 per false positive, and AOGM-D0 = 10 x the number of reference objects."""
    cost, n = _aogm_parts(_pairs(pred, gt))
    if n == 0:
        return float("nan")
    empty = DET_WEIGHTS["miss"] * n
    return 1.0 - min(cost, empty) / empty


PER_IMAGE = ("dice", "iou", "object_f1", "aji", "aji_plus", "dq", "sq", "pq", "ctc_seg", "ctc_det")


def image_metrics(pred: NDArray, gt: NDArray) -> dict[str, float]:
    """Every per-image metric of :data:`PER_IMAGE` for one pair of label images."""
    q = pq(pred, gt)
    return {"dice": dice(pred, gt), "iou": iou(pred, gt), "object_f1": object_f1(pred, gt),
            "aji": aji(pred, gt), "aji_plus": aji_plus(pred, gt), "dq": q.dq, "sq": q.sq, "pq": q.pq,
            "ctc_seg": ctc_seg(pred, gt), "ctc_det": ctc_det(pred, gt)}


def evaluate(pred_labels_list: Sequence[NDArray], gt_labels_list: Sequence[NDArray]) -> dict:
    """The metric table: per-image means, pooled Dice/IoU and pooled CTC SEG/DET, plus per-image rows.

    Returns
    -------
    dict
        ``{"n_images", "mean": {metric: per-image mean (nan ignored)}, "pooled": {"dice", "iou", "ctc_seg",
        "ctc_det"}, "per_image": [{metric: value}, ...]}``.
    """
    if len(pred_labels_list) != len(gt_labels_list):
        raise ValueError(f"got {len(pred_labels_list)} predictions for {len(gt_labels_list)} ground truths")
    rows, seg, det = [], [0.0, 0], [0.0, 0]
    for pr, gt in zip(pred_labels_list, gt_labels_list, strict=True):
        rows.append(image_metrics(pr, gt))
        pairs = _pairs(pr, gt)
        s, n = _seg_parts(pairs)
        c, _ = _aogm_parts(pairs)
        seg[0] += s
        seg[1] += n
        det[0] += c
    d, j = pooled_dice_iou(pred_labels_list, gt_labels_list)
    empty = DET_WEIGHTS["miss"] * seg[1]
    pooled = {"dice": d, "iou": j, "ctc_seg": seg[0] / seg[1] if seg[1] else float("nan"),
              "ctc_det": 1.0 - min(det[0], empty) / empty if seg[1] else float("nan")}
    mean = {}
    for k in PER_IMAGE:
        vals = np.array([r[k] for r in rows], np.float64)
        mean[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return {"n_images": len(rows), "mean": mean, "pooled": pooled, "per_image": rows}
