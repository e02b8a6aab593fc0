"""Region readers: pyramidal OME-TIFF, plain tiled TIFF, pixel size, level choice and bad slides."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr", reason="slide reading needs the wsi extra: pip install -e '.[wsi]'")
import tifffile
import zarr
from segflow.runtime import slide as slide_mod
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


def test_openslide_formats_need_the_extra(tmp_path, monkeypatch):
    p = tmp_path / "x.mrxs"
    p.write_bytes(b"")
    try:
        import openslide  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - only where openslide is installed
        with pytest.raises(InputError):
            open_slide(p)
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if it were not installed
    with pytest.raises(MissingDependency, match="run `pip install openslide-python openslide-bin`"):
        open_slide(p)


ZARR_FIX = r'run `pip install -U "tifffile>=2025\.5\.21" "zarr>=3\.0\.8"`\.$'


@pytest.mark.parametrize("module, old", [(tifffile, "2025.3.30"), (zarr, "3.0.6"), (zarr, "2.18.7")])
def test_too_old_tifffile_or_zarr_names_versions_and_fix(pyramid, monkeypatch, module, old):
    monkeypatch.setattr(module, "__version__", old)
    with pytest.raises(MissingDependency, match=ZARR_FIX) as err:
        open_slide(pyramid)
    assert f"{module.__name__} {old}" in str(err.value) and "\n" not in str(err.value)


def test_store_rejected_by_zarr_is_a_dependency_error(pyramid, monkeypatch):
    def reject(store, **kw):  # what zarr 3 does with the store of a tifffile older than 2025.5.21
        raise TypeError(f"Unsupported type for store_like: '{type(store).__name__}'")

    monkeypatch.setattr(zarr, "open", reject)
    with pytest.raises(MissingDependency, match="store_like.*" + ZARR_FIX):
        open_slide(pyramid)


def test_pins_match_the_reader():
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    wsi = project["optional-dependencies"]["wsi"]
    assert f"tifffile>={slide_mod.TIFFFILE_MIN}" in wsi and f"zarr>={slide_mod.ZARR_MIN}" in wsi
    assert "imagecodecs" in wsi  # the codec message says the extra brings it
    # the core keeps an older tifffile (images, OME-TIFF writing); slide reading checks the pair at run time
    assert any(d.startswith("tifffile>=") for d in project["dependencies"])


_NO_CODECS = """
import sys
sys.modules["imagecodecs"] = None  # as if imagecodecs were not installed
from segflow.errors import SegflowError
from segflow.runtime.slide import open_slide
for path in sys.argv[1:]:
    try:
        with open_slide(path) as r:
            r.read_region(0, 0, 32, 32)
        print("read")
    except SegflowError as exc:
        print(type(exc).__name__, exc)
"""


def test_missing_imagecodecs_is_a_dependency_not_a_corrupt_slide(tmp_path):
    pytest.importorskip("imagecodecs", reason="writing JPEG and LZW tiles needs imagecodecs")
    paths = []
    for name, kw in {"jpeg": {"compression": "jpeg"}, "lzw": {"compression": "lzw", "predictor": True},
                     "zlib": {"compression": "zlib"}}.items():
        paths.append(tmp_path / f"{name}.tif")
        tifffile.imwrite(paths[-1], IMAGE[:64, :64], tile=(32, 32), photometric="rgb", **kw)
        with open_slide(paths[-1]) as r:  # readable where imagecodecs is installed
            assert r.read_region(0, 0, 32, 32).shape == (32, 32, 3)
    out = subprocess.run([sys.executable, "-c", _NO_CODECS, *map(str, paths)], capture_output=True, text=True,
                         timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    for line, codec in zip(lines[:2], ("JPEG", "LZW"), strict=True):
        assert line.startswith("MissingDependency ") and f"({codec}-compressed)" in line, line
        assert "'imagecodecs' package" in line and "corrupt" not in line, line
        assert line.endswith('run `pip install imagecodecs` (part of the wsi extra: `pip install -e ".[wsi]"`).'), line
    assert lines[2] == "read"  # zlib needs no codec package


def test_damaged_jpeg_tile_is_still_corrupt(tmp_path):
    pytest.importorskip("imagecodecs", reason="writing JPEG tiles needs imagecodecs")
    p = tmp_path / "j.tif"
    tifffile.imwrite(p, IMAGE[:64, :64], tile=(32, 32), photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(p) as t:
        off, n = t.pages[0].dataoffsets[3], t.pages[0].databytecounts[3]
    data = bytearray(p.read_bytes())
    data[off : off + n] = b"\x00" * n  # the last tile is no longer a JPEG stream
    p.write_bytes(bytes(data))
    with open_slide(p) as r:
        assert r.read_region(0, 0, 32, 32).shape == (32, 32, 3)
        with pytest.raises(InputError, match="corrupt or truncated"):
            r.read_region(32, 32, 32, 32)
