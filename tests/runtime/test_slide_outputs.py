"""Viewer outputs: pyramidal OME-TIFF, QuPath GeoJSON (structure and round trip), tissue mask."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from segflow.runtime import geojson
from segflow.runtime.ometiff import pyramid_shapes, read_level, write_ome_pyramid
from segflow.runtime.slide import ArrayReader
from segflow.runtime.tissue import TissueMask, detect_tissue, tissue_mask

from segflow.errors import InputError


def test_label_pyramid_keeps_ids_and_metadata(tmp_path):
    lab = np.arange(70 * 90, dtype=np.uint32).reshape(70, 90)
    p = tmp_path / "l.ome.tif"
    write_ome_pyramid(p, lab, kind="labels", mpp=0.5, tile=32)
    with tifffile.TiffFile(p) as t:
        s = t.series[0]
        assert [lv.shape for lv in s.levels] == pyramid_shapes((70, 90), 32) == [(70, 90), (35, 45), (18, 23)]
        assert t.is_ome and 'PhysicalSizeX="0.5"' in t.ome_metadata
        assert t.pages[0].is_tiled and s.dtype == np.uint32
    np.testing.assert_array_equal(read_level(p, 0), lab)
    np.testing.assert_array_equal(read_level(p, 1), lab[::2, ::2])
    np.testing.assert_array_equal(read_level(p, 2), lab[::4, ::4])
    assert not [q for q in tmp_path.iterdir() if q.name != "l.ome.tif"]  # no staging left behind


@pytest.mark.parametrize("kind", ["labels", "map"])
def test_every_level_carries_its_own_resolution(tmp_path, kind):
    p = tmp_path / "r.ome.tif"
    write_ome_pyramid(p, np.ones((70, 91), np.uint16), kind=kind, mpp=0.25, tile=16)  # odd sides round up
    with tifffile.TiffFile(p) as t:
        levels = t.series[0].levels
        assert [lv.shape for lv in levels] == [(70, 91), (35, 46), (18, 23), (9, 12)]
        for i, lv in enumerate(levels):
            tags = lv.keyframe.tags
            ppcm = 1e4 / (0.25 * 2**i)  # 40000, 20000, 10000, 5000 pixels per cm
            for name in ("XResolution", "YResolution"):
                num, den = tags[name].value
                assert num / den == pytest.approx(ppcm, rel=1e-9), (i, name, num, den)
            assert tags["ResolutionUnit"].value == 3  # centimetre
        pixels = re.search(r"<Pixels [^>]*>", t.ome_metadata).group(0)  # OME-XML describes level 0 only
        for attr in ('PhysicalSizeX="0.25"', 'PhysicalSizeY="0.25"', 'PhysicalSizeXUnit="µm"',
                     'PhysicalSizeYUnit="µm"', 'SizeX="91"', 'SizeY="70"'):
            assert attr in pixels
    write_ome_pyramid(p, np.ones((40, 40), np.uint16), kind=kind, tile=16)  # no mpp: no pixel size claimed
    with tifffile.TiffFile(p) as t:
        assert "PhysicalSizeX" not in t.ome_metadata
        for lv in t.series[0].levels:
            unit = lv.keyframe.tags.get("ResolutionUnit")
            assert unit is None or unit.value == 1


def test_map_pyramid_averages_2x2(tmp_path):
    m = np.arange(17 * 19, dtype=np.float32).reshape(17, 19)  # odd sides: the last row/column is repeated
    p = tmp_path / "m.ome.tif"
    write_ome_pyramid(p, m, kind="map", tile=16)
    half = read_level(p, 1)
    assert half.shape == (9, 10) and half.dtype == np.float32
    np.testing.assert_array_equal(half[:8, :9], m[:16:2, :18:2] + (1 + 19 + 20) / 4)
    np.testing.assert_array_equal(half[:8, 9], m[:16:2, 18] + 19 / 2)
    np.testing.assert_array_equal(half[8, :9], m[16, :18:2] + 1 / 2)
    assert half[8, 9] == m[16, 18]


def test_unwritable_folder_leaves_nothing(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="not writable"):
        write_ome_pyramid(f / "o.ome.tif", np.zeros((8, 8), np.float32))


HOLE = np.array([[0, 0, 0, 0, 0, 0],
                 [0, 1, 1, 1, 1, 0],
                 [0, 1, 0, 0, 1, 0],
                 [0, 1, 1, 1, 1, 0],
                 [0, 0, 0, 0, 0, 2]])


def test_polygon_with_hole_hand_worked():
    g = geojson.mask_polygons(HOLE == 1)
    assert g["type"] == "Polygon" and len(g["coordinates"]) == 2
    outer, hole = g["coordinates"]
    # pixel edges: pixel (x, y) is the square [x, x+1] x [y, y+1]
    assert outer == [[1, 1], [5, 1], [5, 4], [1, 4], [1, 1]]
    assert hole == [[2, 2], [2, 3], [4, 3], [4, 2], [2, 2]]  # the other way round
    back = geojson.rasterise([{"geometry": g}], HOLE.shape)
    np.testing.assert_array_equal(back, (HOLE == 1).astype(np.int32))


def test_features_validate_and_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    lab = np.zeros((90, 120), np.int32)
    yy, xx = np.mgrid[:90, :120]
    for i in range(1, 25):
        cy, cx, r = rng.integers(0, 90), rng.integers(0, 120), rng.integers(2, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i  # later discs overwrite earlier ones
    lab[40:50, 40:50] = 30
    lab[43:47, 43:47] = 0
    lab[84:88, 2:6] = lab[84:88, 10:13] = 31  # one instance in two pieces: a MultiPolygon
    prob, std = rng.random(lab.shape), rng.random(lab.shape)
    p = tmp_path / "f.geojson"
    with geojson.feature_writer(p) as write:
        for f in geojson.label_features(lab, offset=(100, 200), scale=2.0, mpp=0.25, prob=prob, std=std, key="s"):
            write(f)
    fc = json.loads(p.read_text())
    ids = np.unique(lab)[1:]
    assert geojson.validate_feature_collection(fc) == len(ids)
    back = geojson.rasterise(fc["features"], lab.shape, offset=(100, 200), scale=2.0)
    for n, i in enumerate(ids, start=1):
        assert ((back == n) == (lab == i)).all()  # IoU exactly 1 per instance
        m = fc["features"][n - 1]["properties"]["measurements"]
        assert m["area"] == 4 * (lab == i).sum() and m["area_um2"] == pytest.approx((lab == i).sum() * 0.25)
        assert m["mean_prob"] == pytest.approx(prob[lab == i].mean(), abs=1e-6)
        assert m["mean_spread"] == pytest.approx(std[lab == i].mean(), abs=1e-6)
        assert "confidence" not in m  # the instance score needs the K samples, which were not given
    assert any(f["geometry"]["type"] == "MultiPolygon" for f in fc["features"])
    again = list(geojson.label_features(lab, offset=(100, 200), scale=2.0, key="s"))
    assert [f["id"] for f in again] == [f["id"] for f in fc["features"]]  # stable UUIDs


@pytest.mark.parametrize("breakage, match", [
    (lambda fc: fc.update(type="Feature"), "FeatureCollection"),
    (lambda fc: fc["features"][0].update(id="not-a-uuid"), "badly formed"),
    (lambda fc: fc["features"][0]["properties"].update(objectType="annotation"), "detection"),
    (lambda fc: fc["features"][0]["geometry"]["coordinates"][0].pop(), "closed"),
    (lambda fc: fc["features"][0]["properties"]["classification"].update(color=[0, 0]), "classification"),
    (lambda fc: fc["features"][0]["properties"]["measurements"].update(area=float("nan")), "finite"),
])
def test_validator_rejects_broken_collections(breakage, match):
    fc = {"type": "FeatureCollection", "features": list(geojson.label_features(HOLE, key="v"))}
    assert geojson.validate_feature_collection(fc) == 2
    breakage(fc)
    with pytest.raises(ValueError, match=match):
        geojson.validate_feature_collection(fc)


def test_tissue_mask_finds_stain_not_glass():
    img = np.full((200, 300, 3), 242, np.uint8)
    img[50:150, 30:130] = (170, 90, 160)  # stained tissue
    img[::7, ::11] = 235  # glass noise
    m = tissue_mask(ArrayReader(img), max_side=100, margin=0)
    assert m.downsample == 3.0 and m.mask.shape == (66, 100)
    assert m.any_in(60, 60, 70, 70) and not m.any_in(200, 10, 290, 190)
    assert 0.12 < m.fraction < 0.2  # 100x100 of 200x300 = 1/6
    blank, _ = detect_tissue(np.full((32, 32, 3), 240, np.uint8))
    assert not blank.any()
    grey, _ = detect_tissue(np.pad(np.full((8, 8), 200, np.uint8), 12))  # fluorescence: bright = signal
    assert grey.sum() == 64
    wide = TissueMask(np.eye(4, dtype=bool), 10.0, 0.5)
    assert wide.any_in(0, 0, 5, 5) and not wide.any_in(10, 0, 19, 9)
