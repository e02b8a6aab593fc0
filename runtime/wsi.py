"""Whole slides in bounded memory: stream tiles block by block, stitch labels without seams, write pyramids.

How it works (docs/wsi.md has the user's view):

1. **Where.** The level is chosen from the card's ``pixel_size_um`` (or ``--level`` / ``--mpp``), the ROI is
   converted to that level's pixels, and the region gets the *same* tile plan as a whole image of its size
   (:func:`segflow.runtime.tiling.plan_tiles`); a tile's plan index seeds its noise.
2. **Maps, block by block.** The region is cut into ``block``-sized blocks. A block needs every tile whose window
   overlaps it; tiles are predicted once (tiles straddling a block border are cached until the neighbouring
   block has used them) and blended in plan order into a block-local float64 accumulator, so each pixel gets
   exactly the arithmetic of the whole-image path. Tiles off the tissue mask are not run: they count as
   background (SDF +1 in every sample). The mean / std / probability maps go to chunked, compressed zarr
   arrays in a temporary folder beside the outputs (never to RAM).
3. **Labels, block by block.** Instances are computed on the block plus a margin, and a block keeps an instance
   only if the instance's first pixel (raster order) lies in the block's core and the instance does not touch
   the window's cut edge; otherwise the window grows (doubling, up to ``max_margin``). Since the instance
   solvers act on each foreground component alone, a kept instance equals its whole-image counterpart, each
   instance is kept by exactly one block, and ids are assigned once (no duplicates, no instance cut at a seam).
4. **Outputs.** Tiled pyramidal OME-TIFFs (labels, mean SDF, std, probability), QuPath GeoJSON streamed per
   block, and a JSON summary, all staged in the temporary folder and moved into place only when everything
   succeeded.
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from segflow.runtime import geojson, instances
from segflow.runtime.blend import accumulate, blend_weights
from segflow.runtime.confidence import adaptive_threshold, instance_confidence, parse_min_confidence
from segflow.runtime.ometiff import _check_writable, write_ome_pyramid
from segflow.runtime.slide import ZARR_MIN, LevelView, SlideReader, choose_level
from segflow.runtime.tiling import Tile, axis_starts, pad_to_tile
from segflow.runtime.tissue import thumbnail, tissue_mask

from segflow.errors import InputError, require
from segflow.imageio import staging, write_json
from segflow.normalize import as_channels, norm_stats

__all__ = ["SlideOptions", "SlideSegmentation", "segment_slide", "parse_roi", "wants_slide",
           "run_slides", "OUTPUTS", "prepare_regions", "map_region", "finish_regions"]

OUTPUTS = {"labels": "_labels.ome.tif", "mean_sdf": "_sdf.ome.tif", "std": "_std.ome.tif", "prob": "_prob.ome.tif",
           "geojson": ".geojson", "json": ".json"}


@dataclass(frozen=True)
class SlideOptions:
    """Where and how to segment a slide.

    Attributes
    ----------
    roi : (x, y, w, h), optional
        Region in full-resolution (level-0) slide pixels; default the whole slide.
    level, mpp : optional
        Pyramid level, or target microns per pixel (default: the card's ``pixel_size_um``, else level 0).
    tissue : bool
        Skip tiles outside a quick low-resolution tissue mask.
    block : int
        Block side in pixels of the processing level (memory grows with block² × K).
    margin : int, optional
        Initial label-window margin around a block (default 4 tiles); it doubles up to ``max_margin`` for
        larger instances.
    max_margin : int
        Largest margin tried; instances larger than this may be cut (counted in ``oversized``).
    geojson : bool
        Write the QuPath GeoJSON.
    min_confidence : float or "adaptive", optional
        Drop instances whose K-sample confidence is below this (``"adaptive"``: COIN's ``min(mean + std, 0.9)``
        of the slide's scores, which takes one extra label pass). Default: keep every instance.
    tiff_tile : int
        Tile side of the output OME-TIFFs.
    """

    roi: tuple[int, int, int, int] | None = None
    level: int | None = None
    mpp: float | None = None
    tissue: bool = True
    block: int = 2048
    margin: int | None = None
    max_margin: int = 4096
    geojson: bool = True
    min_confidence: float | str | None = None
    tiff_tile: int = 512


@dataclass(frozen=True)
class SlideSegmentation:
    """What a slide run produced: output files, counts, where it ran, timings."""

    outputs: dict[str, str]
    n_instances: int
    tiles: int
    tiles_run: int
    tiles_skipped: int
    level: int
    downsample: float
    mpp: float | None
    roi: tuple[int, int, int, int]
    shape: tuple[int, int]
    samples: int
    steps: int
    nfe: int
    oversized: int
    timings: dict = field(default_factory=dict)
    min_confidence: float | None = None
    dropped: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def parse_roi(text: str | None) -> tuple[int, int, int, int] | None:
    """Parse ``"x,y,w,h"`` (level-0 pixels) or raise :class:`InputError`."""
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--roi {text!r} is not four integers x,y,w,h: write e.g. --roi 0,0,4096,4096.") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise InputError(f"--roi {text!r} needs x, y >= 0 and w, h > 0.")
    return x, y, w, h


def _region(view: LevelView, roi: tuple[int, int, int, int] | None, path: str) -> tuple[int, int, int, int]:
    """ROI (level 0) -> (x0, y0, w, h) in view pixels, checked against the slide."""
    h0 = round(view.height * view.downsample)
    w0 = round(view.width * view.downsample)
    if roi is None:
        return 0, 0, view.width, view.height
    x, y, w, h = roi
    if x + w > w0 + 1 or y + h > h0 + 1:
        raise InputError(f"--roi {x},{y},{w},{h} lies outside slide {path} ({w0}x{h0} pixels at full "
                         "resolution): pick a region inside the slide.")
    d = view.downsample
    x0, y0 = int(math.floor(x / d)), int(math.floor(y / d))
    x1, y1 = min(view.width, int(math.ceil((x + w) / d))), min(view.height, int(math.ceil((y + h) / d)))
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"--roi {x},{y},{w},{h} is smaller than one pixel at the chosen level: enlarge it.")
    return x0, y0, x1 - x0, y1 - y0


class _Plan:
    """The region's tile plan (same as ``plan_tiles``), queried by block without listing every tile."""

    def __init__(self, h: int, w: int, tile: int, stride: int) -> None:
        self.ys, self.xs = axis_starts(h, tile, stride), axis_starts(w, tile, stride)
        self.tile, self.valid = tile, (min(h, tile), min(w, tile))
        self.total = len(self.ys) * len(self.xs)

    def _range(self, starts: list[int], size: int, lo: int, hi: int) -> range:
        first = bisect.bisect_right(starts, lo - size)  # first start with start + size > lo
        last = bisect.bisect_left(starts, hi)  # starts < hi
        return range(first, last)

    def tiles_over(self, y0: int, y1: int, x0: int, x1: int) -> list[Tile]:
        """Tiles whose valid window overlaps ``[y0, y1) x [x0, x1)``, in plan (index) order."""
        ri = self._range(self.ys, self.valid[0], y0, y1)
        rj = self._range(self.xs, self.valid[1], x0, x1)
        n = len(self.xs)
        return [Tile(i * n + j, self.ys[i], self.xs[j], self.tile, self.valid) for i in ri for j in rj]


def _bits_dtype(k: int) -> Any:
    """Smallest unsigned dtype with a bit per sample (None above 64 samples: no instance confidence)."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if k <= np.iinfo(dt).bits:
            return dt
    return None


def _zeros(root: str, name: str, shape: tuple[int, ...], dtype: Any, chunk: int, create: bool = True) -> Any:
    """A chunked zarr array under ``root``: created filled with zeros, or (``create=False``) opened for update."""
    zarr = require("zarr", f'"zarr>={ZARR_MIN}" imagecodecs', "streaming whole slides")
    store = os.path.join(root, name + ".zarr")
    if not create:
        return zarr.open_array(store=store, mode="r+")
    chunks = (1,) * (len(shape) - 2) + (min(chunk, shape[-2]), min(chunk, shape[-1]))
    return zarr.create_array(store=store, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


class _Run:
    """State of one slide run (kept small: one block of accumulators plus the border-tile cache)."""

    def __init__(self, seg: Any, view: LevelView, region: tuple[int, int, int, int], opts: SlideOptions,
                 stats: tuple[float, float], tmp: str, progress: Any, cancel: Any, create: bool = True) -> None:
        self.seg, self.view, self.opts, self.stats, self.tmp = seg, view, opts, stats, tmp
        self.ox, self.oy, self.w, self.h = region
        card = seg.card
        self.k, self.tile, self.thr = seg.settings.samples, card.tile, card.threshold
        self.plan = _Plan(self.h, self.w, card.tile, seg.stride)
        self.progress, self.cancel = progress, cancel
        self.done = self.run_count = 0
        self.cache: dict[int, NDArray[np.float32]] = {}
        self.tissue = None
        self.background = np.ones((self.k, card.tile, card.tile), np.float32)  # off-tissue tiles: SDF +1
        self.background.setflags(write=False)
        chunk = min(1024, opts.block)
        self.maps = {n: _zeros(tmp, n, (self.h, self.w), np.float32, chunk, create)
                     for n in ("mean_sdf", "std", "prob")}
        self.labels = _zeros(tmp, "labels", (self.h, self.w), np.uint32, chunk, create)
        # bit k of ``inside`` = sample k has sdf <= threshold there: the K samples' masks at one byte per pixel
        # (K <= 8), enough to score each instance by K-sample agreement in the label pass
        self.bits_dtype = _bits_dtype(self.k)
        self.inside = (_zeros(tmp, "inside", (self.h, self.w), self.bits_dtype, chunk, create)
                       if self.bits_dtype is not None else None)

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """The region's blocks ``(y0, y1, x0, x1)`` in raster order."""
        b = self.opts.block
        return [(y, min(y + b, self.h), x, min(x + b, self.w)) for y in range(0, self.h, b)
                for x in range(0, self.w, b)]

    # -- pass 1: maps ------------------------------------------------------------------------------------------
    def _has_tissue(self, t: Tile) -> bool:
        if self.tissue is None:
            return True
        d = self.view.downsample
        return self.tissue.any_in((self.ox + t.x) * d, (self.oy + t.y) * d, (self.ox + t.x + t.valid[1]) * d,
                                  (self.oy + t.y + t.valid[0]) * d)

    def _tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.plan.total)

    def _predict(self, tiles: list[Tile]) -> None:
        todo = [t for t in tiles if t.index not in self.cache]
        run = [t for t in todo if self._has_tissue(t)]
        ran = {t.index for t in run}
        for t in todo:
            if t.index not in ran:
                self.cache[t.index] = self.background
        self._tick(len(todo) - len(run))
        self.run_count += len(run)
        if self.cancel is not None and self.cancel():
            from segflow.runtime.session import Cancelled

            raise Cancelled("segmentation was cancelled by the caller; nothing was kept.")
        if not run:
            return
        by, bx = min(t.y for t in run), min(t.x for t in run)  # read the block's pixels once, cut windows
        bh, bw = max(t.y + t.valid[0] for t in run) - by, max(t.x + t.valid[1] for t in run) - bx
        area = as_channels(self.view.read(self.ox + bx, self.oy + by, bw, bh), self.seg.card.in_channels,
                           name=self.view.reader.path)
        pairs = ((t, pad_to_tile(area[t.y - by:t.y - by + t.valid[0], t.x - bx:t.x - bx + t.valid[1]], t.size))
                 for t in run)
        for t, samples in self.seg.predict_tiles(pairs, stats=self.stats, progress=self._tick, cancel=self.cancel):
            self.cache[t.index] = np.asarray(samples, np.float32)

    def map_block(self, y0: int, y1: int, x0: int, x1: int) -> None:
        tiles = self.plan.tiles_over(y0, y1, x0, x1)
        self._predict(tiles)
        ly, lx = min(t.y for t in tiles), min(t.x for t in tiles)
        lh = max(t.y + t.valid[0] for t in tiles) - ly
        lw = max(t.x + t.valid[1] for t in tiles) - lx
        acc, wsum = np.zeros((self.k, lh, lw)), np.zeros((lh, lw))
        weights = blend_weights(self.tile, self.seg.blend)
        for t in tiles:
            accumulate(acc, wsum, t, self.cache[t.index], weights, origin=(ly, lx))
        core = (slice(None), slice(y0 - ly, y1 - ly), slice(x0 - lx, x1 - lx))
        s = (acc[core] / wsum[core[1:]]).astype(np.float32)
        self.maps["mean_sdf"][y0:y1, x0:x1] = s.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.maps["std"][y0:y1, x0:x1] = s.std(axis=0, dtype=np.float64).astype(np.float32)
        self.maps["prob"][y0:y1, x0:x1] = (s <= self.thr).mean(axis=0, dtype=np.float64).astype(np.float32)
        if self.inside is not None:
            bits = np.zeros(s.shape[1:], self.bits_dtype)
            for k in range(self.k):
                bits |= (s[k] <= self.thr).astype(self.bits_dtype) << self.bits_dtype(k)
            self.inside[y0:y1, x0:x1] = bits
        for t in tiles:  # evict tiles no later block needs (later blocks lie below, or right in this row)
            if t.y + t.valid[0] <= y1 and t.x + t.valid[1] <= x1:
                self.cache.pop(t.index, None)

    # -- pass 2: labels ----------------------------------------------------------------------------------------
    def _owned(self, y0: int, y1: int, x0: int, x1: int, margin: int):
        wy0, wy1 = max(0, y0 - margin), min(self.h, y1 + margin)
        wx0, wx1 = max(0, x0 - margin), min(self.w, x1 + margin)
        lab = instances.instances_from_sdf(self.maps["mean_sdf"][wy0:wy1, wx0:wx1],
                                           method=self.seg.instance_method, threshold=self.thr)
        ids, first = np.unique(lab.ravel(), return_index=True)
        ids, first = ids[ids > 0], first[ids > 0]
        fy, fx = np.divmod(first, lab.shape[1])
        in_core = (fy + wy0 >= y0) & (fy + wy0 < y1) & (fx + wx0 >= x0) & (fx + wx0 < x1)
        edges = [lab[0] if wy0 > 0 else None, lab[-1] if wy1 < self.h else None,
                 lab[:, 0] if wx0 > 0 else None, lab[:, -1] if wx1 < self.w else None]
        touch = np.unique(np.concatenate([e for e in edges if e is not None] or [np.zeros(0, lab.dtype)]))
        cut = np.isin(ids, touch)
        return lab, (wy0, wy1, wx0, wx1), ids[in_core & ~cut], ids[in_core & cut]

    def _samples(self, box: tuple[int, int, int, int]) -> NDArray[np.bool_] | None:
        """The K samples' masks ``(K, h, w)`` over ``box`` (None when K > 64 and no bits were kept)."""
        if self.inside is None:
            return None
        wy0, wy1, wx0, wx1 = box
        bits = np.asarray(self.inside[wy0:wy1, wx0:wx1])
        shifts = np.arange(self.k, dtype=self.bits_dtype)[:, None, None]
        return ((bits[None] >> shifts) & self.bits_dtype(1)).astype(bool)

    def _window(self, y0: int, y1: int, x0: int, x1: int):
        margin = self.opts.margin if self.opts.margin is not None else 4 * self.tile
        while True:
            lab, box, keep, cut = self._owned(y0, y1, x0, x1, margin)
            if not len(cut) or margin >= self.opts.max_margin:
                return lab, box, np.concatenate([keep, cut]), len(cut)
            margin = min(2 * margin, self.opts.max_margin)

    def block_scores(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.float64]:
        """K-sample confidences of the instances this block owns (the label pass's instances)."""
        lab, box, keep, _ = self._window(y0, y1, x0, x1)
        return self._confidence(lab, box, keep)

    def _confidence(self, lab: NDArray, box: tuple[int, int, int, int], ids: NDArray) -> NDArray[np.float64]:
        samples = self._samples(box)
        if not len(ids) or samples is None:
            return np.ones(len(ids))
        # scored on the whole window, so that neighbours clip sample components as in the image path
        sc = instance_confidence(lab, samples, std=np.zeros(lab.shape, np.float32))
        return sc.confidence[np.searchsorted(sc.ids, ids)]

    def label_block(self, y0: int, y1: int, x0: int, x1: int, next_id: int, write_feature: Any,
                    min_confidence: float | None = None) -> tuple[int, int, int]:
        """Label the instances this block owns; return the next id, the oversized count and the dropped count."""
        lab, (wy0, wy1, wx0, wx1), keep, n_cut = self._window(y0, y1, x0, x1)
        dropped, conf = 0, None
        if (min_confidence is not None or write_feature is not None) and len(keep):
            conf = self._confidence(lab, (wy0, wy1, wx0, wx1), keep)  # scored once, for the filter and the GeoJSON
        if min_confidence is not None and len(keep):
            ok = conf >= min_confidence
            dropped, keep, conf = int((~ok).sum()), keep[ok], conf[ok]
        if not len(keep):
            return next_id, 0, dropped
        lut = np.zeros(int(lab.max()) + 1, np.uint32)
        lut[keep] = np.arange(next_id, next_id + len(keep), dtype=np.uint32)
        new = lut[lab]
        win = np.asarray(self.labels[wy0:wy1, wx0:wx1])
        win[new > 0] = new[new > 0]
        self.labels[wy0:wy1, wx0:wx1] = win
        if write_feature is not None:
            self._features(lab, keep, lut, (wy0, wy1, wx0, wx1), write_feature, conf)
        return next_id + len(keep), n_cut, dropped

    def _features(self, lab: NDArray, keep: NDArray, lut: NDArray, box: tuple, write: Any,
                  conf: NDArray | None) -> None:
        wy0, wy1, wx0, wx1 = box
        d = self.view.downsample
        for f in geojson.label_features(
                lab, ids=keep, offset=(self.ox + wx0, self.oy + wy0), scale=d, mpp=self.view.reader.mpp,
                prob=np.asarray(self.maps["prob"][wy0:wy1, wx0:wx1]),
                std=np.asarray(self.maps["std"][wy0:wy1, wx0:wx1]),
                confidence=conf if self.inside is not None else None, key=self.view.reader.path,
                id_map={int(i): int(lut[i]) for i in keep}):
            write(f)


def _norm_stats(seg: Any, reader: SlideReader) -> tuple[float, float]:
    spec = seg.card.normalisation
    if spec.get("mode", "dtype") == "dtype":
        return norm_stats(np.zeros(1, reader.dtype), spec)
    thumb, _ = thumbnail(reader)  # percentile statistics of the whole slide, from its thumbnail
    return norm_stats(as_channels(thumb, seg.card.in_channels), spec)


def segment_slide(seg: Any, reader: SlideReader, out_dir: str | Path, *, name: str | None = None,
                  options: SlideOptions | None = None, progress: Any = None, cancel: Any = None
                  ) -> SlideSegmentation:
    """Segment a slide (or its ROI) with a :class:`~segflow.runtime.session.Segmenter` in bounded memory.

    Parameters
    ----------
    seg : Segmenter
        An open session (its card, sampling settings, stride, blend and instance method are used).
    reader : SlideReader
        Region reader (:func:`segflow.runtime.slide.open_slide`, or ``ArrayReader`` for arrays).
    out_dir : str or Path
        Output folder; files are named ``{name}_labels.ome.tif``, ``_sdf/_std/_prob.ome.tif``,
        ``.geojson`` and ``.json`` (see :data:`OUTPUTS`).
    name : str, optional
        Output stem (default: the slide's file name without suffixes).
    options : SlideOptions
        ROI, level, tissue mask, block size.
    progress : callable, optional
        ``progress(done, total)`` in tiles (skipped tiles count as done).
    cancel : callable, optional
        Polled between tile groups; returning True stops the run and keeps nothing
        (:class:`~segflow.runtime.session.Cancelled`).
    """
    opts = options or SlideOptions()
    t0 = time.perf_counter()
    out = Path(out_dir)
    name = name or Path(reader.path).name.split(".")[0]

    def unwritable(where: Path, exc: OSError) -> InputError:
        return InputError(f"output folder {where} is not writable ({exc.strerror}): choose another --out.")

    # a failed or cancelled run leaves nothing, not even the folders made for --out; killed runs' leftovers go
    with staging(out, f".{name}.wsi-", ".*.wsi-*", lambda msg: warnings.warn(msg, stacklevel=6), unwritable) as tmp:
        run = _open_run(seg, reader, opts, str(tmp), progress, cancel, create=True)
        for blk in run.blocks():
            run.map_block(*blk)
        return _finish(run, reader, out, name, str(tmp), tiles_run=run.run_count,
                       t_maps=time.perf_counter() - t0, t0=t0)


def _open_run(seg: Any, reader: SlideReader, opts: SlideOptions, tmp: str, progress: Any, cancel: Any,
              create: bool, tissue: bool = True) -> _Run:
    """Level, region, normalisation, tissue mask and the map/label arrays (created or opened) of one slide run."""
    view = LevelView(reader, choose_level(reader, level=opts.level, mpp=opts.mpp, card_mpp=seg.card.pixel_size_um))
    region = _region(view, opts.roi, reader.path)
    run = _Run(seg, view, region, opts, _norm_stats(seg, reader), tmp, progress, cancel, create=create)
    if opts.tissue and tissue:
        run.tissue = tissue_mask(reader, margin=seg.card.tile * view.downsample)
    return run


def _finish(run: _Run, reader: SlideReader, out: Path, name: str, tmp: str, *, tiles_run: int, t_maps: float,
            t0: float) -> SlideSegmentation:
    """Pass 2 (labels, GeoJSON) and the outputs, staged in ``tmp`` and moved into ``out`` when all succeeded."""
    seg, view, opts = run.seg, run.view, run.opts
    t1 = time.perf_counter()
    staged = {k: os.path.join(tmp, f"{name}{s}") for k, s in OUTPUTS.items() if k != "geojson"}
    next_id, oversized, dropped = 1, 0, 0
    min_conf = parse_min_confidence(opts.min_confidence)
    if min_conf == "adaptive":  # COIN's per-image threshold over the whole slide's scores: one scoring pass
        scores = [run.block_scores(*blk) for blk in run.blocks()]
        min_conf = adaptive_threshold(np.concatenate(scores) if scores else np.zeros(0))
    if opts.geojson:
        staged["geojson"] = os.path.join(tmp, f"{name}.geojson")
    ctx = geojson.feature_writer(staged["geojson"]) if opts.geojson else _null()
    with ctx as write:
        for blk in run.blocks():
            next_id, n_cut, n_drop = run.label_block(*blk, next_id, write, min_confidence=min_conf)
            oversized += n_cut
            dropped += n_drop
    t_labels = time.perf_counter() - t1
    n = next_id - 1
    src = run.labels if n >= 65535 else _Cast(run.labels, np.uint16)
    write_ome_pyramid(staged["labels"], src, kind="labels", mpp=view.mpp, tile=opts.tiff_tile)
    for m in ("mean_sdf", "std", "prob"):
        write_ome_pyramid(staged[m], run.maps[m], kind="map", mpp=view.mpp, tile=opts.tiff_tile)
    d = view.downsample
    res = SlideSegmentation(
        outputs={k: str(out / Path(v).name) for k, v in staged.items()}, n_instances=n, tiles=run.plan.total,
        tiles_run=tiles_run, tiles_skipped=max(0, run.plan.total - tiles_run), level=view.level,
        downsample=d, mpp=view.mpp, roi=(round(run.ox * d), round(run.oy * d), round(run.w * d), round(run.h * d)),
        shape=(run.h, run.w), samples=run.k, steps=seg.settings.steps, nfe=seg.nfe, oversized=oversized,
        timings={"maps_s": t_maps, "labels_s": t_labels, "total_s": time.perf_counter() - t0},
        min_confidence=min_conf, dropped=dropped)
    write_json(staged["json"], {**res.summary(), "slide": reader.path, "card": seg.card.to_dict(),
                                "backend": seg.backend_info})
    for k, v in staged.items():
        os.replace(v, res.outputs[k])
    return res


# -- the same run split into region units (cohorts spread one huge slide over several workers) ----------------
def prepare_regions(seg: Any, reader: SlideReader, work_dir: str | Path, *, options: SlideOptions | None = None,
                    region_blocks: int = 16) -> int:
    """Create the shared map/label arrays of a slide run in ``work_dir``; return the number of region parts.

    The slide's blocks (raster order) are cut into parts of about ``region_blocks`` blocks each. Every part can
    then run on any worker (:func:`map_region`), in any order, and :func:`finish_regions` labels and writes the
    outputs. A block's maps do not depend on which part computed them (each block blends every tile over it;
    a tile's noise is seeded by its plan index), so the outputs equal those of :func:`segment_slide`.
    """
    opts = options or SlideOptions()
    work = Path(work_dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run = _open_run(seg, reader, opts, str(work), None, None, create=True, tissue=False)
    return max(1, math.ceil(len(run.blocks()) / max(1, region_blocks)))


def map_region(seg: Any, reader: SlideReader, work_dir: str | Path, part: int, parts: int, *,
               options: SlideOptions | None = None, progress: Any = None, cancel: Any = None) -> int:
    """Compute the maps of region part ``part`` of ``parts`` into ``work_dir``; return the tiles run."""
    opts = options or SlideOptions()
    run = _open_run(seg, reader, opts, str(work_dir), progress, cancel, create=False)
    blocks = run.blocks()
    lo, hi = part * len(blocks) // parts, (part + 1) * len(blocks) // parts
    for blk in blocks[lo:hi]:
        run.map_block(*blk)
    return run.run_count


def finish_regions(seg: Any, reader: SlideReader, work_dir: str | Path, out_dir: str | Path, *,
                   name: str | None = None, options: SlideOptions | None = None, tiles_run: int = 0,
                   maps_s: float = 0.0) -> SlideSegmentation:
    """Label the maps every part wrote and write the outputs (as :func:`segment_slide`); remove ``work_dir``."""
    opts = options or SlideOptions()
    t0 = time.perf_counter()
    out = Path(out_dir)
    _check_writable(out)
    name = name or Path(reader.path).name.split(".")[0]
    try:
        run = _open_run(seg, reader, opts, str(work_dir), None, None, create=False, tissue=False)
        return _finish(run, reader, out, name, str(work_dir), tiles_run=tiles_run, t_maps=maps_s, t0=t0 - maps_s)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


class _Cast:
    """Array-like view casting blocks to ``dtype`` on read."""

    def __init__(self, arr: Any, dtype: Any) -> None:
        self.arr, self.dtype, self.shape = arr, np.dtype(dtype), arr.shape

    def __getitem__(self, idx: Any) -> NDArray:
        return np.asarray(self.arr[idx]).astype(self.dtype)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- command line (``runtime segment`` routes slides here) -----------------------------------------------------
def wants_slide(args: Any, path: str | Path) -> bool:
    """True if ``path`` takes the streaming path: a slide, or any ROI/level/mpp/GeoJSON request."""
    from segflow.runtime.slide import is_slide

    asked = any(getattr(args, k, None) is not None for k in ("roi", "level", "mpp")) or bool(
        getattr(args, "geojson", None))
    return asked or is_slide(path)


def _options(args: Any) -> SlideOptions:
    if args.block < 64:
        raise InputError(f"--block {args.block} is too small: use at least 64 pixels.")
    return SlideOptions(roi=parse_roi(args.roi), level=args.level, mpp=args.mpp, tissue=args.tissue,
                        block=args.block, geojson=args.geojson is not False,
                        min_confidence=parse_min_confidence(getattr(args, "min_confidence", None)))


def check_slides(seg: Any, paths: list[Path], args: Any) -> None:
    """Open every slide and resolve its level and ROI before anything is written."""
    from segflow.runtime.slide import open_slide

    opts = _options(args)
    for p in paths:
        with open_slide(p) as reader, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run says them, once (this check used to say them first)
            view = LevelView(reader, choose_level(reader, level=opts.level, mpp=opts.mpp,
                                                  card_mpp=seg.card.pixel_size_um))
            _region(view, opts.roi, str(p))
            as_channels(reader.read_region(0, 0, 1, 1, level=view.level), seg.card.in_channels, name=f"slide {p}")


def run_slides(seg: Any, paths: list[Path], args: Any) -> None:
    """Segment each slide with a progress bar (tiles done, time left); print one line per slide."""
    import sys

    from segflow.runtime.slide import open_slide

    from segflow.progress import Progress

    opts = _options(args)
    for i, p in enumerate(paths, start=1):
        with open_slide(p) as reader, Progress(total=1, desc=f"[slide {i}/{len(paths)}] {p.name}",
                                               enabled=args.progress, unit="tile") as bar:
            def tick(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            res = segment_slide(seg, reader, args.out, name=p.name.split(".")[0], options=opts, progress=tick)
        if args.progress is not False:
            print(f"{p}: {res.n_instances} instances at level {res.level} ({res.tiles_run}/{res.tiles} tiles run), "
                  f"{res.timings['total_s']:.1f} s -> {args.out / p.name.split('.')[0]}_*.ome.tif", file=sys.stdout)
