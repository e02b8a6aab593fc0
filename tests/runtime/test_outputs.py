"""Output files: contents, dtypes, and all-or-nothing writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from segflow.runtime import outputs
from segflow.runtime.session import Segmenter


@pytest.fixture(scope="module")
def result(models_dir):
    yy, xx = np.mgrid[:30, :40]
    img = np.where((yy - 15) ** 2 + (xx - 20) ** 2 <= 49, 0, 255).astype(np.uint8)
    with Segmenter(models_dir / "dirac.onnx", samples=3, steps=2, stride=10, instances="threshold") as seg:
        return seg(img)


def test_files_and_contents(result, tmp_path):
    paths = outputs.write_segmentation(result, tmp_path / "out", "img", input_path="in/img.png",
                                       input_shape=(30, 40), input_dtype="uint8", samples=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["img.json", "img_labels.tif", "img_mask.tif", "img_sdf.tif", "img_std.tif", "img_prob.tif",
         "img_samples.tif"])
    lab = tifffile.imread(paths["labels"])
    assert lab.dtype == np.uint16 and lab.max() == 1
    np.testing.assert_array_equal(lab, result.labels)
    assert tifffile.imread(paths["mean_sdf"]).dtype == np.float32
    np.testing.assert_array_equal(tifffile.imread(paths["std"]), result.std)
    np.testing.assert_array_equal(tifffile.imread(paths["prob"]), result.prob)
    np.testing.assert_array_equal(tifffile.imread(paths["mask"]), result.mask.astype(np.uint8) * 255)
    assert tifffile.imread(paths["samples"]).shape == (3, 30, 40)
    info = json.loads(paths["summary"].read_text())
    assert info["instances"]["count"] == 1 == len(info["instance_table"])
    assert info["sampling"] | {} == info["sampling"] and info["sampling"]["nfe"] == 2
    assert info["sampling"]["nfe_total"] == 2 * 3 * result.timings["tiles"]
    assert info["input"] == {"path": "in/img.png", "shape": [30, 40], "dtype": "uint8"}
    assert info["model_card"]["kind"] == "flowsdf" and info["backend"]["name"] == "onnxruntime"
    assert info["files"]["labels"] == "img_labels.tif"
    assert {"encoder_s", "field_s", "total_s", "tiles"} <= set(info["timings"])


def test_failure_leaves_nothing(result, tmp_path, monkeypatch):
    real = outputs._tiff

    def flaky(path, array, description):
        if "std" in description:
            raise OSError("disk full")
        real(path, array, description)

    monkeypatch.setattr(outputs, "_tiff", flaky)
    with pytest.raises(OSError):
        outputs.write_segmentation(result, tmp_path, "img")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_complete_set(result, tmp_path, monkeypatch):
    outputs.write_segmentation(result, tmp_path, "img")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(outputs, "_tiff", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        outputs.write_segmentation(result, tmp_path, "img")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
