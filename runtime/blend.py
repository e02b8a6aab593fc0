"""Blending overlapping tile predictions into one map: weight windows and an in-place weighted accumulator.

Each tile's prediction is multiplied by a weight window and added into ``acc``; the window itself is added into
``wsum``; the blended map is ``acc / wsum``. Windows are strictly positive, so every covered pixel gets a value,
and the identity model is reproduced exactly (float64 sums). What the windows change is how inconsistent
predictions of neighbouring tiles are mixed: ``average`` (flat) switches abruptly where a tile's coverage ends,
``linear``/``pyramid`` fade tiles in and out, ``gaussian`` (sigma = size/8) favours tile centres, where the model
saw the most context. docs/segment.md reports the measured seam strength of each (benchmarks/bench_blend.py).

Examples
--------
>>> blend_weights(4, "linear").round(2).tolist()[0]
[0.25, 0.5, 0.5, 0.25]
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from segflow.runtime.tiling import Tile

__all__ = ["BLENDS", "blend_weights", "Blender", "accumulate", "seam_lines", "seam_ratio"]


def _tent(size: int) -> NDArray[np.float64]:
    i = np.arange(size, dtype=np.float64)
    return np.minimum(i + 1, size - i) / np.ceil(size / 2)


def _average(size: int) -> NDArray[np.float64]:
    return np.ones((size, size))


def _linear(size: int) -> NDArray[np.float64]:
    t = _tent(size)
    return np.outer(t, t)


def _pyramid(size: int) -> NDArray[np.float64]:
    t = _tent(size)
    return np.minimum(t[:, None], t[None, :])


def _gaussian(size: int) -> NDArray[np.float64]:
    i = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(i**2) / (2 * (size / 8) ** 2))
    return np.maximum(np.outer(g, g), 1e-12)


BLENDS: dict[str, Callable[[int], NDArray[np.float64]]] = {
    "average": _average,
    "linear": _linear,
    "pyramid": _pyramid,
    "gaussian": _gaussian,
}


@lru_cache(maxsize=32)
def _cached(size: int, mode: str) -> NDArray[np.float64]:
    w = BLENDS[mode](size)
    w.setflags(write=False)
    return w


def blend_weights(size: int, mode: str = "gaussian") -> NDArray[np.float64]:
    """The (size, size) weight window of blend ``mode`` (read-only, strictly positive, float64)."""
    if mode not in BLENDS:
        raise ValueError(f"unknown blend {mode!r}: choose one of {sorted(BLENDS)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return _cached(int(size), mode)


def accumulate(acc: NDArray, wsum: NDArray, tile: Tile, values: NDArray, weights: NDArray,
               *, origin: tuple[int, int] = (0, 0)) -> None:
    """Add one tile's ``values`` (C, size, size) into ``acc`` (C, H, W) and its weights into ``wsum`` (H, W).

    ``origin`` is the image position of ``acc[:, 0, 0]``, so a caller may accumulate a region of a larger image
    (any array supporting slice assignment works, e.g. a memory map). Only the tile's valid part is written.
    """
    h, w = tile.valid
    ys = slice(tile.y - origin[0], tile.y - origin[0] + h)
    xs = slice(tile.x - origin[1], tile.x - origin[1] + w)
    wt = weights[:h, :w]
    acc[:, ys, xs] += values[:, :h, :w] * wt
    wsum[ys, xs] += wt


class Blender:
    """Weighted blending of tile predictions with ``channels`` channels into an (H, W) image.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the output.
    channels : int
        Channels per tile prediction (e.g. the K samples).
    mode : str
        One of :data:`BLENDS`.
    """

    def __init__(self, shape: tuple[int, int], channels: int, *, mode: str = "gaussian") -> None:
        if mode not in BLENDS:
            raise ValueError(f"unknown blend {mode!r}: choose one of {sorted(BLENDS)}")
        self.mode = mode
        self.acc = np.zeros((channels, *shape[:2]), np.float64)
        self.wsum = np.zeros(shape[:2], np.float64)

    def add(self, tile: Tile, values: NDArray) -> None:
        """Add a tile's prediction (channels, size, size)."""
        accumulate(self.acc, self.wsum, tile, np.asarray(values), blend_weights(tile.size, self.mode))

    def result(self, dtype: np.dtype = np.float32) -> NDArray:
        """The blended (channels, H, W) map; raises ``ValueError`` if some pixel was never covered."""
        if not (self.wsum > 0).all():
            raise ValueError("some pixels were not covered by any tile")
        return (self.acc / self.wsum).astype(dtype)


def seam_lines(plan: list[Tile], shape: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Rows and columns ``r`` where some tile's valid region starts or ends between ``r - 1`` and ``r``."""
    rows, cols = set(), set()
    for t in plan:
        rows.update({t.y, t.y + t.valid[0]})
        cols.update({t.x, t.x + t.valid[1]})
    return sorted(r for r in rows if 0 < r < shape[0]), sorted(c for c in cols if 0 < c < shape[1])


def seam_ratio(image: NDArray, plan: list[Tile]) -> float:
    """Seam strength of a blended (H, W) map: mean |jump| across tile edges / mean |jump| between other pixels.

    About 1 means tile edges are invisible (the map changes there as much as anywhere); a value well above 1
    means seams. Needs no reference, so it applies to any model (docs/segment.md, benchmarks/bench_blend.py).
    """
    y = np.asarray(image, np.float64)
    rows, cols = seam_lines(plan, y.shape)
    dy, dx = np.abs(np.diff(y, axis=0)), np.abs(np.diff(y, axis=1))  # dy[r-1] is the jump between r-1 and r
    on_y, on_x = np.zeros(dy.shape[0], bool), np.zeros(dx.shape[1], bool)
    on_y[[r - 1 for r in rows]] = True
    on_x[[c - 1 for c in cols]] = True
    seam = np.concatenate([dy[on_y].ravel(), dx[:, on_x].ravel()])
    rest = np.concatenate([dy[~on_y].ravel(), dx[:, ~on_x].ravel()])
    if seam.size == 0 or rest.size == 0:
        return 1.0
    return float(seam.mean() / max(rest.mean(), 1e-12))
