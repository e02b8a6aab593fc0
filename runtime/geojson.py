"""QuPath-compatible GeoJSON: instance labels to polygon detections, streamed to disk, and back to labels.

Each instance becomes one Feature::

    {"type": "Feature", "id": "<uuid>", "geometry": {"type": "Polygon", "coordinates": [outer, hole, ...]},
     "properties": {"objectType": "detection", "classification": {"name": "Nucleus", "color": [r, g, b]},
                    "measurements": {"area": ..., "area_um2": ..., "confidence": ..., "mean_prob": ...,
                                     "mean_spread": ...}}}

Coordinates are slide pixels at full resolution (level 0, origin top-left, as QuPath expects). Polygon
vertices are the *centres* of an instance's boundary pixels (``(x + 0.5) * downsample``) and holes are traced
along the centres of the hole's pixels, so :func:`rasterise` (pixels whose centre lies inside or on the
polygon) gives the label image back exactly. An instance made of several pieces becomes a MultiPolygon.
Measurements (each only when its input is given):

* ``area`` — pixel count in full-resolution pixels²; ``area_um2`` — the area in µm² when the pixel size is known.
* ``confidence`` — the instance score of :func:`segflow.runtime.confidence.instance_confidence` in [0, 1]: the
  mean over the K samples of the IoU between the instance and its best-matching connected component of
  ``sample <= threshold`` (exclusive IoU, docs/coin.md). The same number as the ``confidence`` of the instance's
  row in the runtime JSON's ``instance_table``. Needs the K samples (``samples``).
* ``mean_prob`` — the mean over the instance's pixels of the foreground probability (fraction of samples with
  ``sdf <= threshold``). A pixel-wise quantity, *not* the instance score.
* ``mean_spread`` — the mean over the instance's pixels of the per-pixel standard deviation of the K sampled
  SDFs (the JSON's ``mean_std``).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from segflow.imageio import atomic_path

DEFAULT_CLASS = {"name": "Nucleus", "color": [220, 60, 60]}
_NS = uuid.UUID("6f1c0f0e-5e9a-4c43-9a57-3f3b1d8c2a10")


def _ring(contour: NDArray, ox: float, oy: float, scale: float) -> list[list[float]]:
    pts = contour.reshape(-1, 2).astype(np.float64)
    if len(pts) < 3 or abs(_area(pts)) == 0:
        (x0, y0), (x1, y1) = pts.min(0) - 0.5, pts.max(0) + 0.5  # too few vertices: the pixels' box
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    xy = (pts + 0.5 + [ox, oy]) * scale
    ring = [[round(float(x), 3), round(float(y), 3)] for x, y in xy]
    return ring + [ring[0]]


def _area(pts: NDArray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def mask_polygons(mask: NDArray, *, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> dict | None:
    """GeoJSON geometry (Polygon or MultiPolygon with holes) of a binary mask; None when the mask is empty.

    ``offset`` (x, y) is added to pixel indices and the result multiplied by ``scale`` (the downsample).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True; m[2, 2] = False
    >>> g = mask_polygons(m)
    >>> g["type"], g["coordinates"][0]
    ('Polygon', [[1.5, 1.5], [1.5, 3.5], [3.5, 3.5], [3.5, 1.5], [1.5, 1.5]])
    >>> g["coordinates"][1]  # the one-pixel hole: its pixel's box
    [[2.0, 2.0], [3.0, 2.0], [3.0, 3.0], [2.0, 3.0], [2.0, 2.0]]
    """
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return None
    ox, oy = offset
    comps, n = ndi.label(m, structure=np.ones((3, 3), int))
    holes = ndi.binary_fill_holes(m) & ~m.astype(bool)
    hole_lab, n_holes = ndi.label(holes)  # 4-connected background pieces
    polys = []
    for k in range(1, n + 1):
        comp = (comps == k).astype(np.uint8)
        outer, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        rings = [_ring(max(outer, key=len), ox, oy, scale)]
        filled = ndi.binary_fill_holes(comp)
        for h in range(1, n_holes + 1):
            hm = hole_lab == h
            if filled[hm].all():
                hc, _ = cv2.findContours(hm.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                rings.append(_ring(max(hc, key=len), ox, oy, scale))
        polys.append(rings)
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def instance_measurements(labels: NDArray, ids: NDArray, *, scale: float = 1.0, mpp: float | None = None,
                          prob: NDArray | None = None, std: NDArray | None = None, samples: NDArray | None = None,
                          threshold: float = 0.0, confidence: NDArray | None = None) -> dict[int, dict[str, float]]:
    """Per-instance measurements for the label ``ids`` (see the module notes for their meaning).

    ``area`` is in full-resolution pixels² (pixel count times ``scale``²), ``area_um2`` uses ``mpp`` (microns per
    full-resolution pixel). ``confidence`` is the K-sample instance score of ``samples`` ((K, H, W) SDFs, mask
    ``sdf <= threshold``, or boolean masks), computed on the whole of ``labels`` so that neighbours clip sample
    components as in the runtime JSON; a caller that already has the scores passes them as ``confidence``
    (aligned with ``ids``). ``mean_prob`` and ``mean_spread`` are the means of ``prob`` and ``std``.
    """
    ids = np.asarray(ids)
    count = ndi.sum_labels(np.ones(labels.shape, np.float64), labels, ids)
    cols: dict[str, NDArray] = {"area": count * scale * scale}
    if mpp:
        cols["area_um2"] = count * (scale * mpp) ** 2
    if confidence is not None:
        cols["confidence"] = np.asarray(confidence, np.float64)
    elif samples is not None:
        from segflow.runtime.confidence import instance_confidence

        sc = instance_confidence(labels, samples, threshold=threshold, std=np.zeros(labels.shape, np.float32))
        cols["confidence"] = sc.confidence[np.searchsorted(sc.ids, ids)]
    if prob is not None:
        cols["mean_prob"] = ndi.mean(prob, labels, ids)
    if std is not None:
        cols["mean_spread"] = ndi.mean(std, labels, ids)
    return {int(i): {k: round(float(v[j]), 6) for k, v in cols.items()} for j, i in enumerate(ids)}


def feature(geometry: dict, *, key: str, measurements: dict[str, float] | None = None,
            classification: dict | None = None) -> dict[str, Any]:
    """One QuPath detection Feature; ``id`` is a UUID derived from ``key`` (stable across runs)."""
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_NS, key)),
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "classification": dict(classification or DEFAULT_CLASS),
            "measurements": dict(measurements or {}),
        },
    }


def label_features(labels: NDArray, *, ids: NDArray | None = None, offset: tuple[float, float] = (0.0, 0.0),
                   scale: float = 1.0, mpp: float | None = None, prob: NDArray | None = None,
                   std: NDArray | None = None, samples: NDArray | None = None, threshold: float = 0.0,
                   confidence: NDArray | None = None, key: str = "", id_map: dict[int, int] | None = None,
                   classification: dict | None = None) -> Iterator[dict[str, Any]]:
    """Yield one Feature per instance of ``labels`` (all ids, or ``ids``); ``id_map`` renames ids in keys.

    ``samples`` ((K, H, W) sampled SDFs of the same window, or boolean masks) and ``threshold`` give the
    ``confidence`` measurement (or pass the scores, aligned with ``ids``, as ``confidence``); ``prob`` gives
    ``mean_prob``, ``std`` gives ``mean_spread``.
    """
    if ids is None:
        ids = np.unique(labels)
        ids = ids[ids != 0]
    if len(ids) == 0:
        return
    meas = instance_measurements(labels, ids, scale=scale, mpp=mpp, prob=prob, std=std, samples=samples,
                                 threshold=threshold, confidence=confidence)
    boxes = ndi.find_objects(labels, max_label=int(np.max(ids)))
    for i in ids:
        sl = boxes[int(i) - 1]
        m = np.pad(labels[sl] == i, 1)
        y0, x0 = sl[0].start - 1, sl[1].start - 1
        geom = mask_polygons(m, offset=(offset[0] + x0, offset[1] + y0), scale=scale)
        gid = id_map[int(i)] if id_map else int(i)
        yield feature(geom, key=f"{key}:{gid}", measurements=meas[int(i)], classification=classification)


@contextmanager
def feature_writer(path: str | Path) -> Iterator:
    """Stream Features into a FeatureCollection file atomically; yields ``write(feature)``."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        first = [True]

        def write(feat: dict) -> None:
            fh.write(("" if first[0] else ",\n") + json.dumps(feat, separators=(",", ":")))
            first[0] = False

        yield write
        fh.write("\n]}\n")
        fh.flush()


def validate_feature_collection(obj: Any) -> int:
    """Check the QuPath GeoJSON structure; return the number of features or raise ``ValueError`` naming the fault."""
    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection" or not isinstance(obj.get("features"), list):
        raise ValueError("top level must be {'type': 'FeatureCollection', 'features': [...]}")
    seen: set[str] = set()
    for n, f in enumerate(obj["features"]):
        where = f"feature {n}"
        if not isinstance(f, dict) or f.get("type") != "Feature":
            raise ValueError(f"{where} is not a Feature")
        uuid.UUID(str(f.get("id")))
        if f["id"] in seen:
            raise ValueError(f"{where} repeats id {f['id']}")
        seen.add(f["id"])
        _check_geometry(f.get("geometry"), where)
        props = f.get("properties")
        if not isinstance(props, dict) or props.get("objectType") != "detection":
            raise ValueError(f"{where} needs properties.objectType 'detection'")
        cls = props.get("classification")
        if not (isinstance(cls, dict) and isinstance(cls.get("name"), str) and isinstance(cls.get("color"), list)
                and len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])):
            raise ValueError(f"{where} needs classification {{'name': str, 'color': [r, g, b]}}")
        meas = props.get("measurements")
        finite = isinstance(meas, dict) and all(isinstance(v, int | float) and math.isfinite(v) for v in meas.values())
        if not finite:
            raise ValueError(f"{where} needs measurements as a flat {{name: finite number}} object")
    return len(obj["features"])


def _check_geometry(g: Any, where: str) -> None:
    if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"{where} geometry must be a Polygon or MultiPolygon")
    polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
    for poly in polys:
        if not poly:
            raise ValueError(f"{where} has an empty polygon")
        for ring in poly:
            if len(ring) < 4 or ring[0] != ring[-1]:
                raise ValueError(f"{where} has a ring that is not closed or has fewer than 4 positions")
            if not all(len(p) == 2 and all(math.isfinite(c) for c in p) for p in ring):
                raise ValueError(f"{where} has a position that is not two finite numbers")


def _ring_mask(ring: NDArray, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Pixels whose centre (index coordinates) lies inside or on the closed ``ring`` (crossing-number test)."""
    out = np.zeros(shape, bool)
    lo = np.maximum(np.floor(ring.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(ring.max(0)).astype(int) + 1, [shape[1], shape[0]])
    if (hi <= lo).any():
        return out
    y, x = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float64)
    inside = np.zeros(x.shape, bool)
    on = np.zeros(x.shape, bool)
    for (x1, y1), (x2, y2) in zip(ring[:-1], ring[1:], strict=True):
        cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
        on |= (np.abs(cross) < 1e-6) & (np.minimum(x1, x2) - 1e-6 <= x) & (x <= np.maximum(x1, x2) + 1e-6) \
            & (np.minimum(y1, y2) - 1e-6 <= y) & (y <= np.maximum(y1, y2) + 1e-6)
        if y1 != y2:
            inside ^= ((y1 > y) != (y2 > y)) & (x < x1 + (y - y1) * (x2 - x1) / (y2 - y1))
    out[lo[1] : hi[1], lo[0] : hi[0]] = inside | on
    return out


def rasterise(features: list[dict], shape: tuple[int, int], *, offset: tuple[float, float] = (0.0, 0.0),
              scale: float = 1.0) -> NDArray[np.int32]:
    """Label image (feature ``i`` -> label ``i + 1``) of pixels whose centre lies in or on each polygon.

    Holes remove the pixels in or on their rings. ``offset`` and ``scale`` undo those given to
    :func:`mask_polygons` (slide coordinates -> pixel indices of the label image).
    """
    out = np.zeros(shape, np.int32)
    for n, f in enumerate(features):
        g = f["geometry"]
        for poly in [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]:
            rings = [np.asarray(r, np.float64) / scale - [offset[0] + 0.5, offset[1] + 0.5] for r in poly]
            layer = _ring_mask(rings[0], shape)
            for hole in rings[1:]:
                layer &= ~_ring_mask(hole, shape)
            out[layer] = n + 1
    return out
