"""Sparse overlaps between every node of one forest and every node of another (or a label image).

Pixels are counted once per pair of *deepest* nodes, then the counts are pushed up both ancestor chains, so
the cost is one pass over the pixels plus work proportional to the (few) overlapping node pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .forest import Forest


@dataclass(frozen=True)
class Overlaps:
    """Node pairs ``(a[k], b[k])`` with ``inter[k] > 0`` common pixels, and their IoU."""

    a: NDArray[np.int64]
    b: NDArray[np.int64]
    inter: NDArray[np.int64]
    iou: NDArray[np.float64]

    def swapped(self) -> Overlaps:
        """The same table seen from the other forest."""
        return Overlaps(self.b, self.a, self.inter, self.iou)


def forest_from_labels(label_image: NDArray) -> Forest:
    """A flat forest whose roots are the labels of ``label_image`` (label ``i`` becomes node ``i - 1``)."""
    lab = np.asarray(label_image).astype(np.int64)
    n = int(lab.max()) if lab.size else 0
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    z = np.zeros(n, np.int64)
    return Forest(np.zeros(1), z, z - 1, area, np.zeros(n), (lab - 1).astype(np.int32))


def _push_up(parent: NDArray, node: NDArray, other: NDArray, count: NDArray):
    """Repeat each (node, other, count) row for every ancestor-or-self of ``node``."""
    nodes, others, counts = [node], [other], [count]
    while node.size:
        keep = parent[node] >= 0
        node, other, count = parent[node[keep]], other[keep], count[keep]
        nodes.append(node)
        others.append(other)
        counts.append(count)
    return np.concatenate(nodes), np.concatenate(others), np.concatenate(counts)


def _aggregate(a: NDArray, b: NDArray, c: NDArray, nb: int):
    key = a * nb + b
    uniq, inv = np.unique(key, return_inverse=True)
    return uniq // nb, uniq % nb, np.bincount(inv, weights=c).astype(np.int64)


def node_overlaps(fa: Forest, fb: Forest) -> Overlaps:
    """Intersections and IoU of all overlapping node pairs of two forests over the same pixel grid.

    Examples
    --------
    >>> from segflow.solvers.forest import build_forest
    >>> fa = build_forest(np.array([[0.6, 0.9, 0.6, 0.8, 0.6]]))
    >>> fb = forest_from_labels(np.array([[1, 1, 0, 2, 2]]))
    >>> o = node_overlaps(fa, fb)
    >>> list(zip(o.a.tolist(), o.b.tolist(), o.inter.tolist()))
    [(0, 0, 2), (0, 1, 2), (1, 0, 1), (2, 1, 1)]
    """
    ma, mb = fa.node_map.ravel(), fb.node_map.ravel()
    if ma.shape != mb.shape:
        raise ValueError(f"forests cover different grids: {fa.node_map.shape} and {fb.node_map.shape}")
    both = (ma >= 0) & (mb >= 0)
    nb = max(fb.n_nodes, 1)
    a, b, c = _aggregate(ma[both].astype(np.int64), mb[both].astype(np.int64), np.ones(int(both.sum())), nb)
    a, b, c = _push_up(fa.parent, a, b, c)
    b, a, c = _push_up(fb.parent, b, a, c)
    a, b, c = _aggregate(a, b, c, nb)
    iou = c / (fa.area[a] + fb.area[b] - c)
    return Overlaps(a, b, c, iou)
