"""QuPath-compatible GeoJSON: instance labels to polygon detections, streamed to disk, and back to labels.

Each instance becomes one Feature::

    {"type": "Feature", "id": "<uuid>", "geometry": {"type": "Polygon", "coordinates": [outer, hole, ...]},
     "properties": {"objectType": "detection", "classification": {"name": "Nucleus", "color": [r, g, b]},
                    "measurements": {"area": ..., "area_um2": ..., "confidence": ..., "mean_prob": ...,
                                     "mean_spread": ...}}}

Coordinates are slide pixels at full resolution (level 0, origin top-left, as QuPath expects). Polygons follow
the pixels' *edges*, as QuPath's own contour tracing does: pixel (x, y) of the processed level is the square
[x, x+1] x [y, y+1], so a vertex is a pixel corner ``(x0 + x) * downsample`` (``x0``: the ROI's offset at that
level), written only where the boundary turns. A polygon's area (QuPath's Area measurement) is therefore the
instance's pixel count, the ``area`` below, and :func:`rasterise` (pixels whose centre lies inside) gives the
label image back exactly. Background enclosed by an instance is a hole (an inner ring), so the area excludes it.
Rings keep the instance on their left in the coordinate numbers: outer rings have a positive signed area and
holes a negative one (RFC 7946's counter-clockwise exterior, seen clockwise on screen as y points down). Where
two pixels of an instance touch only at a corner, the boundary is split there so that no ring passes a point
twice: pieces joined only diagonally are separate polygons of a MultiPolygon touching at that point, and
background shut in but for a diagonal gap is a hole touching the outer ring there. The geometries are thus
valid simple features (OGC; what QuPath's JTS expects). An instance made of several pieces becomes a
MultiPolygon. Measurements (each only when its input is given):

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


# A vertex (X, Y) of the pixel grid is the corner shared by the pixels a = (X-1, Y-1), b = (X, Y-1), c = (X-1, Y)
# and d = (X, Y) (pixel (x, y) covers [x, x+1] x [y, y+1]); its code is a + 2b + 4c + 8d. A ring turns at every
# vertex with one or three of those pixels set, and twice at a saddle (a diagonal pair: codes 6 and 9); it runs
# straight through every other vertex, which is therefore never written.
_CORNER = np.isin(np.arange(16), (1, 2, 4, 7, 8, 11, 13, 14, 6, 9))
_SADDLE = np.isin(np.arange(16), (6, 9))


def _trace(p: NDArray[np.bool_]) -> list[NDArray[np.int64]]:
    """Rings of pixel corners (X, Y) along the pixel edges of ``p``, whose border must be all False.

    Each edge keeps the mask on its left in the coordinate numbers, so an outer ring has a positive signed area
    and a hole a negative one. At a saddle the two pixels are first kept apart (4-connected); a ring that then
    passes the saddle twice is cut there into two rings touching at that point, so no ring repeats a vertex.
    """
    code = (p[:-1, :-1] | (p[:-1, 1:] << 1) | (p[1:, :-1] << 2) | (p[1:, 1:] << 3)).astype(np.uint8)
    w = code.shape[1]
    flat = np.flatnonzero(_CORNER[code])  # row-major: sorted by (Y, X)
    cc = code.ravel()[flat].astype(np.int64)
    sad = _SADDLE[cc]
    per = 1 + sad
    first = np.cumsum(per) - per  # node of each corner; a saddle has two, for the left and the right run
    node = np.repeat(np.arange(len(flat)), per)
    n = len(node)
    nxt = np.empty(n, np.int64)
    # horizontal runs join consecutive nodes of a row; pixel d set at the left end: a top edge, heading +x
    h0, h1 = np.arange(0, n, 2), np.arange(1, n, 2)
    east = (cc[node[h0]] & 8) > 0
    nxt[h0[east]] = h1[east]
    nxt[h1[~east]] = h0[~east]
    # vertical runs join consecutive nodes of a column (column-major order); a saddle lists the node of its
    # upper run first: the left one (pixel a's) for code 9, the right one (pixel b's) for code 6
    order = np.lexsort((flat // w, flat % w))
    start = np.repeat(first[order], per[order])
    j = np.arange(n) - np.repeat(np.cumsum(per[order]) - per[order], per[order])
    vert = start + np.where(np.repeat(cc[order], per[order]) == 6, 1 - j, j)
    v0, v1 = vert[0::2], vert[1::2]
    south = (cc[node[v0]] & 4) > 0  # pixel c set below the upper end: a right edge, heading +y
    nxt[v0[south]] = v1[south]
    nxt[v1[~south]] = v0[~south]
    xy = np.stack([flat % w + 1, flat // w + 1], 1)[node]
    if not sad.any():  # the common case: every vertex is met once
        rings, seen, nx = [], np.zeros(n, bool), nxt.tolist()
        for s in range(n):
            if seen[s]:
                continue
            cyc, k = [s], nx[s]
            while k != s:
                cyc.append(k)
                k = nx[k]
            seen[cyc] = True
            rings.append(xy[cyc])
        return rings
    return [xy[c] for c in _walk(nxt.tolist(), node.tolist(), sad[node].tolist())]


def _walk(nx: list[int], corner: list[int], saddle: list[bool]) -> list[list[int]]:
    """Cycles of the permutation ``nx``, each cut where it comes back to a saddle corner it already passed."""
    seen = [False] * len(nx)
    cycles = []
    for s in range(len(nx)):
        stack: list[int] = []
        at: dict[int, int] = {}  # saddle corner -> its place on the stack
        k = s
        while not seen[k]:
            seen[k] = True
            if saddle[k]:
                c = corner[k]
                if c in at:  # back at this corner: the loop since then becomes a ring of its own
                    i = at[c]
                    cycles.append(stack[i:])
                    for q in stack[i + 1 :]:
                        at.pop(corner[q], None)
                    del stack[i + 1 :]
                    k = nx[k]
                    continue
                at[c] = len(stack)
            stack.append(k)
            k = nx[k]
        if stack:
            cycles.append(stack)
    return cycles


def _signed_area(ring: NDArray) -> float:
    """Shoelace area of an open ring (not repeated at the end); positive when counter-clockwise in the numbers."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) + x[-1] * y[0] - y[-1] * x[0])


def _contains(ring: NDArray, x: float, y: float) -> bool:
    """Whether (x, y), a point on no edge of ``ring`` (open: not repeated at the end), lies inside it."""
    x1, y1 = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    cross = (y1 > y) != (y2 > y)
    xs = x1[cross] + (y - y1[cross]) * (x2[cross] - x1[cross]) / (y2[cross] - y1[cross])
    return bool(np.count_nonzero(xs > x) % 2)


def _geometry(p: NDArray[np.bool_], ox: float, oy: float, scale: float) -> dict | None:
    """GeoJSON geometry of the padded mask ``p`` whose pixel (0, 0) is image pixel (ox, oy)."""
    rings = _trace(p)
    if not rings:
        return None
    areas = [_signed_area(r) for r in rings] if len(rings) > 1 else [1.0]  # a lone ring is an outer one
    shells = [k for k, a in enumerate(areas) if a > 0]
    polys: dict[int, list[NDArray]] = {k: [rings[k]] for k in shells}
    for k, a in enumerate(areas):
        if a > 0:
            continue
        owner = shells[0]
        if len(shells) > 1:  # the smallest shell around the middle of the hole's first edge (on no other ring)
            mx, my = (rings[k][0] + rings[k][1]) / 2
            owner = min((s for s in shells if _contains(rings[s], mx, my)), key=lambda s: areas[s])
        polys[owner].append(rings[k])
    shift = np.array([ox, oy], np.float64)
    coords = [[np.round((np.concatenate([r, r[:1]]) + shift) * scale, 3).tolist() for r in polys[k]] for k in shells]
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def mask_polygons(mask: NDArray, *, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> dict | None:
    """GeoJSON geometry (Polygon or MultiPolygon with holes) of a binary mask; None when the mask is empty.

    The rings follow the pixels' edges: pixel (x, y) is the square [x, x+1] x [y, y+1], a vertex is a pixel
    corner where the boundary turns, and a polygon's area is its pixel count. ``offset`` (x, y) is added to the
    corner coordinates and the result multiplied by ``scale`` (the downsample). Pixels touching only at a corner
    are separate polygons, or a hole touching its outer ring at that corner (see the module notes).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True; m[2, 2] = False
    >>> g = mask_polygons(m)
    >>> g["type"], g["coordinates"][0]
    ('Polygon', [[1.0, 1.0], [4.0, 1.0], [4.0, 4.0], [1.0, 4.0], [1.0, 1.0]])
    >>> g["coordinates"][1]  # the one-pixel hole, the other way round
    [[2.0, 2.0], [2.0, 3.0], [3.0, 3.0], [3.0, 2.0], [2.0, 2.0]]
    """
    p = np.pad(np.asarray(mask, bool), 1)
    return _geometry(p, offset[0] - 1, offset[1] - 1, scale)


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
        m = np.pad(labels[sl] == i, 1)  # pixel (0, 0) of m is image pixel (x0 - 1, y0 - 1)
        geom = _geometry(m, offset[0] + sl[1].start - 1, offset[1] + sl[0].start - 1, scale)
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


def _fill(rings: list[NDArray], shape: tuple[int, int]) -> tuple[tuple[slice, slice], NDArray[np.bool_]] | None:
    """Pixels whose centre lies inside an odd number of the closed ``rings`` (pixel-corner coordinates: pixel
    (x, y) is the square [x, x+1] x [y, y+1], centre (x + 0.5, y + 0.5)): the box of ``shape`` they lie in and
    their mask there; None when the rings miss the image. One crossing-number scan per row of the box."""
    edges = np.concatenate([np.concatenate([r[:-1], r[1:]], 1) for r in rings])
    edges = edges[edges[:, 1] != edges[:, 3]]  # horizontal edges cross no row of centres
    lo, hi = np.floor(edges.min(0)[:2]).astype(int), np.ceil(edges.max(0)[:2]).astype(int)
    r0, r1, c0, c1 = max(lo[1], 0), min(hi[1], shape[0]), max(lo[0], 0), min(hi[0], shape[1])
    if r1 <= r0 or c1 <= c0:
        return None
    x1, y1, x2, y2 = edges.T
    yc = np.arange(r0, r1) + 0.5
    rr, ee = np.nonzero((y1 > yc[:, None]) != (y2 > yc[:, None]))
    xs = x1[ee] + (yc[rr] - y1[ee]) * (x2[ee] - x1[ee]) / (y2[ee] - y1[ee])
    # a crossing at xs flips the pixels of its row whose centre lies left of it: columns below ceil(xs - 0.5)
    k = np.clip(np.ceil(xs - 0.5).astype(np.int64) - c0, 0, c1 - c0)
    n = c1 - c0 + 1
    cnt = np.bincount(rr * n + k, minlength=(r1 - r0) * n).reshape(r1 - r0, n)
    flips = cnt.sum(1, keepdims=True) - np.cumsum(cnt, 1)[:, :-1]  # crossings right of each centre
    return (slice(r0, r1), slice(c0, c1)), (flips & 1).astype(bool)


def rasterise(features: list[dict], shape: tuple[int, int], *, offset: tuple[float, float] = (0.0, 0.0),
              scale: float = 1.0) -> NDArray[np.int32]:
    """Label image (feature ``i`` -> label ``i + 1``) of the pixels whose centre lies inside each geometry.

    A pixel is inside a polygon when its centre is inside the outer ring and in none of the holes (even-odd
    rule over the polygon's rings), and inside a MultiPolygon when it is inside any of its polygons. For the
    pixel-edge polygons of :func:`mask_polygons` no centre lies on a ring, so this gives the label image back
    exactly. ``offset`` and ``scale`` undo those given to :func:`mask_polygons` (slide coordinates -> pixel
    corners of the label image). Later features overwrite earlier ones where they overlap.
    """
    out = np.zeros(shape, np.int32)
    for n, f in enumerate(features):
        g = f["geometry"]
        for poly in [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]:
            got = _fill([np.asarray(r, np.float64) / scale - offset for r in poly], shape)
            if got is not None:
                box, inside = got
                out[box][inside] = n + 1
    return out
