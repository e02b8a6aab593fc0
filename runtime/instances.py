"""From the mean SDF to instance labels and a per-instance table (the runtime's bridge to the solvers).

Labels come from :func:`segflow.solvers.instances_from_sdf` (``hemd`` by default, ``watershed``,
``threshold``); each instance's row carries its geometry, mean SDF and spread, and the K-sample agreement
score of :func:`segflow.runtime.confidence.instance_confidence`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from segflow.runtime.confidence import instance_confidence

from segflow import solvers
from segflow.errors import InputError
from segflow.imageio import label_dtype

__all__ = ["METHODS", "check_method", "instances_from_sdf", "instance_table"]

METHODS = ("hemd", "watershed", "threshold")


def check_method(method: str | None) -> str:
    """Validate an instance method; None picks ``hemd``."""
    if method is None:
        return "hemd"
    if method not in METHODS:
        raise InputError(f"instance method {method!r} is unknown: choose one of {METHODS}.")
    return method


def _relabel(labels: NDArray) -> NDArray:
    """Consecutive ids 1..N in the smallest label dtype."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels].astype(label_dtype(len(ids)))


def instances_from_sdf(mean_sdf: NDArray, *, method: str = "watershed", threshold: float = 0.0) -> NDArray:
    """Instance labels (uint16, or uint32 beyond 65534 instances; 0 = background) from a mean SDF."""
    labels = solvers.instances_from_sdf(np.asarray(mean_sdf, np.float32), method=method, threshold=threshold)
    return _relabel(labels.astype(np.int64))


def _confidence(labels: NDArray, sample_sdfs: NDArray, std: NDArray, threshold: float) -> dict[int, dict]:
    scores = instance_confidence(labels, sample_sdfs, threshold=threshold, std=std)
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
