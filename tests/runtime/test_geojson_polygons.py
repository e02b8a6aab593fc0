"""GeoJSON polygons follow pixel edges: area = pixel count, valid rings, exact round trip through rasterise."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.runtime import geojson


def polygons(g):
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]


def signed_area(ring):
    r = np.asarray(ring, np.float64)
    return 0.5 * float(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[:-1, 1], r[1:, 0]))


def area(g):
    return sum(signed_area(r) for poly in polygons(g) for r in poly)  # holes count negative


def check_rings(g):
    """Closed rings, no repeated point, a turn at every vertex, outer rings positive and holes negative."""
    for poly in polygons(g):
        for n, ring in enumerate(poly):
            assert len(ring) >= 5 and ring[0] == ring[-1]
            pts = np.asarray(ring[:-1], np.float64)
            assert len({tuple(p) for p in pts}) == len(pts), "a ring passes a point twice"
            d_in, d_out = pts - np.roll(pts, 1, 0), np.roll(pts, -1, 0) - pts
            assert (d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0).all(), "collinear vertex"
            assert (signed_area(ring) > 0) == (n == 0)


def disk(r):
    yy, xx = np.mgrid[-r - 2 : r + 3, -r - 2 : r + 3]
    return xx**2 + yy**2 <= r * r


L_SHAPE = np.array([[1, 0, 0],
                    [1, 0, 0],
                    [1, 1, 1]], bool)
DIAGONAL = np.array([[1, 0],
                     [0, 1]], bool)
RING = np.pad(np.ones((3, 3), bool), 1)
RING[2, 2] = False

SHAPES = {
    "disk49": disk(4), "disk113": disk(6), "disk317": disk(10),
    "square": np.ones((5, 5), bool), "L": L_SHAPE, "pixel": np.ones((1, 1), bool),
    "row": np.ones((1, 7), bool), "column": np.ones((6, 1), bool),
    "diagonal": DIAGONAL, "diagonal_line": np.eye(5, dtype=bool), "hole": RING,
    "hole_with_diagonal_gap": np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1]], bool),
    "island_in_hole": np.array([[1, 1, 1, 1, 1],
                                [1, 0, 0, 0, 1],
                                [1, 0, 1, 0, 1],
                                [1, 0, 0, 0, 1],
                                [1, 1, 1, 1, 1]], bool),
}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("offset, scale", [((0, 0), 1.0), ((7, -3), 2.0), ((25.0, 10.0), 4.0)])
def test_polygon_area_is_the_pixel_count_and_rasterises_back(name, offset, scale):
    m = SHAPES[name]
    g = geojson.mask_polygons(m, offset=offset, scale=scale)
    assert area(g) == m.sum() * scale**2
    check_rings(g)
    back = geojson.rasterise([{"geometry": g}], m.shape, offset=offset, scale=scale)
    np.testing.assert_array_equal(back, m.astype(np.int32))


def test_disk_areas_match_the_area_measurement():
    for r, pixels in ((4, 49), (6, 113), (10, 317)):
        lab = disk(r).astype(np.int32)
        (f,) = geojson.label_features(lab, offset=(3, 5), scale=2.0)
        assert f["properties"]["measurements"]["area"] == 4 * pixels == area(f["geometry"])


def test_hand_worked_rings():
    g = geojson.mask_polygons(L_SHAPE)
    assert g == {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 2], [3, 2], [3, 3], [0, 3], [0, 0]]]}
    g = geojson.mask_polygons(np.ones((1, 4), bool))  # one pixel wide: a thin rectangle, not a line
    assert g["coordinates"] == [[[0, 0], [4, 0], [4, 1], [0, 1], [0, 0]]]
    g = geojson.mask_polygons(DIAGONAL)  # touching only at a corner: two squares meeting at (1, 1)
    assert g == {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]],
                                                         [[[1, 1], [2, 1], [2, 2], [1, 2], [1, 1]]]]}
    g = geojson.mask_polygons(RING)  # the hole is an inner ring, the other way round
    assert g["coordinates"] == [[[1, 1], [4, 1], [4, 4], [1, 4], [1, 1]], [[2, 2], [2, 3], [3, 3], [3, 2], [2, 2]]]
    g = geojson.mask_polygons(SHAPES["hole_with_diagonal_gap"])  # the hole touches the outer ring at (1, 1)
    assert g["coordinates"] == [[[1, 0], [3, 0], [3, 3], [0, 3], [0, 1], [1, 1], [1, 0]],
                                [[1, 1], [1, 2], [2, 2], [2, 1], [1, 1]]]


def test_island_in_a_hole_is_its_own_polygon():
    m = SHAPES["island_in_hole"]
    g = geojson.mask_polygons(m)
    assert g["type"] == "MultiPolygon" and [len(p) for p in g["coordinates"]] == [2, 1]
    assert area(g) == m.sum() == 5 * 5 - 3 * 3 + 1


def test_level_and_roi_offset_give_slide_coordinates():
    """Level with downsample 4, ROI at level-0 (100, 40), i.e. (25, 10) level pixels: hand-worked corners."""
    lab = np.zeros((6, 8), np.int32)
    lab[1:4, 2:4] = 7  # level pixels x 2..3, y 1..3 of the ROI
    (f,) = geojson.label_features(lab, offset=(25, 10), scale=4.0, key="s")
    # corners at level (25 + 2, 10 + 1) .. (25 + 4, 10 + 4), times 4
    assert f["geometry"] == {"type": "Polygon",
                             "coordinates": [[[108.0, 44.0], [116.0, 44.0], [116.0, 56.0], [108.0, 56.0],
                                              [108.0, 44.0]]]}
    assert f["properties"]["measurements"]["area"] == 96.0 == area(f["geometry"])
    back = geojson.rasterise([f], lab.shape, offset=(25, 10), scale=4.0)
    np.testing.assert_array_equal(back > 0, lab == 7)


def test_random_masks_are_exact():
    rng = np.random.default_rng(11)
    for _ in range(300):
        h, w = rng.integers(1, 12, 2)
        m = rng.random((h, w)) < rng.uniform(0.2, 0.8)  # noise: many saddles, holes and islands
        g = geojson.mask_polygons(m, offset=(2, 3), scale=1.5)
        if not m.any():
            assert g is None
            continue
        assert area(g) == pytest.approx(m.sum() * 2.25, abs=1e-9), m
        check_rings(g)
        back = geojson.rasterise([{"geometry": g}], m.shape, offset=(2, 3), scale=1.5)
        np.testing.assert_array_equal(back > 0, m)


def test_label_image_round_trips_exactly():
    rng = np.random.default_rng(5)
    lab = np.zeros((120, 150), np.int32)
    yy, xx = np.mgrid[:120, :150]
    for i in range(1, 60):  # touching, overlapping-then-overwritten ellipses with ragged edges
        cy, cx = rng.integers(0, 120), rng.integers(0, 150)
        ry, rx = rng.uniform(1, 9, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + rng.normal(0, 0.2, lab.shape) <= 1
        lab[inside] = i
    lab[0, :5] = 70  # at the image border, one pixel high
    lab[10:20, 149] = 71  # one pixel wide, at the right border
    lab[100, 100] = lab[101, 101] = 72  # a diagonal pair
    ids = np.unique(lab)[1:]
    feats = list(geojson.label_features(lab, offset=(40, 8), scale=2.0, key="r"))
    back = geojson.rasterise(feats, lab.shape, offset=(40, 8), scale=2.0)
    np.testing.assert_array_equal(back, np.where(lab > 0, np.searchsorted(ids, lab) + 1, 0))  # feature n: ids[n]
    for f, i in zip(feats, ids, strict=True):
        assert area(f["geometry"]) == f["properties"]["measurements"]["area"] == 4 * (lab == i).sum()
        check_rings(f["geometry"])
