"""Region readers: pyramidal OME-TIFF, plain tiled TIFF, pixel size, level choice and bad slides."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("zarr", reason="slide reading needs the wsi extra: pip install -e '.[wsi]'")
import tifffile
from segflow.runtime.slide import ArrayReader, LevelChoice, LevelView, choose_level, is_slide, open_slide
from slide_helpers import write_pyramid

from segflow.errors import InputError, MissingDependency

RNG = np.random.default_rng(7)
IMAGE = RNG.integers(0, 256, (150, 230, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    return write_pyramid(tmp_path_factory.mktemp("p") / "p.ome.tif", IMAGE, levels=3, tile=32, mpp=0.25)


def test_pyramid_levels_regions_and_mpp(pyramid):
    with open_slide(pyramid) as r:
        assert [(lv.height, lv.width, lv.downsample) for lv in r.levels] == [
            (150, 230, 1.0), (75, 115, 2.0), (38, 58, 230 / 58)]
        assert r.mpp == 0.25 and r.levels[1].mpp == 0.5 and r.channels == 3
        np.testing.assert_array_equal(r.read_region(33, 17, 70, 41), IMAGE[17:58, 33:103])
        np.testing.assert_array_equal(r.read_region(100, 60, 15, 15, level=1), IMAGE[::2, ::2][60:75, 100:115])
    assert is_slide(pyramid)


def test_channels_first_and_resolution_tags(tmp_path):
    planes = np.moveaxis(IMAGE[:64, :80], -1, 0).copy()  # (C, Y, X) stored as separate planes
    p = tmp_path / "cyx.tif"
    tifffile.imwrite(p, planes, tile=(32, 32), photometric="minisblack", planarconfig="separate",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(p) as r:
        assert r.mpp == pytest.approx(0.5) and r.channels == 3
        np.testing.assert_array_equal(r.read_region(5, 6, 20, 10), IMAGE[6:16, 5:25])
    assert not is_slide(p)  # small, one level: the ordinary image path


def test_svs_style_description_gives_mpp(tmp_path):
    p = tmp_path / "a.svs"
    tifffile.imwrite(p, IMAGE[:64, :64], tile=(32, 32), photometric="rgb",
                     description="Aperio Image Library v12\n64x64 -> 64x64 |AppMag = 40|MPP = 0.2520")
    with open_slide(p) as r:
        assert r.mpp == pytest.approx(0.252)


def test_choose_level_by_pixel_size(pyramid):
    with open_slide(pyramid) as r:
        assert choose_level(r) == LevelChoice(0, 1.0, 0.25)
        assert choose_level(r, card_mpp=0.5) == LevelChoice(1, 1.0, 0.5)
        assert choose_level(r, card_mpp=0.52) == LevelChoice(1, 1.0, 0.5)  # within 10 %
        assert choose_level(r, mpp=0.75, card_mpp=0.25) == LevelChoice(1, 1.5, 0.75)  # resampled from level 1
        assert choose_level(r, level=2).level == 2
        view = LevelView(r, choose_level(r, mpp=0.75))
        assert (view.height, view.width, view.downsample) == (50, 76, 3.0)
        assert view.read(0, 0, 76, 50).shape == (50, 76, 3)
        with pytest.raises(InputError, match="no pyramid level 3"):
            choose_level(r, level=3)
        with pytest.raises(InputError, match="only one"):
            choose_level(r, level=1, mpp=0.5)


def test_level_from_unknown_pixel_size_warns():
    r = ArrayReader(IMAGE)
    with pytest.warns(UserWarning, match="does not record its pixel size"):
        assert choose_level(r, card_mpp=0.5) == LevelChoice(0, 1.0, None)
    with pytest.raises(InputError, match="--mpp cannot be honoured"):
        choose_level(r, mpp=0.5)


def test_region_outside_the_slide(pyramid):
    with open_slide(pyramid) as r:
        for box in [(-1, 0, 10, 10), (200, 0, 31, 10), (0, 0, 0, 5), (0, 70, 10, 10)]:
            with pytest.raises(InputError, match="lies outside level"):
                r.read_region(*box, level=0 if box[1] != 70 else 1)


def test_truncated_and_corrupt_slides(pyramid, tmp_path):
    cut = tmp_path / "cut.ome.tif"
    shutil.copy(pyramid, cut)
    os.truncate(cut, os.path.getsize(cut) // 2)
    with pytest.raises(InputError, match="truncated|not a readable"):
        open_slide(cut)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(InputError, match="not a readable TIFF"):
        open_slide(bad)
    with pytest.raises(InputError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_damaged_tile_data_is_reported(tmp_path):
    p = tmp_path / "z.tif"
    tifffile.imwrite(p, IMAGE[:64, :64], tile=(32, 32), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(p) as t:
        off = t.pages[0].dataoffsets[3]
    data = bytearray(p.read_bytes())
    data[off : off + 16] = b"\x00" * 16  # break the last tile's zlib stream
    p.write_bytes(bytes(data))
    with open_slide(p) as r:
        assert r.read_region(0, 0, 32, 32).shape == (32, 32, 3)
        with pytest.raises(InputError, match="corrupt or truncated"):
            r.read_region(32, 32, 32, 32)


def test_openslide_formats_need_the_extra(tmp_path):
    p = tmp_path / "x.mrxs"
    p.write_bytes(b"")
    try:
        import openslide  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependency, match="segflow\\[wsi\\]"):
            open_slide(p)
    else:  # pragma: no cover - only where openslide is installed
        with pytest.raises(InputError):
            open_slide(p)
