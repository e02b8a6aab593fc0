"""Whole-slide streaming: block-by-block results equal the whole-image path, no seams, bounded outputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("zarr", reason="slide reading needs the wsi extra: pip install -e '.[wsi]'")
from segflow.runtime import geojson
from segflow.runtime.ometiff import read_level
from segflow.runtime.session import Cancelled, Segmenter
from segflow.runtime.slide import ArrayReader, open_slide
from segflow.runtime.wsi import SlideOptions, segment_slide
from slide_helpers import make_engine, same_partition, write_pyramid

from segflow.errors import InputError
from segflow.synthetic import synthetic_nuclei


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    engine = make_engine(tmp_path_factory.mktemp("engine"))
    with Segmenter(engine, samples=2, steps=2, threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def image():
    img, _ = synthetic_nuclei((136, 168), n=30, radius=(5, 9), seed=3)
    return img


@pytest.fixture(scope="module")
def whole(seg, image):
    return seg(image)


@pytest.fixture(scope="module")
def slide(tmp_path_factory, image):
    return write_pyramid(tmp_path_factory.mktemp("slide") / "s.ome.tif", image)


@pytest.fixture(scope="module")
def streamed(seg, slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    with open_slide(slide) as reader:  # blocks of 40 px: every block border cuts tiles and nuclei
        res = seg.segment_slide(reader, out, options=SlideOptions(block=40, margin=8, tissue=False))
    return res, out


def test_block_streaming_equals_whole_image(whole, streamed):
    res, _ = streamed
    assert whole.n_instances > 5
    sdf = read_level(res.outputs["mean_sdf"])
    np.testing.assert_array_equal(sdf, whole.mean_sdf)  # same tiles, same order of float64 sums
    np.testing.assert_array_equal(read_level(res.outputs["std"]), whole.std)
    np.testing.assert_array_equal(read_level(res.outputs["prob"]), whole.prob)
    labels = read_level(res.outputs["labels"])
    assert same_partition(labels, whole.labels)  # no instance split at a seam, none merged, none lost
    ids = np.unique(labels)
    assert res.n_instances == whole.n_instances == len(ids) - 1 == ids.max()  # unique ids 1..N
    assert res.tiles == res.tiles_run == whole.timings["tiles"]  # border tiles were cached, not rerun


def test_instances_crossing_block_corners_stay_whole(seg):
    """One big blob covering four blocks, larger than the initial margin: the window grows, one instance."""
    yy, xx = np.mgrid[:96, :96]
    img = np.full((96, 96, 3), 230, np.uint8)
    img[(yy - 48) ** 2 + (xx - 48) ** 2 <= 30**2] = 40
    whole = seg(img)
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"blob-{os.getpid()}")
    res = segment_slide(seg, ArrayReader(img, name="blob"), out, options=SlideOptions(block=48, margin=4,
                                                                                       tissue=False))
    labels = read_level(res.outputs["labels"])
    assert whole.n_instances == res.n_instances == 1 and res.oversized == 0
    assert same_partition(labels, whole.labels)


def test_geojson_round_trips_to_labels(streamed):
    res, _ = streamed
    with open(res.outputs["geojson"]) as fh:
        fc = json.load(fh)
    assert geojson.validate_feature_collection(fc) == res.n_instances
    labels = read_level(res.outputs["labels"]).astype(np.int64)
    back = geojson.rasterise(fc["features"], labels.shape)
    # IoU per instance: every feature covers exactly one label's pixels
    for n in range(1, len(fc["features"]) + 1):
        ids, counts = np.unique(labels[back == n], return_counts=True)
        assert len(ids) == 1 and ids[0] > 0
        inter = counts[0]
        union = (back == n).sum() + (labels == ids[0]).sum() - inter
        assert inter / union == 1.0
        # the polygon follows the pixel edges: its area (QuPath's) is the pixel count, the `area` measurement
        assert polygon_area(fc["features"][n - 1]) == inter == fc["features"][n - 1]["properties"]["measurements"][
            "area"]
    props = fc["features"][0]["properties"]
    assert props["objectType"] == "detection"
    assert set(props["measurements"]) == {"area", "area_um2", "confidence", "mean_prob", "mean_spread"}
    assert props["measurements"]["area_um2"] == pytest.approx(props["measurements"]["area"] * 0.25, rel=1e-6)


def test_roi_and_level_give_slide_coordinates(seg, slide, whole, tmp_path):
    roi = (40, 24, 96, 80)  # level-0 pixels; level 1 halves them
    with open_slide(slide) as reader:
        res = segment_slide(seg, reader, tmp_path, options=SlideOptions(roi=roi, level=1, block=32, tissue=False))
    assert (res.level, res.downsample, res.roi, res.shape, res.mpp) == (1, 2.0, roi, (40, 48), 1.0)
    labels = read_level(res.outputs["labels"])
    assert labels.shape == (40, 48)
    with open(res.outputs["geojson"]) as fh:
        fc = json.load(fh)
    back = geojson.rasterise(fc["features"], labels.shape, offset=(20, 12), scale=2.0)
    assert same_partition(back, labels)
    for n, f in enumerate(fc["features"], start=1):  # level-1 pixels are 2 x 2 slide pixels
        assert polygon_area(f) == 4 * (back == n).sum() == f["properties"]["measurements"]["area"]
        xy = np.concatenate([np.asarray(r) for poly in polygons(f) for r in poly])
        assert (xy % 2 == 0).all()  # corners of level-1 pixels, ROI offset (40, 24) included
    with tifffile_levels(res.outputs["labels"]) as shapes:
        assert shapes[0] == (40, 48)


def polygons(feature):
    g = feature["geometry"]
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]


def polygon_area(feature):
    """Shoelace area of a GeoJSON feature (holes count negative: their rings run the other way)."""
    rings = [np.asarray(r, np.float64) for poly in polygons(feature) for r in poly]
    return sum(0.5 * float(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[:-1, 1], r[1:, 0])) for r in rings)


class tifffile_levels:
    def __init__(self, path):
        import tifffile

        self.tif = tifffile.TiffFile(path)

    def __enter__(self):
        return [lv.shape for lv in self.tif.series[0].levels]

    def __exit__(self, *exc):
        self.tif.close()


def test_tissue_mask_skips_glass(seg, image, tmp_path):
    img = np.full((64, 200, 3), 245, np.uint8)  # right part is empty glass
    img[:, :96] = image[:64, :96]
    res = segment_slide(seg, ArrayReader(img, name="half"), tmp_path, options=SlideOptions(block=64))
    assert 0 < res.tiles_run < res.tiles
    labels = read_level(res.outputs["labels"])
    assert labels[:, 140:].max() == 0 and labels[:, :96].max() > 0


def test_cancel_keeps_nothing(seg, image, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        segment_slide(seg, ArrayReader(image, name="c"), tmp_path, options=SlideOptions(block=40, tissue=False),
                      cancel=cancel)
    assert os.listdir(tmp_path) == []


def test_a_killed_runs_staging_folder_is_removed(seg, image, tmp_path):
    """The out-of-memory killer skips a slide run's cleanup; the next run into that folder removes the staging
    folder the dead process left (and says so), but not a live process's."""
    import subprocess
    import sys

    from segflow import imageio

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    for name, pid in (("killed", dead), ("live", os.getpid())):
        stage = tmp_path / f".{name}.wsi-abc"
        (stage / "maps.zarr").mkdir(parents=True)
        (stage / ".segflow-owner.json").write_text(json.dumps({**imageio._this_machine(), "pid": pid}))
    with pytest.warns(UserWarning, match=f"removed {tmp_path / '.killed.wsi-abc'}, left by an interrupted run "
                                         f"\\(process {dead}\\)"):
        segment_slide(seg, ArrayReader(image, name="c"), tmp_path, options=SlideOptions(block=80, tissue=False))
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == [".live.wsi-abc"]


def test_a_failed_or_cancelled_run_removes_the_folders_it_made(seg, image, tmp_path):
    def cancel():
        return True

    with pytest.raises(Cancelled):
        segment_slide(seg, ArrayReader(image, name="c"), tmp_path / "new" / "out",
                      options=SlideOptions(block=80, tissue=False), cancel=cancel)
    assert os.listdir(tmp_path) == []  # it used to leave new/out behind, empty


def test_cli_says_a_slides_missing_pixel_size_once(image, tmp_path):
    import warnings

    from segflow.runtime.cli import main

    engine = make_engine(tmp_path, pixel_size_um=0.5)  # a card with a pixel size: the slide's is needed
    bare = write_pyramid(tmp_path / "bare.ome.tif", image, mpp=None)
    args = ["segment", "--engine", str(engine), "--samples", "1", "--steps", "1", "--threads", "1", "-q"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warn() call counts (the check and the run each made one)
        assert main([*args, "--out", str(tmp_path / "o"), str(bare), "--block", "64", "--no-tissue"]) == 0
    said = [str(w.message) for w in seen if "does not record its pixel size" in str(w.message)]
    assert len(said) == 1, said


def test_bad_requests_write_nothing(seg, slide, tmp_path):
    with open_slide(slide) as reader:
        with pytest.raises(InputError, match="outside slide"):
            segment_slide(seg, reader, tmp_path, options=SlideOptions(roi=(100, 100, 500, 10)))
        with pytest.raises(InputError, match="no pyramid level 5"):
            segment_slide(seg, reader, tmp_path, options=SlideOptions(level=5))
    assert os.listdir(tmp_path) == []


def test_unwritable_output_folder(seg, slide, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with open_slide(slide) as reader, pytest.raises(InputError, match="not writable"):
        segment_slide(seg, reader, blocker / "out")
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_cli_routes_slides_and_rejects_bad_ones(seg, slide, tmp_path, capsys):
    from segflow.runtime.cli import main

    engine = str(seg.paths.field)
    out = tmp_path / "out"
    args = ["segment", "--engine", engine, "--samples", "1", "--steps", "1", "--threads", "1", "-q", "--out"]
    assert main([*args, str(out), str(slide), "--roi", "0,0,64,48", "--block", "64", "--no-tissue"]) == 0
    assert sorted(q.name for q in out.iterdir()) == ["s.geojson", "s.json", "s_labels.ome.tif", "s_prob.ome.tif",
                                                      "s_sdf.ome.tif", "s_std.ome.tif"]
    summary = json.loads((out / "s.json").read_text())
    assert summary["roi"] == [0, 0, 64, 48] and summary["samples"] == 1
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(slide.read_bytes()[: slide.stat().st_size // 2])
    bad = tmp_path / "bad"
    for extra, text in [([str(cut)], "truncated|not a readable"), ([str(slide), "--roi", "0,0,9999,10"], "outside"),
                        ([str(slide), "--level", "4"], "no pyramid level 4"), ([str(slide), "--roi", "1,2"], "four")]:
        capsys.readouterr()
        assert main([*args, str(bad), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(text, err)
        assert not bad.exists() or not list(bad.iterdir())
