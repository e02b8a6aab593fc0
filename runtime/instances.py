"""From the mean SDF to instance labels and a per-instance table (the runtime's bridge to the solvers).

``instances_from_sdf`` delegates to :func:`segflow.solvers.instances_from_sdf` (H-EMD, watershed, threshold)
when the solvers provide it. Until then a local fallback serves ``watershed`` (markers = connected components
of ``sdf < threshold - 0.1``, i.e. at least 0.1·delta px inside, flooded over ``sdf`` within the mask; mask
components without a marker keep their own label) and ``threshold`` (connected components of the mask).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from segflow.errors import InputError
from segflow.imageio import label_dtype

__all__ = ["METHODS", "check_method", "instances_from_sdf", "instance_table"]

METHODS = ("hemd", "watershed", "threshold")
MARKER_MARGIN = 0.1


def _solver() -> Any:
    try:
        mod = importlib.import_module("segflow.solvers")
    except ImportError:
        return None
    return getattr(mod, "instances_from_sdf", None)


def check_method(method: str | None) -> str:
    """Validate an instance method; None picks ``hemd`` when the solvers provide it, else ``watershed``."""
    if method is None:
        return "hemd" if _solver() is not None else "watershed"
    if method not in METHODS:
        raise InputError(f"instance method {method!r} is unknown: choose one of {METHODS}.")
    if method == "hemd" and _solver() is None:
        raise InputError("instance method 'hemd' needs segflow.solvers.instances_from_sdf: choose watershed.")
    return method


def _relabel(labels: NDArray) -> NDArray:
    """Consecutive ids 1..N in the smallest label dtype."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels].astype(label_dtype(len(ids)))


def _fallback(mean_sdf: NDArray, method: str, threshold: float) -> NDArray:
    mask = mean_sdf <= threshold
    if method == "threshold":
        return ndi.label(mask)[0]
    from skimage.segmentation import watershed

    markers, n = ndi.label(mean_sdf < threshold - MARKER_MARGIN)
    lab = watershed(mean_sdf, markers, mask=mask) if n else np.zeros(mask.shape, np.int64)
    rest, m = ndi.label(mask & (lab == 0))
    return np.where(rest > 0, rest + n, lab)


def instances_from_sdf(mean_sdf: NDArray, *, method: str = "watershed", threshold: float = 0.0) -> NDArray:
    """Instance labels (uint16, or uint32 beyond 65534 instances; 0 = background) from a mean SDF."""
    sdf = np.asarray(mean_sdf, np.float32)
    solver = _solver()
    if solver is not None:
        labels = np.asarray(solver(sdf, method=method, threshold=threshold))
    elif method == "hemd":
        raise InputError("instance method 'hemd' needs segflow.solvers.instances_from_sdf: choose watershed.")
    else:
        labels = _fallback(sdf, method, threshold)
    return _relabel(labels.astype(np.int64))


def _confidence(labels: NDArray, sample_sdfs: NDArray, std: NDArray, threshold: float) -> dict[int, dict]:
    try:
        mod = importlib.import_module("segflow.runtime.confidence")
    except ModuleNotFoundError:
        return {}
    scores = mod.instance_confidence(labels, sample_sdfs, threshold=threshold, std=std)
    return {int(i): {"confidence": float(c)} for i, c in zip(scores.ids, scores.confidence, strict=True)}


def instance_table(labels: NDArray, mean_sdf: NDArray, std: NDArray, sample_sdfs: NDArray, *,
                   threshold: float = 0.0) -> list[dict[str, Any]]:
    """One row per instance: id, area, centroid (y, x), bbox (y0, x0, y1, x1), mean_sdf, mean_std, confidence."""
    lab = np.asarray(labels).astype(np.int64)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    present = idx[area > 0]
    cents = ndi.center_of_mass(np.ones_like(lab), lab, present)
    m_sdf = ndi.mean(mean_sdf, lab, present)
    m_std = ndi.mean(std, lab, present)
    boxes = ndi.find_objects(lab)
    conf = _confidence(lab, sample_sdfs, std, threshold)
    rows = []
    for j, i in enumerate(present):
        b = boxes[i - 1]
        row = {"id": int(i), "area": int(area[i - 1]), "centroid": [round(float(c), 2) for c in cents[j]],
               "bbox": [b[0].start, b[1].start, b[0].stop, b[1].stop], "mean_sdf": float(m_sdf[j]),
               "mean_std": float(m_std[j])}
        row.update(conf.get(int(i), {}))
        rows.append(row)
    return rows
