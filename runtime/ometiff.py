"""Tiled, pyramidal OME-TIFF for label images and float maps, written tile by tile and atomically.

Level 0 is the full map; each further level halves it (labels by nearest neighbour, so ids survive; float maps
by 2x2 means) until it fits in one tile, stored as SubIFDs so QuPath, napari, OMERO and tifffile open it as a
pyramid. The source may be any array-like that supports 2-D slicing (numpy, memmap, zarr): only one block is
in memory at a time, and levels larger than ``in_memory`` pixels are staged in a temporary zarr array beside
the output.

Example
-------
>>> import numpy as np, tempfile, os, tifffile
>>> d = tempfile.mkdtemp()
>>> write_ome_pyramid(os.path.join(d, "l.ome.tif"), np.arange(600 * 700).reshape(600, 700) % 7, kind="labels",
...                   tile=256)
>>> with tifffile.TiffFile(os.path.join(d, "l.ome.tif")) as t:
...     [lv.shape for lv in t.series[0].levels]
[(600, 700), (300, 350), (150, 175)]
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from segflow.errors import InputError, require
from segflow.imageio import atomic_path

KINDS = ("labels", "map")
_BLOCK = 2048
_LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))


def _tiles(src, tile: int, dtype: np.dtype) -> Iterator[NDArray]:
    h, w = src.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            yield np.asarray(src[y : y + tile, x : x + tile]).astype(dtype, copy=False)


def _half_block(a: NDArray, kind: str) -> NDArray:
    if kind == "labels":
        return a[::2, ::2]
    pad = ((0, a.shape[0] % 2), (0, a.shape[1] % 2))
    if any(p[1] for p in pad):
        a = np.pad(a, pad, mode="edge")
    a = a.astype(np.float32, copy=False)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25).astype(np.float32)


def _half(src, kind: str, tmpdir: str | None, in_memory: int):
    h, w = src.shape[:2]
    oh, ow = (h + 1) // 2, (w + 1) // 2
    dtype = src.dtype if kind == "labels" else np.dtype(np.float32)
    if oh * ow <= in_memory or tmpdir is None:
        out = np.empty((oh, ow), dtype)
    else:
        zarr = require("zarr", '"zarr>=3" imagecodecs', "writing large pyramids")
        out = zarr.create_array(store=tempfile.mkdtemp(dir=tmpdir, suffix=".zarr"), shape=(oh, ow),
                                chunks=(_BLOCK // 2, _BLOCK // 2), dtype=dtype, fill_value=0)
    for y in range(0, h, _BLOCK):
        for x in range(0, w, _BLOCK):
            blk = _half_block(np.asarray(src[y : y + _BLOCK, x : x + _BLOCK]), kind)
            out[y // 2 : y // 2 + blk.shape[0], x // 2 : x // 2 + blk.shape[1]] = blk
    return out


def pyramid_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Shapes of the levels written for a ``shape`` map: halve until the level fits in one tile."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def write_ome_pyramid(path: str | Path, source, *, kind: str = "map", mpp: float | None = None,
                      tile: int = 512, compression: str = "zlib", in_memory: int = 4096 * 4096,
                      name: str | None = None) -> None:
    """Write ``source`` (H, W) as a tiled pyramidal OME-TIFF at ``path`` (atomically: all or nothing).

    Parameters
    ----------
    path : str or Path
        Output file, conventionally ``*.ome.tif``.
    source : array-like, shape (H, W)
        Labels (non-negative integers; written as uint8/16/32, other integer types as uint32) or a float map;
        read block by block.
    kind : {"labels", "map"}
        How lower levels are made: nearest neighbour (labels) or 2x2 mean (maps, written as float32).
    mpp : float, optional
        Microns per pixel of level 0, written as OME PhysicalSizeX/Y (level 0) and as each level's TIFF
        resolution (level ``i``: ``mpp * 2**i`` microns per pixel, in pixels per centimetre).
    tile : int
        Tile side (a multiple of 16).
    compression : str
        TIFF compression (``"zlib"`` needs no extra codec).
    in_memory : int
        Lower levels with at most this many pixels are built in memory, larger ones in a temporary zarr array.
    name : str, optional
        OME image name.

    Raises
    ------
    InputError
        If the output folder cannot be written.
    """
    import tifffile

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    if len(source.shape) != 2:
        raise ValueError(f"source must be 2-D, got shape {source.shape}")
    p = Path(path)
    _check_writable(p.parent)
    dtype = np.dtype(np.float32)
    if kind == "labels":
        dtype = np.dtype(source.dtype) if np.dtype(source.dtype) in _LABEL_DTYPES else np.dtype(np.uint32)
    n_sub = len(pyramid_shapes(source.shape, tile)) - 1
    meta: dict = {"axes": "YX"}
    if name:
        meta["Name"] = name
    opts: dict = {"tile": (tile, tile), "compression": compression, "dtype": dtype}
    if mpp:
        meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
        opts["resolutionunit"] = "CENTIMETER"
    with atomic_path(p) as tmp, tempfile.TemporaryDirectory(dir=p.parent, prefix=".pyramid.") as tmpdir:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
            src = source
            tw.write(_tiles(src, tile, dtype), shape=tuple(src.shape), subifds=n_sub, metadata=meta,
                     **_level_opts(opts, mpp, 0))
            for i in range(1, n_sub + 1):
                src = _half(src, kind, tmpdir, in_memory)
                tw.write(_tiles(src, tile, dtype), shape=tuple(src.shape), subfiletype=1,
                         **_level_opts(opts, mpp, i))


def _level_opts(opts: dict, mpp: float | None, level: int) -> dict:
    """``opts`` plus level ``level``'s resolution tags (pixels per cm).

    Level ``i`` samples every ``2**i``-th level-0 pixel (odd sides round the size up, they do not stretch the
    pixels), so its pixel pitch is exactly ``mpp * 2**i`` on both axes.
    """
    if not mpp:
        return opts
    ppcm = 1e4 / (mpp * 2**level)
    return {**opts, "resolution": (ppcm, ppcm)}


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as exc:
        raise InputError(f"output folder {folder} is not writable ({exc.strerror}): choose another --out.") from exc


def read_level(path: str | Path, level: int = 0) -> NDArray:
    """Read one level of a pyramidal OME-TIFF whole (for tests and small outputs)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()
