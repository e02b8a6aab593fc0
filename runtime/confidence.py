"""Per-instance confidence from the agreement of K samples (COIN-style scores) — numpy only.

A generative model draws K SDF samples per image. An instance is *confident* when every sample draws it the same:
for each sample ``k`` we threshold the SDF (``sdf_k <= threshold``), label the connected components, and take the
IoU between the instance and its best-matching component; the confidence is the mean of these K IoUs. It is 1 for
an instance identical in all samples and falls as the samples disagree (shrink, grow, split, vanish).

Touching instances: a threshold does not resolve the SDF's zero ridge between two touching nuclei, so the samples'
masks often merge them into one blob although the instance solver (watershed, H-EMD) split them. By default
(``exclusive=True``) a component is therefore clipped to the pixels that are not in *another* instance of
``labels`` before the IoU is taken: a sample is not blamed for a split the solver made, only for shape
disagreements. ``exclusive=False`` gives the plain IoU.

Everything is vectorised: one ``bincount`` over (instance, component) pair codes per sample, no per-instance scans
of the image. COIN's adaptive per-image threshold ``delta_k = min(mean + std, cap)`` is :func:`adaptive_threshold`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = [
    "InstanceScores",
    "adaptive_threshold",
    "best_match_iou",
    "filter_instances",
    "filter_segmentation",
    "instance_confidence",
    "parse_min_confidence",
]

# dense bincount over pair codes when the table has at most this many cells per pixel considered, else np.unique
_DENSE_CELLS_PER_PIXEL = 4


@dataclass(frozen=True)
class InstanceScores:
    """Per-instance scores, one entry per instance id of the label image (sorted ascending).

    Attributes
    ----------
    ids : ndarray of int64, shape (N,)
        Instance ids present in the label image.
    confidence : ndarray of float64, shape (N,)
        Mean over the K samples of the best-matching component's IoU, in [0, 1].
    mean_std : ndarray of float64, shape (N,)
        Mean per-pixel standard deviation of the K samples inside the instance (NaN when no spread was given).
    area : ndarray of int64, shape (N,)
        Instance area in pixels.
    """

    ids: NDArray[np.int64]
    confidence: NDArray[np.float64]
    mean_std: NDArray[np.float64]
    area: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ids.size)

    def to_rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per instance: ``{"id", "confidence", "mean_std", "area"}`` (NaN -> None)."""
        rows = []
        for i, c, s, a in zip(self.ids, self.confidence, self.mean_std, self.area, strict=True):
            rows.append({"id": int(i), "confidence": round(float(c), 6),
                         "mean_std": None if np.isnan(s) else round(float(s), 6), "area": int(a)})
        return rows


def _check_labels(labels: NDArray, name: str = "labels") -> NDArray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label image, got shape {lab.shape}")
    if lab.dtype == bool:
        return lab.astype(np.int64)
    if lab.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer labels, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels")
    return lab


def _compact(labels: NDArray) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Map labels to 0..N (0 = background) without a per-label scan; return (ids, compact image)."""
    lab = labels.astype(np.int64, copy=False)
    top = int(lab.max()) if lab.size else 0
    if top <= 4 * lab.size + 1024:
        present = np.bincount(lab.ravel(), minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present).astype(np.int64)
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[lab]
    uniq, inv = np.unique(lab, return_inverse=True)
    if uniq[0] == 0:
        return uniq[1:].astype(np.int64), inv.reshape(lab.shape).astype(np.int64)
    return uniq.astype(np.int64), inv.reshape(lab.shape).astype(np.int64) + 1


def _pair_counts(a: NDArray[np.int64], b: NDArray[np.int64], na: int, nb: int):
    """Sparse contingency table of two flat compact label arrays: (a_idx, b_idx, counts), counts > 0."""
    codes = a * (nb + 1) + b
    ncell = (na + 1) * (nb + 1)
    if ncell <= _DENSE_CELLS_PER_PIXEL * codes.size + 4096:
        counts = np.bincount(codes, minlength=ncell)
        nz = np.flatnonzero(counts)
        return nz // (nb + 1), nz % (nb + 1), counts[nz]
    uniq, counts = np.unique(codes, return_counts=True)
    return uniq // (nb + 1), uniq % (nb + 1), counts


def _best_iou_compact(a: NDArray[np.int64], area_a: NDArray[np.int64], b: NDArray, nb: int,
                      exclusive: bool) -> NDArray[np.float64]:
    """Best IoU of each instance 1..na of ``a`` against the instances of ``b`` (0 where nothing overlaps).

    ``a`` and ``b`` are flat compact label arrays; ``area_a`` has na + 1 entries (index 0 = background).
    Only the pixels inside some instance of ``b`` are visited.
    """
    na = area_a.size - 1
    inside = np.flatnonzero(b)
    av, bv = a[inside], b[inside].astype(np.int64, copy=False)
    area_b = np.bincount(bv, minlength=nb + 1)
    on_fg = av > 0
    bg_b = area_b - np.bincount(bv[on_fg], minlength=nb + 1)  # pixels of each b-instance on a's background
    av, bv = av[on_fg], bv[on_fg]
    # renumber the b-instances that touch an a-instance (noise specks on the background drop out)
    touching = np.flatnonzero(np.bincount(bv, minlength=nb + 1))
    lut = np.zeros(nb + 1, np.int64)
    lut[touching] = np.arange(touching.size)
    ia, ibc, inter = _pair_counts(av, lut[bv], na, max(touching.size - 1, 0))
    ib = touching[ibc]
    if exclusive:  # b-instance clipped to (this a-instance + a's background)
        union = area_a[ia] + bg_b[ib]
    else:
        union = area_a[ia] + area_b[ib] - inter
    iou = inter / np.maximum(union, 1)
    best = np.zeros(na + 1, np.float64)
    if iou.size:
        order = np.lexsort((iou, ia))  # by instance, then IoU ascending: the last per instance is the best
        last = np.r_[ia[order][1:] != ia[order][:-1], True]
        best[ia[order][last]] = iou[order][last]
    return best[1:]


def best_match_iou(labels: NDArray, other: NDArray, *, exclusive: bool = False) -> NDArray[np.float64]:
    """IoU of each instance of ``labels`` with its best-matching instance of ``other`` (two-view consistency).

    Parameters
    ----------
    labels, other : ndarray of int, shape (H, W)
        Two instance label images of the same scene (0 = background), e.g. a model's prediction and refined seeds.
    exclusive : bool
        Clip each instance of ``other`` to the pixels not in another instance of ``labels`` (see module notes).

    Returns
    -------
    ndarray of float64, shape (N,)
        One IoU per id of ``labels`` in ascending id order; 0 where no instance of ``other`` overlaps.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2]]); b = np.array([[5, 0, 0, 7]])
    >>> best_match_iou(a, b).tolist()
    [0.5, 1.0]
    """
    lab, oth = _check_labels(labels), _check_labels(other, "other")
    if lab.shape != oth.shape:
        raise ValueError(f"labels {lab.shape} and other {oth.shape} must have the same shape")
    ids, a = _compact(lab)
    ids_b, b = _compact(oth)
    area_a = np.bincount(a.ravel(), minlength=ids.size + 1)
    return _best_iou_compact(a.ravel(), area_a, b.ravel(), ids_b.size, exclusive)


def instance_confidence(labels: NDArray, sample_sdfs: NDArray, *, threshold: float = 0.0,
                        std: NDArray | None = None, exclusive: bool = True,
                        connectivity: int = 1) -> InstanceScores:
    """Score each instance by the agreement of K sampled SDFs.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels (0 = background), e.g. from the mean SDF.
    sample_sdfs : ndarray of float, shape (K, H, W) or (H, W)
        The K sampled SDFs (mask = ``sdf <= threshold``); boolean masks are accepted as they are.
    threshold : float
        SDF threshold of the model card.
    std : ndarray of float, shape (H, W), optional
        Per-pixel spread; computed from ``sample_sdfs`` (population std over K) when omitted.
    exclusive : bool
        Clip sample components to this instance plus background (see module notes). False = plain IoU.
    connectivity : int
        1 (4-neighbours) or 2 (8-neighbours) for the samples' connected components.

    Returns
    -------
    InstanceScores

    Examples
    --------
    >>> lab = np.zeros((4, 6), int); lab[1:3, 1:3] = 1; lab[1:3, 4:6] = 2
    >>> s = np.where(lab > 0, -1.0, 1.0)[None].repeat(2, axis=0)
    >>> s[1, 1:3, 5] = 1.0  # sample 2 draws instance 2 at half its width
    >>> instance_confidence(lab, s).confidence.tolist()
    [1.0, 0.75]
    """
    lab = _check_labels(labels)
    sdfs = np.asarray(sample_sdfs)
    if sdfs.ndim == 2:
        sdfs = sdfs[None]
    if sdfs.ndim != 3 or sdfs.shape[1:] != lab.shape:
        raise ValueError(f"sample_sdfs must have shape (K, {lab.shape[0]}, {lab.shape[1]}), got {sdfs.shape}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity}")
    ids, a = _compact(lab)
    n = ids.size
    a = a.ravel()
    area_a = np.bincount(a, minlength=n + 1)
    area = area_a[1:].astype(np.int64)
    structure = ndi.generate_binary_structure(2, connectivity)
    total = np.zeros(n, np.float64)
    for sdf in sdfs:
        mask = sdf if sdf.dtype == bool else sdf <= threshold
        comp, nc = ndi.label(mask, structure=structure)
        total += _best_iou_compact(a, area_a, comp.ravel(), nc, exclusive)
    confidence = total / max(len(sdfs), 1)
    if std is None and sdfs.dtype != bool:
        std = sdfs.std(axis=0, dtype=np.float32)
    if std is not None:
        spread = np.asarray(std)
        if spread.shape != lab.shape:
            raise ValueError(f"std must have shape {lab.shape}, got {spread.shape}")
        sums = np.bincount(a, weights=spread.ravel(), minlength=n + 1)[1:]
        mean_std = sums / np.maximum(area, 1)
    else:
        mean_std = np.full(n, np.nan)
    return InstanceScores(ids=ids, confidence=confidence, mean_std=mean_std, area=area)


def adaptive_threshold(scores: InstanceScores | NDArray, cap: float = 0.9) -> float:
    """COIN's per-image threshold ``delta_k = min(mean + std, cap)`` of the instance confidences.

    The std is the population std (ddof = 0). An image with no instances gets ``cap``.

    Examples
    --------
    >>> round(adaptive_threshold(np.array([0.2, 0.4, 0.6])), 6)  # 0.4 + sqrt(0.08 / 3)
    0.563299
    >>> adaptive_threshold(np.array([0.8, 1.0]))
    0.9
    """
    c = np.asarray(scores.confidence if isinstance(scores, InstanceScores) else scores, np.float64)
    if c.size == 0:
        return float(cap)
    return float(min(c.mean() + c.std(), cap))


def parse_min_confidence(value: str | float | None) -> float | str | None:
    """Parse a ``--min-confidence`` value: a float in [0, 1], ``"adaptive"``, or None (keep everything)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == "adaptive":
            return "adaptive"
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"min-confidence must be a number in [0, 1] or 'adaptive', got {value!r}") from None
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"min-confidence must be in [0, 1], got {value}")
    return float(value)


def filter_instances(labels: NDArray, scores: InstanceScores, threshold: float | str) -> NDArray:
    """Drop (set to 0) the instances whose confidence is below ``threshold`` (a float or ``"adaptive"``).

    Ids are kept as they are (no relabelling), so they still match ``scores``' rows; the dtype is kept.

    Examples
    --------
    >>> lab = np.array([[1, 0, 2]])
    >>> sc = InstanceScores(np.array([1, 2]), np.array([0.9, 0.3]), np.full(2, np.nan), np.array([1, 1]))
    >>> filter_instances(lab, sc, 0.5).tolist()
    [[1, 0, 0]]
    """
    lab = _check_labels(labels)
    thr = parse_min_confidence(threshold)
    if thr is None:
        return np.array(labels, copy=True)
    if thr == "adaptive":
        thr = adaptive_threshold(scores)
    drop = scores.ids[scores.confidence < thr]
    out = np.array(labels, copy=True)
    if drop.size:
        out[np.isin(lab, drop)] = 0
    return out


def filter_segmentation(seg: Any, threshold: float | str | None) -> tuple[Any, float | None]:
    """Drop low-confidence instances from a runtime ``Segmentation`` (``runtime segment --min-confidence``).

    Uses the ``confidence`` of each row in ``seg.instances``; returns ``(new_seg, threshold_used)`` with the
    dropped instances removed from ``labels``, ``mask`` and ``instances`` (ids unchanged). ``threshold`` None
    returns ``seg`` unchanged; ``"adaptive"`` uses :func:`adaptive_threshold` of this image's scores.
    """
    thr = parse_min_confidence(threshold)
    if thr is None:
        return seg, None
    rows = list(seg.instances)
    missing = [r["id"] for r in rows if "confidence" not in r]
    if missing:
        raise ValueError(f"instances {missing[:5]} have no confidence score: cannot filter by confidence")
    conf = np.array([r["confidence"] for r in rows], np.float64)
    if thr == "adaptive":
        thr = adaptive_threshold(conf)
    scores = InstanceScores(ids=np.array([r["id"] for r in rows], np.int64), confidence=conf,
                            mean_std=np.full(len(rows), np.nan), area=np.zeros(len(rows), np.int64))
    labels = filter_instances(seg.labels, scores, thr)
    kept = tuple(r for r, c in zip(rows, conf, strict=True) if c >= thr)
    mask = np.asarray(seg.mask) & ~((np.asarray(seg.labels) > 0) & (labels == 0))
    return dataclasses.replace(seg, labels=labels, mask=mask, instances=kept), float(thr)
