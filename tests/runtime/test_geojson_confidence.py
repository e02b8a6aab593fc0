"""GeoJSON ``confidence`` is the runtime's instance score: the same number as the JSON ``instance_table`` row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from segflow.runtime import geojson
from segflow.runtime.cli import main
from slide_helpers import write_discs


def test_measurements_hand_worked_touching_pair():
    lab = np.zeros((3, 7), np.int32)
    lab[:, 0:3] = 1
    lab[:, 3:6] = 2  # two touching instances; column 6 is background
    blob = np.zeros((2, 3, 7), bool)
    blob[0, :, 0:6] = True  # sample 1 draws the pair as one blob: exclusive IoU 1 for both
    blob[1, :, 3:7] = True  # sample 2 misses instance 1 and grows instance 2 by a column: IoU 0 and 9/12
    m = geojson.instance_measurements(lab, np.array([2]), samples=blob)
    # computed on the whole label image: instance 1 still clips the blob, so sample 1 scores 1, not 9/18
    assert m == {2: {"area": 9.0, "confidence": round((1.0 + 9 / 12) / 2, 6)}}
    m = geojson.instance_measurements(lab, np.array([1, 2]), samples=blob, prob=blob.mean(0), std=np.ones((3, 7)))
    assert m[1] == {"area": 9.0, "confidence": 0.5, "mean_prob": 0.5, "mean_spread": 1.0}
    sdf = np.where(blob, -0.5, 0.5)  # SDF samples are thresholded at ``threshold``
    assert geojson.instance_measurements(lab, np.array([2]), samples=sdf, threshold=0.0)[2]["confidence"] == 0.875
    assert geojson.instance_measurements(lab, np.array([2]), samples=sdf, threshold=-0.6)[2]["confidence"] == 0.0


@pytest.mark.parametrize("engine", ["negx", "blur"])
def test_feature_confidence_equals_json_score(tmp_path, models_dir, engine):
    # negx draws independent noise per sample (scores spread below 1); blur draws the image (scores near 1)
    out = tmp_path / "out"
    rc = main(["segment", "--engine", str(models_dir / f"{engine}.onnx"), str(write_discs(tmp_path)), "--out", str(out),
               "-k", "4", "-n", "2", "-q", "--save-samples"])
    assert rc == 0
    js = json.loads((out / "im.json").read_text())
    lab = tifffile.imread(out / "im_labels.tif")
    samples = tifffile.imread(out / "im_samples.tif")
    prob, std = tifffile.imread(out / "im_prob.tif"), tifffile.imread(out / "im_std.tif")
    rows = {r["id"]: r for r in js["instance_table"]}
    feats = list(geojson.label_features(lab, samples=samples, threshold=js["model_card"]["threshold"],
                                        prob=prob, std=std))
    ids = np.unique(lab)[1:]
    assert len(feats) == len(rows) == len(ids) >= 3
    conf = []
    for i, f in zip(ids, feats, strict=True):
        m = f["properties"]["measurements"]
        assert m["confidence"] == pytest.approx(rows[int(i)]["confidence"], abs=1e-6)
        assert m["mean_spread"] == pytest.approx(rows[int(i)]["mean_std"], abs=1e-6)
        assert m["mean_prob"] == pytest.approx(prob[lab == i].mean(), abs=1e-6)
        assert 0.0 <= m["confidence"] <= 1.0
        conf.append(m["confidence"])
    if engine == "negx":  # a discriminating case: the scores differ, and differ from the mean probability
        assert max(conf) - min(conf) > 0.05
        mean_prob = [f["properties"]["measurements"]["mean_prob"] for f in feats]
        assert max(abs(p - c) for p, c in zip(mean_prob, conf, strict=True)) > 0.05


def test_slide_geojson_confidence_and_adaptive_filter(tmp_path, models_dir):
    """The streamed (slide) path scores instances as the image path does, and --min-confidence drops them."""
    pytest.importorskip("zarr", reason="slide streaming needs the wsi extra: pip install -e '.[wsi]'")
    from segflow.runtime.confidence import adaptive_threshold, instance_confidence
    from segflow.runtime.ometiff import read_level
    from segflow.runtime.session import Segmenter
    from segflow.runtime.slide import ArrayReader
    from segflow.runtime.wsi import SlideOptions, segment_slide

    img = np.full((72, 80), 128, np.uint8)  # negx ignores the image: instances are blobs of the noise
    with Segmenter(models_dir / "negx.onnx", samples=4, steps=2, threads=1, instances="watershed") as seg:
        whole = seg(img)
        ref = instance_confidence(whole.labels, whole.sample_sdfs, threshold=seg.card.threshold)
        score = dict(zip(ref.ids.tolist(), ref.confidence.tolist(), strict=True))
        # blocks of 40 px cut the image in four; a margin past the image makes every label window the whole image
        opts = SlideOptions(block=40, margin=200, tissue=False)
        res = segment_slide(seg, ArrayReader(img, name="flat"), tmp_path / "all", options=opts)
        thr = adaptive_threshold(ref)
        cut = segment_slide(seg, ArrayReader(img, name="flat"), tmp_path / "cut",
                            options=SlideOptions(block=40, margin=200, tissue=False, min_confidence="adaptive"))
    labels = read_level(res.outputs["labels"]).astype(np.int64)
    fc = json.loads(open(res.outputs["geojson"]).read())
    assert len(fc["features"]) == res.n_instances == len(score) >= 5
    conf = {}
    for f in fc["features"]:
        pix = geojson.rasterise([f], labels.shape) > 0
        (wid,) = np.unique(whole.labels[pix])  # the same instance in the image path
        conf[int(wid)] = f["properties"]["measurements"]["confidence"]
        assert conf[int(wid)] == pytest.approx(score[int(wid)], abs=1e-6)
    assert max(conf.values()) - min(conf.values()) > 0.1  # the scores discriminate
    kept = {i for i, c in score.items() if c >= thr}
    assert 0 < len(kept) < len(score)
    assert cut.min_confidence == pytest.approx(thr, abs=1e-9)
    assert (cut.n_instances, cut.dropped) == (len(kept), len(score) - len(kept))
    lab2 = read_level(cut.outputs["labels"]).astype(np.int64)
    assert np.array_equal(np.unique(lab2), np.arange(len(kept) + 1))  # ids stay 1..N
    assert np.array_equal(lab2 > 0, np.isin(whole.labels, list(kept)))  # exactly the confident instances
    summary = json.loads(open(cut.outputs["json"]).read())
    assert summary["dropped"] == cut.dropped and summary["min_confidence"] == pytest.approx(thr)
    fc2 = json.loads(open(cut.outputs["geojson"]).read())
    assert min(f["properties"]["measurements"]["confidence"] for f in fc2["features"]) >= thr
