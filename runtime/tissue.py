"""A quick low-resolution tissue mask, so tiles of empty glass are skipped.

The slide is read at a coarse level (or shrunk block by block when it has no pyramid) to a thumbnail of at most
``max_side`` pixels, then thresholded with Otsu's method:

* colour (brightfield) slides: the score is ``max(saturation, 1 - value)`` — glass is bright and grey, stained
  tissue is coloured or dark; the threshold is never below ``min_score`` so a blank slide stays blank;
* grayscale (fluorescence) slides: the score is the intensity scaled to [0, 1] (bright = signal).

Small specks are removed and the mask is dilated by ``margin`` level-0 pixels (tile context), so cells at the
tissue edge keep their neighbourhood.

Example
-------
>>> img = np.full((64, 64, 3), 240, np.uint8); img[16:40, 20:50] = (150, 60, 140)
>>> m, thr = detect_tissue(img)
>>> int(m.sum()), int(m[20, 30]), int(m[0, 0])
(720, 1, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from segflow.runtime.slide import SlideReader

from segflow.normalize import dtype_scale

__all__ = ["TissueMask", "detect_tissue", "tissue_mask", "thumbnail"]


@dataclass(frozen=True)
class TissueMask:
    """A low-resolution boolean mask and its downsample (level-0 pixels per mask pixel)."""

    mask: NDArray[np.bool_]
    downsample: float
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """True if the level-0 box ``[x0, x1) x [y0, y1)`` touches tissue."""
        d = self.downsample
        h, w = self.mask.shape
        i0, j0 = max(0, int(math.floor(y0 / d))), max(0, int(math.floor(x0 / d)))
        i1, j1 = min(h, int(math.ceil(y1 / d))), min(w, int(math.ceil(x1 / d)))
        return bool(i1 > i0 and j1 > j0 and self.mask[i0:i1, j0:j1].any())


def _otsu(values: NDArray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = 0
    return float(edges[int(np.argmax(between)) + 1])


def detect_tissue(image: NDArray, *, min_score: float = 0.1, min_area: int = 4) -> tuple[NDArray[np.bool_], float]:
    """Threshold a small image into tissue (True) and background; return ``(mask, threshold)``."""
    img = np.asarray(image)
    scale = dtype_scale(img.dtype) if img.dtype.kind != "f" else max(1.0, float(img.max(initial=0.0)))
    a = img.astype(np.float32) / scale
    if a.ndim == 3 and a.shape[2] >= 3:
        rgb = a[..., :3]
        v = rgb.max(axis=2)
        sat = np.where(v > 0, (v - rgb.min(axis=2)) / np.maximum(v, 1e-6), 0.0)
        score = np.maximum(sat, 1.0 - v)
    else:
        g = a[..., 0] if a.ndim == 3 else a
        lo, hi = float(g.min(initial=0.0)), float(g.max(initial=0.0))
        score = (g - lo) / (hi - lo) if hi - lo > 1e-3 else np.zeros_like(g)
    thr = max(_otsu(score.ravel()), min_score)
    mask = score > thr
    lab, n = ndi.label(mask)
    if n:
        sizes = ndi.sum_labels(np.ones(mask.shape), lab, np.arange(1, n + 1))
        mask = np.isin(lab, 1 + np.flatnonzero(sizes >= min_area))
    return mask, thr


def thumbnail(reader: SlideReader, *, max_side: int = 1024, block: int = 4096) -> tuple[NDArray, float]:
    """A thumbnail of at most ``max_side`` pixels a side and its downsample, read in bounded memory."""
    import cv2

    lv = min(reader.levels, key=lambda v: (max(v.height, v.width) < max_side, -max(v.height, v.width)))
    fits = [v for v in reader.levels if max(v.height, v.width) <= 4 * max_side]
    lv = min(fits, key=lambda v: abs(max(v.height, v.width) - max_side)) if fits else reader.levels[-1]
    f = max(1, int(math.ceil(max(lv.height, lv.width) / max_side)))
    oh, ow = max(1, lv.height // f), max(1, lv.width // f)
    out = np.zeros((oh, ow, reader.channels) if reader.channels > 1 else (oh, ow), reader.dtype)
    step = max(f, (block // f) * f)
    for y in range(0, oh * f, step):
        for x in range(0, ow * f, step):
            h, w = min(step, oh * f - y), min(step, ow * f - x)
            region = reader.read_region(x, y, w, h, level=lv.index)
            small = cv2.resize(region, (w // f, h // f), interpolation=cv2.INTER_AREA) if f > 1 else region
            out[y // f : y // f + h // f, x // f : x // f + w // f] = small
    return out, lv.downsample * f


def tissue_mask(reader: SlideReader, *, margin: float = 0.0, max_side: int = 1024, min_score: float = 0.1
                ) -> TissueMask:
    """Tissue mask of a slide from a thumbnail, dilated by ``margin`` level-0 pixels."""
    thumb, ds = thumbnail(reader, max_side=max_side)
    mask, thr = detect_tissue(thumb, min_score=min_score)
    r = int(math.ceil(margin / ds))
    if r > 0 and mask.any():
        mask = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=r)
    return TissueMask(mask, ds, thr)
