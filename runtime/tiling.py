"""Tiling geometry: pure functions that say where each tile reads, separate from running a model on it.

A :class:`Tile` is a ``size``×``size`` window at ``(y, x)`` of an image of shape ``(H, W)``. Tiles start every
``stride`` pixels and the last tile of each row/column is pushed back to end exactly at the image edge, so
tiles never leave the image — except when the image is smaller than a tile along an axis: then there is one
tile at 0 along that axis and :func:`extract_tile` pads the missing part by reflection. ``valid`` is the part of
the window inside the image; only that part is written back (:mod:`segflow.runtime.blend`).

Examples
--------
>>> [(t.y, t.x) for t in plan_tiles((20, 10), tile=8, stride=6)]
[(0, 0), (0, 2), (6, 0), (6, 2), (12, 0), (12, 2)]
>>> plan_tiles((5, 5), tile=8, stride=4)[0].valid
(5, 5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Tile", "axis_starts", "plan_tiles", "extract_tile", "pad_to_tile"]


@dataclass(frozen=True)
class Tile:
    """One tile of a plan.

    Attributes
    ----------
    index : int
        Position in the plan (row-major); seeds the tile's noise, so results do not depend on batching.
    y, x : int
        Top-left corner of the window in image coordinates.
    size : int
        Side of the square window the model sees.
    valid : tuple of int
        ``(h, w)`` of the window inside the image (``size`` unless the image is smaller than a tile).
    """

    index: int
    y: int
    x: int
    size: int
    valid: tuple[int, int]

    @property
    def read(self) -> tuple[slice, slice]:
        """Slices of the image that this tile reads (and writes back): the valid part of its window."""
        return slice(self.y, self.y + self.valid[0]), slice(self.x, self.x + self.valid[1])

    def shifted(self, dy: int, dx: int) -> Tile:
        """The same tile moved by ``(dy, dx)`` (for callers that plan inside a region of a larger image)."""
        return Tile(self.index, self.y + dy, self.x + dx, self.size, self.valid)


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: ``0, stride, 2*stride, ...`` with the last one at ``length - tile``.

    Examples
    --------
    >>> axis_starts(20, 8, 6), axis_starts(8, 8, 4), axis_starts(3, 8, 4)
    ([0, 6, 12], [0], [0])
    """
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be positive, got tile={tile}, stride={stride}")
    if stride > tile:
        raise ValueError(f"stride={stride} is larger than tile={tile}: pixels would be skipped")
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_tiles(shape: tuple[int, ...], tile: int, stride: int) -> list[Tile]:
    """Cover an image of ``shape[:2]`` with overlapping square tiles (row-major order).

    Every pixel lies in at least one tile's valid region; see the module docstring for the placement rule.
    """
    h, w = int(shape[0]), int(shape[1])
    ys, xs = axis_starts(h, tile, stride), axis_starts(w, tile, stride)
    vh, vw = min(h, tile), min(w, tile)
    return [Tile(i * len(xs) + j, y, x, tile, (vh, vw)) for i, y in enumerate(ys) for j, x in enumerate(xs)]


def pad_to_tile(region: NDArray, size: int) -> NDArray:
    """Pad a (h, w[, C]) region at the bottom/right to (size, size[, C]) by reflection (edge for 1-pixel axes)."""
    h, w = region.shape[:2]
    if h == size and w == size:
        return region
    if h > size or w > size:
        raise ValueError(f"region {region.shape[:2]} is larger than the tile {size}")
    pad = [(0, size - h), (0, size - w)] + [(0, 0)] * (region.ndim - 2)
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(region, pad, mode=mode)


def extract_tile(image: NDArray, tile: Tile) -> NDArray:
    """Return the tile's ``size``×``size`` window of ``image`` (H, W[, C]), reflect-padded if needed."""
    return pad_to_tile(image[tile.read], tile.size)
