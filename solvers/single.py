"""Single-image selection on the candidate forest: exact dynamic programming under the path constraints.

H-EMD needs neighbouring frames; on one image it reduces to the roots (the tau-threshold components). The
selection here instead maximises the sum of a node score over pairwise-disjoint nodes (at most one per
leaf-to-root path), solved exactly per tree: ``best(n) = max(score(n), sum(best(c) for c in children))``.

Scores (:data:`SCORES`):

* ``"persistence"`` (default): the range of thresholds over which the node's region exists without splitting.
  Two touching cells separated by a low ridge merge only over a short range, while each cell persists up to
  its own peak, so the children win; a noisy double peak inside one cell splits only near the top, so the
  parent wins. This is the dynamics/MSER notion of stability, and needs nothing but the map.
* ``"agreement"``: mean over the runtime's K sample label images of the best IoU with any sample instance,
  so an instance is kept when the samples agree on it.
* ``"roots"``: select the roots, i.e. what H-EMD alone gives on a single image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ._overlap import forest_from_labels, node_overlaps
from ._validate import check_choice
from .forest import Forest


def dp_select(forest: Forest, score: NDArray) -> NDArray[np.int64]:
    """Pairwise-disjoint nodes maximising the total ``score`` (ties keep the parent, i.e. fewer instances).

    Nodes with a negative score are never selected.

    Examples
    --------
    >>> from segflow.solvers.forest import build_forest
    >>> f = build_forest(np.array([[0.6, 0.9, 0.6, 0.8, 0.6]]))     # root 0 with children 1 and 2
    >>> dp_select(f, np.array([1.0, 0.6, 0.6])).tolist(), dp_select(f, np.array([1.0, 0.6, 0.3])).tolist()
    ([1, 2], [0])
    """
    s = np.asarray(score, np.float64)
    if s.shape != (forest.n_nodes,):
        raise ValueError(f"score must have one value per node ({forest.n_nodes}), got shape {s.shape}")
    best = np.zeros(forest.n_nodes)
    child_sum = np.zeros(forest.n_nodes)
    for nodes in forest.by_depth[::-1]:  # deepest first: children are final before their parents
        best[nodes] = np.maximum(s[nodes], child_sum[nodes])
        has = nodes[forest.parent[nodes] >= 0]
        np.add.at(child_sum, forest.parent[has], best[has])
    take = (s >= child_sum) & (s >= 0)
    chosen = np.zeros(forest.n_nodes, bool)
    covered = np.zeros(forest.n_nodes, bool)
    for nodes in forest.by_depth:  # top-down: a node is taken unless an ancestor already was
        if nodes.size == 0:
            continue
        par = forest.parent[nodes]
        inherited = np.where(par >= 0, covered[np.maximum(par, 0)], False)
        chosen[nodes] = take[nodes] & ~inherited
        covered[nodes] = chosen[nodes] | inherited
    return np.flatnonzero(chosen)


def persistence_score(forest: Forest) -> NDArray[np.float64]:
    """Persistence of every node (see :class:`~segflow.solvers.forest.Forest`)."""
    return forest.persistence.copy()


def agreement_score(forest: Forest, samples: Sequence[NDArray]) -> NDArray[np.float64]:
    """Mean over sample label images of each node's best IoU with any sample instance."""
    if len(samples) == 0:
        raise ValueError("samples must hold at least one label image for the 'agreement' score")
    total = np.zeros(forest.n_nodes)
    for lab in samples:
        ov = node_overlaps(forest, forest_from_labels(_sequential(lab)))
        best = np.zeros(forest.n_nodes)
        np.maximum.at(best, ov.a, ov.iou)
        total += best
    return total / len(samples)


def _sequential(label_image: NDArray) -> NDArray[np.int64]:
    lab = np.asarray(label_image).astype(np.int64)
    vals, inv = np.unique(lab, return_inverse=True)
    out = inv.reshape(lab.shape)
    return out if vals[0] == 0 else out + 1


SCORES = ("persistence", "agreement", "roots")


def select_single(forest: Forest, *, score: str = "persistence",
                  samples: Sequence[NDArray] | None = None) -> NDArray[np.int64]:
    """Select instances on one image's forest.

    Parameters
    ----------
    forest : Forest
    score : {"persistence", "agreement", "roots"}
        Node score maximised by :func:`dp_select` (``"roots"`` skips the DP).
    samples : sequence of label images, optional
        Needed for ``"agreement"``.

    Returns
    -------
    ndarray of int
        Selected node ids.
    """
    check_choice(score, SCORES, "score")
    if score == "roots":
        return forest.roots
    if score == "agreement":
        return dp_select(forest, agreement_score(forest, samples or []))
    return dp_select(forest, persistence_score(forest))
