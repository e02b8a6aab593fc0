"""AJI and IoU split by adjacency of the ground-truth cells (the evaluation COIN reports).

Definitions
-----------
*Adjacent cell*: a ground-truth cell that some other ground-truth cell comes within ``distance`` pixels of
(Euclidean, default 2): the cell dilated by a disk of radius ``distance`` overlaps another cell. Touching cells
are always adjacent; isolated cells are *non-adjacent*.

*Split*: the ground-truth cells are partitioned into the two groups. Each predicted instance joins the group of the
ground-truth cell it overlaps most (ties: the smaller id); a prediction that overlaps no cell (a false positive on
background) belongs to neither and is charged to *both* groups. Each group's AJI is then the ordinary AJI of the
group's cells against the group's predictions, and its IoU the pixel IoU of their unions. The two groups'
AJIs therefore partition the errors of the overall AJI except for background false positives, which count twice.

The AJI itself comes from :mod:`segflow.solvers.metrics` when that module provides ``aji``; otherwise from the
small reference implementation here (Kumar et al. 2017: each ground-truth cell is matched to the prediction of
highest IoU; every prediction never matched adds its area to the union).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = ["AdjacencySplit", "adjacent_cells", "adjacency_split", "mean_split"]


def _labels(a: NDArray, name: str) -> NDArray[np.int64]:
    lab = np.asarray(a)
    if lab.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label image, got shape {lab.shape}")
    if lab.dtype == bool:
        return lab.astype(np.int64)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer labels, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels")
    return lab.astype(np.int64)


def _disk(radius: int) -> NDArray[np.bool_]:
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy * yy + xx * xx <= r * r


def adjacent_cells(label_image: NDArray, *, distance: int = 2) -> NDArray[np.int64]:
    """Ids of the cells that another cell comes within ``distance`` px of (sorted).

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 0, 0, 0, 3],
    ...                 [0, 2, 0, 0, 0, 0, 0]])
    >>> adjacent_cells(lab).tolist()
    [1, 2]
    """
    lab = _labels(label_image, "label_image")
    if distance < 1:
        raise ValueError(f"distance must be >= 1, got {distance}")
    if not lab.any():
        return np.zeros(0, np.int64)
    fp = _disk(distance)
    big = int(lab.max()) + 1
    hi = ndi.maximum_filter(lab, footprint=fp, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(lab > 0, lab, big), footprint=fp, mode="constant", cval=big)
    near_other = (lab > 0) & ((hi > lab) | (lo < lab))
    return np.unique(lab[near_other])


def _compact(lab: NDArray[np.int64]) -> NDArray[np.int64]:
    """Flat labels renumbered 1..N in id order (0 stays 0)."""
    flat = lab.reshape(-1)
    ids = np.unique(flat[flat > 0])
    return np.where(flat > 0, np.searchsorted(ids, flat) + 1, 0)


def _reference_aji(gt: NDArray[np.int64], pred: NDArray[np.int64]) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017); 1.0 when both are empty, 0.0 when only one is."""
    g, p = _compact(gt), _compact(pred)
    ng, np_ = int(g.max()), int(p.max())
    if ng == 0 and np_ == 0:
        return 1.0
    if ng == 0 or np_ == 0:
        return 0.0
    area_g, area_p = np.bincount(g, minlength=ng + 1), np.bincount(p, minlength=np_ + 1)
    both = (g > 0) & (p > 0)
    codes, inter = np.unique(g[both] * (np_ + 1) + p[both], return_counts=True)
    gi, pj = codes // (np_ + 1), codes % (np_ + 1)
    iou = inter / (area_g[gi] + area_p[pj] - inter)
    best_iou = np.full(ng + 1, -1.0)
    np.maximum.at(best_iou, gi, iou)
    is_best = iou == best_iou[gi]
    first = np.unique(gi[is_best], return_index=True)[1]  # one winner per cell (the lowest prediction id)
    bg, bp, bi = gi[is_best][first], pj[is_best][first], inter[is_best][first]
    c = bi.sum()
    u = (area_g[bg] + area_p[bp] - bi).sum()
    unmatched_g = np.setdiff1d(np.arange(1, ng + 1), bg)
    u += area_g[unmatched_g].sum()
    unused = np.setdiff1d(np.arange(1, np_ + 1), bp)
    u += area_p[unused].sum()
    return float(c / u) if u else 1.0


def _aji(gt: NDArray, pred: NDArray) -> float:
    if not gt.any() and not pred.any():
        return 1.0
    try:
        metrics = importlib.import_module("segflow.solvers.metrics")
    except ModuleNotFoundError:
        metrics = None
    fn = getattr(metrics, "aji", None)
    return float(fn(pred, gt)) if fn is not None else _reference_aji(gt, pred)  # metrics: (pred, gt)


def _iou(a: NDArray, b: NDArray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


@dataclass(frozen=True)
class AdjacencySplit:
    """AJI and pixel IoU overall and for the adjacent and non-adjacent ground-truth cells of one image.

    A group without cells gets NaN (so means over images skip it).
    """

    aji: float
    iou: float
    aji_adjacent: float
    iou_adjacent: float
    aji_non_adjacent: float
    iou_non_adjacent: float
    n_adjacent: int
    n_non_adjacent: int

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON/tables."""
        return dict(self.__dict__)


def _assign(gt: NDArray[np.int64], pred: NDArray[np.int64]) -> tuple[NDArray, NDArray]:
    """For every prediction id: the ground-truth id it overlaps most (0 = none); returns (pred_ids, gt_of)."""
    both = (gt > 0) & (pred > 0)
    pred_ids = np.unique(pred[pred > 0])
    gt_of = np.zeros(pred_ids.size, np.int64)
    if both.any():
        codes, cnt = np.unique(pred[both] * (int(gt.max()) + 1) + gt[both], return_counts=True)
        pj, gi = codes // (int(gt.max()) + 1), codes % (int(gt.max()) + 1)
        order = np.lexsort((gi, -cnt, pj))  # per prediction: largest overlap first, then smallest gt id
        first = np.unique(pj[order], return_index=True)[1]
        gt_of[np.searchsorted(pred_ids, pj[order][first])] = gi[order][first]
    return pred_ids, gt_of


def adjacency_split(gt: NDArray, pred: NDArray, *, distance: int = 2) -> AdjacencySplit:
    """AJI and IoU for adjacent and non-adjacent ground-truth cells (see the module notes).

    Parameters
    ----------
    gt, pred : ndarray of int, shape (H, W)
        Ground-truth and predicted instance labels (0 = background).
    distance : int
        Adjacency distance in pixels (default 2).

    Examples
    --------
    >>> gt = np.array([[1, 2, 0, 0, 3]])
    >>> pred = np.array([[5, 5, 0, 0, 6]])  # one prediction merges the touching pair
    >>> s = adjacency_split(gt, pred)
    >>> s.aji_adjacent, s.aji_non_adjacent, s.iou_adjacent  # adjacent: C = 1 + 1, U = 2 + 2
    (0.5, 1.0, 1.0)
    """
    g, p = _labels(gt, "gt"), _labels(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt {g.shape} and pred {p.shape} must have the same shape")
    adj = adjacent_cells(g, distance=distance)
    cells = np.unique(g[g > 0])
    non = np.setdiff1d(cells, adj)
    pred_ids, gt_of = _assign(g, p)
    stray = pred_ids[gt_of == 0]
    out = {"aji": _aji(g, p), "iou": _iou(g > 0, p > 0)}
    for name, group in (("adjacent", adj), ("non_adjacent", non)):
        if group.size == 0:
            out[f"aji_{name}"] = out[f"iou_{name}"] = float("nan")
            continue
        g_sub = np.where(np.isin(g, group), g, 0)
        keep = np.concatenate([pred_ids[np.isin(gt_of, group)], stray])
        p_sub = np.where(np.isin(p, keep), p, 0)
        out[f"aji_{name}"] = _aji(g_sub, p_sub)
        out[f"iou_{name}"] = _iou(g_sub > 0, p_sub > 0)
    return AdjacencySplit(n_adjacent=int(adj.size), n_non_adjacent=int(non.size), **out)


def mean_split(splits: list[AdjacencySplit]) -> dict[str, float]:
    """Per-image means of every field (NaN groups skipped; counts summed)."""
    if not splits:
        raise ValueError("mean_split needs at least one AdjacencySplit")
    out: dict[str, float] = {}
    for key in splits[0].as_dict():
        vals = np.array([getattr(s, key) for s in splits], np.float64)
        if key.startswith("n_"):
            out[key] = int(vals.sum())
        else:
            out[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out
