"""Instance candidate forest of a probability map (the max-tree restricted to levels >= tau).

Thresholds are the distinct values of ``prob`` that are >= ``tau`` after rounding to ``decimals`` decimals.
Every connected component of ``prob >= level`` is a node; its parent is the component one level down that
contains it. Each level is labelled once (OpenCV), and parent links and areas come from gathers over the
pixels above that level (visited in descending order), so no node ever scans the whole image.

A node's pixels are never stored: ``node_map`` holds, for each pixel, the deepest node containing it, and a
node's mask is the set of pixels whose deepest node lies in its subtree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from numpy.typing import NDArray

from ._validate import check_connectivity, check_prob


@dataclass(frozen=True)
class Forest:
    """Candidate forest; node ids are topologically ordered (a parent's id is smaller than its children's).

    Attributes
    ----------
    levels : ndarray of float
        Threshold of each level, ascending (``levels[0]`` is the lowest threshold >= tau).
    level : ndarray of int
        Level index of each node (the threshold at which it appears).
    parent : ndarray of int
        Parent node id, -1 for roots.
    area : ndarray of int
        Pixels in each node.
    persistence : ndarray of float
        Range of thresholds over which the node's region exists without splitting (>= one level step).
    node_map : ndarray of int32, shape (H, W)
        Deepest node containing each pixel, -1 below tau.
    """

    levels: NDArray[np.float64]
    level: NDArray[np.int64]
    parent: NDArray[np.int64]
    area: NDArray[np.int64]
    persistence: NDArray[np.float64]
    node_map: NDArray[np.int32]

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.parent.size)

    @cached_property
    def depth(self) -> NDArray[np.int64]:
        """Distance of each node from its root (roots have depth 0)."""
        d = np.zeros(self.n_nodes, np.int64)
        cur = self.parent.copy()
        while (cur >= 0).any():
            up = cur >= 0
            d += up
            cur[up] = self.parent[cur[up]]
        return d

    @cached_property
    def by_depth(self) -> list[NDArray[np.int64]]:
        """Node ids grouped by depth, shallowest first."""
        if self.n_nodes == 0:
            return []
        order = np.argsort(self.depth, kind="stable")
        return np.split(order, np.cumsum(np.bincount(self.depth))[:-1])

    @cached_property
    def root(self) -> NDArray[np.int64]:
        """Root (tree id) of every node."""
        r = np.arange(self.n_nodes)
        for nodes in self.by_depth[1:]:
            r[nodes] = r[self.parent[nodes]]
        return r

    @cached_property
    def n_children(self) -> NDArray[np.int64]:
        """Number of children of each node."""
        has = self.parent >= 0
        return np.bincount(self.parent[has], minlength=self.n_nodes)

    @property
    def roots(self) -> NDArray[np.int64]:
        """Ids of the roots."""
        return np.flatnonzero(self.parent < 0)

    @property
    def leaves(self) -> NDArray[np.int64]:
        """Ids of the leaves."""
        return np.flatnonzero(self.n_children == 0)

    def paths(self) -> list[NDArray[np.int64]]:
        """Leaf-to-root paths, one array per leaf, listed root first."""
        out = []
        for leaf in self.leaves:
            p = [int(leaf)]
            while self.parent[p[-1]] >= 0:
                p.append(int(self.parent[p[-1]]))
            out.append(np.array(p[::-1], np.int64))
        return out

    @cached_property
    def leaves_below(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """CSR ``(starts, leaf_index)``: the leaves below node ``n`` (its leaf-to-root paths) are
        ``leaf_index[starts[n]:starts[n + 1]]``, as positions in :attr:`leaves`."""
        leaves = self.leaves
        node, idx = leaves.copy(), np.arange(leaves.size)
        nodes, idxs = [node], [idx]
        while node.size:
            keep = self.parent[node] >= 0
            node, idx = self.parent[node[keep]], idx[keep]
            nodes.append(node)
            idxs.append(idx)
        node, idx = np.concatenate(nodes), np.concatenate(idxs)
        order = np.argsort(node, kind="stable")
        return np.searchsorted(node[order], np.arange(self.n_nodes + 1)), idx[order]

    def related(self, nodes: NDArray) -> NDArray[np.bool_]:
        """Mask of ``nodes`` plus all their ancestors and descendants (the nodes sharing a path with them)."""
        sel = np.zeros(self.n_nodes, bool)
        sel[np.asarray(nodes, np.int64)] = True
        down, up = sel.copy(), sel.copy()
        for nodes_d in self.by_depth[1:]:
            down[nodes_d] |= down[self.parent[nodes_d]]
        for nodes_d in self.by_depth[:0:-1]:
            hit = nodes_d[up[nodes_d]]
            up[self.parent[hit]] = True
        return down | up

    def assign(self, nodes: NDArray) -> NDArray[np.int64]:
        """For every node, the 1-based position in ``nodes`` of its selected ancestor-or-self, or 0."""
        lab = np.zeros(self.n_nodes, np.int64)
        nodes = np.asarray(nodes, np.int64)
        lab[nodes] = np.arange(1, nodes.size + 1)
        for nodes_d in self.by_depth[1:]:
            inherit = lab[nodes_d] == 0
            lab[nodes_d[inherit]] = lab[self.parent[nodes_d[inherit]]]
        return lab

    def to_labels(self, nodes: NDArray, dtype=np.uint32) -> NDArray:
        """Label image of pairwise-disjoint ``nodes`` (labels 1..len(nodes) in the given order)."""
        lut = np.concatenate([[0], self.assign(nodes)]).astype(dtype)
        return lut[self.node_map.astype(np.int64) + 1]

    def node_mask(self, node: int) -> NDArray[np.bool_]:
        """Boolean mask of one node (for tests and inspection; scans the image)."""
        return self.to_labels(np.array([node])) == 1


def quantize(prob: NDArray, decimals: int) -> NDArray[np.int32]:
    """Probabilities as integers ``round(prob * 10**decimals)``.

    Examples
    --------
    >>> quantize(np.array([[0.504, 0.996]]), 2).tolist()
    [[50, 100]]
    """
    return np.rint(np.asarray(prob, np.float64) * 10.0**decimals).astype(np.int32)


def build_forest(prob: NDArray, *, tau: float = 0.5, decimals: int = 2, connectivity: int = 1,
                 min_area: int = 0, collapse: bool = True) -> Forest:
    """Build the instance candidate forest of a 2-D probability map.

    Parameters
    ----------
    prob : ndarray of float, shape (H, W)
        Foreground probability in [0, 1].
    tau : float
        Lowest threshold; levels are the distinct rounded values >= tau.
    decimals : int
        Rounding of the probabilities before the levels are taken (2 in the paper).
    connectivity : {1, 2}
        1 = 4-neighbours, 2 = 8-neighbours (used at every level).
    min_area : int
        Components smaller than this are dropped (their pixels fall back to the parent).
    collapse : bool
        Keep only the top of every single-child chain (roots and children of branching nodes), as the
        authors' code does; ``persistence`` still measures the whole chain.

    Returns
    -------
    Forest

    Examples
    --------
    >>> p = np.array([[0.6, 0.9, 0.6, 0.8, 0.6]])
    >>> f = build_forest(p)
    >>> f.n_nodes, f.parent.tolist(), f.area.tolist()
    (3, [-1, 0, 0], [5, 1, 1])
    """
    p = check_prob(prob)
    conn = check_connectivity(connectivity)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    q = quantize(p, decimals)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # each level takes milliseconds; OpenCV's threads only stall on a busy machine
    try:
        full = _label_levels(q, int(round(tau * 10**decimals)), 4 if conn == 1 else 8)
    finally:
        cv2.setNumThreads(threads)
    levels_int, level, parent, area, node_map = full
    keep = area >= max(min_area, 1)
    if not keep.all():
        level, parent, area, node_map = _restrict(keep, level, parent, area, node_map)
    n_children = np.bincount(parent[parent >= 0], minlength=parent.size)
    step = 10.0**-decimals
    levels = levels_int / 10.0**decimals
    persistence = _persistence(levels, level, parent, n_children, step)
    if collapse and parent.size:
        keep = parent < 0
        keep[parent >= 0] = n_children[parent[parent >= 0]] != 1
        level, parent, area, node_map = _restrict(keep, level, parent, area, node_map)
        persistence = persistence[keep]
    return Forest(levels, level, parent, area, persistence, node_map)


def _label_levels(q: NDArray, t: int, cv_conn: int):
    """Label every level of the quantised map; return levels, per-node level/parent/area and node_map."""
    if q.size and q.max() <= 255:
        q = q.astype(np.uint8)  # cheaper per-level comparisons
    flat = q.ravel()
    fg = np.flatnonzero(flat >= t)
    node_map = np.full(q.shape, -1, np.int32)
    if fg.size == 0:
        e = np.zeros(0, np.int64)
        return e.astype(np.float64), e, e, e, node_map
    vals = flat[fg]
    order = np.argsort(-vals, kind="stable")
    pix, vals = fg[order], vals[order]                      # pixels by descending value
    levels_int = np.unique(vals)
    n_above = np.searchsorted(-vals, -levels_int, side="right")   # pixels >= each level
    nm = node_map.ravel()
    levels, parents, areas = [], [], []
    offset, prev_offset, prev_lab = 0, 0, None
    for k, lv in enumerate(levels_int):
        n_comp, lab = cv2.connectedComponents((q >= lv).view(np.uint8), connectivity=cv_conn,
                                              ltype=cv2.CV_32S)
        px = pix[: n_above[k]]
        lv_lab = lab.ravel()[px]
        areas.append(np.bincount(lv_lab, minlength=n_comp)[1:])
        par = np.full(n_comp - 1, -1, np.int64)
        if prev_lab is not None:
            par[lv_lab - 1] = prev_lab.ravel()[px].astype(np.int64) - 1 + prev_offset
        parents.append(par)
        levels.append(np.full(n_comp - 1, k, np.int64))
        lo = n_above[k + 1] if k + 1 < len(levels_int) else 0
        nm[px[lo:]] = offset + lv_lab[lo:] - 1                    # pixels whose own level is k
        prev_lab, prev_offset = lab, offset
        offset += n_comp - 1
    return levels_int.astype(np.float64), np.concatenate(levels), np.concatenate(parents), \
        np.concatenate(areas).astype(np.int64), node_map


def _by_level(level: NDArray) -> list[NDArray[np.int64]]:
    """Node ids grouped by level index, lowest level first (parents of the uncollapsed forest sit one below)."""
    if level.size == 0:
        return []
    order = np.argsort(level, kind="stable")
    return np.split(order, np.cumsum(np.bincount(level))[:-1])


def _nearest_kept(keep: NDArray[np.bool_], level: NDArray, parent: NDArray) -> NDArray[np.int64]:
    """For each node the nearest kept ancestor-or-self (-1 if none), for a forest whose parents sit one
    level below their children."""
    anc = np.where(keep, np.arange(keep.size), -1)
    for nodes in _by_level(level)[1:]:
        drop = nodes[~keep[nodes] & (parent[nodes] >= 0)]
        anc[drop] = anc[parent[drop]]
    return anc


def _restrict(keep, level, parent, area, node_map):
    """Drop nodes not in ``keep``; re-link parents and pixels to the nearest kept ancestor, re-number ids."""
    anc = _nearest_kept(keep, level, parent)
    new_id = np.cumsum(keep) - 1
    remap = np.where(anc >= 0, new_id[np.maximum(anc, 0)], -1)
    par_anc = np.where(parent >= 0, anc[np.maximum(parent, 0)], -1)
    new_parent = np.where(par_anc >= 0, new_id[np.maximum(par_anc, 0)], -1)[keep]
    lut = np.concatenate([[-1], remap]).astype(np.int32)
    return level[keep], new_parent, area[keep], lut[node_map.astype(np.int64) + 1]


def _persistence(levels, level, parent, n_children, step) -> NDArray[np.float64]:
    """Threshold range over which each node's region exists without splitting: from its own level up to
    the level where its single-child chain splits (its children appear) or vanishes (top level + step)."""
    end_node = _chain_end(level, parent, n_children)
    end_level = level[end_node]
    top = np.append(levels, levels[-1] + step) if levels.size else levels
    end = np.where(n_children[end_node] == 0, levels[end_level] + step, top[np.minimum(end_level + 1, top.size - 1)])
    return end - levels[level]


def _chain_end(level: NDArray, parent: NDArray, n_children: NDArray) -> NDArray[np.int64]:
    """Node where each node's single-child chain ends (it splits or vanishes)."""
    end = np.arange(level.size)
    for nodes in _by_level(level)[:0:-1]:  # deepest level first
        only = nodes[(parent[nodes] >= 0)]
        only = only[n_children[parent[only]] == 1]
        end[parent[only]] = end[only]
    return end
