"""``runtime segment --min-confidence``: filtering a Segmentation and the command end to end on tiny engines."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import tifffile
from segflow.runtime.cli import main
from segflow.runtime.confidence import filter_segmentation
from slide_helpers import write_discs


@dataclass(frozen=True)
class _Seg:
    labels: np.ndarray
    mask: np.ndarray
    instances: tuple


def _fake():
    lab = np.array([[1, 1, 0, 2], [3, 3, 0, 2]], np.uint16)
    rows = ({"id": 1, "confidence": 0.9}, {"id": 2, "confidence": 0.5}, {"id": 3, "confidence": 0.7})
    return _Seg(lab, lab > 0, rows)


def test_filter_segmentation_fixed_threshold():
    seg, thr = filter_segmentation(_fake(), "0.6")
    assert thr == 0.6
    assert seg.labels.tolist() == [[1, 1, 0, 0], [3, 3, 0, 0]]
    assert seg.mask.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert [r["id"] for r in seg.instances] == [1, 3]


def test_filter_segmentation_adaptive_and_none():
    # mean 0.7, population std sqrt(0.08/3) = 0.1633 -> delta 0.8633: only id 1 stays
    seg, thr = filter_segmentation(_fake(), "adaptive")
    assert thr == pytest.approx(0.7 + np.sqrt(0.08 / 3))
    assert [r["id"] for r in seg.instances] == [1]
    assert np.unique(seg.labels).tolist() == [0, 1]
    same, thr = filter_segmentation(_fake(), None)
    assert thr is None and len(same.instances) == 3


def test_filter_segmentation_needs_scores():
    seg = _Seg(np.ones((1, 1), int), np.ones((1, 1), bool), ({"id": 1},))
    with pytest.raises(ValueError, match="no confidence"):
        filter_segmentation(seg, 0.5)


def _segment(models_dir, path, out, engine, extra=()):
    rc = main(["segment", "--engine", str(models_dir / f"{engine}.onnx"), str(path), "--out", str(out),
               "-k", "3", "-n", "2", "-q", *extra])
    return rc, json.loads((out / "im.json").read_text()), tifffile.imread(out / "im_labels.tif")


def test_cli_deterministic_model_keeps_everything(tmp_path, models_dir):
    # the dirac engine draws the image itself in every sample: all scores are 1, nothing is dropped
    path = write_discs(tmp_path)
    rc, js, lab = _segment(models_dir, path, tmp_path / "a", "dirac", ("--min-confidence", "adaptive"))
    assert rc == 0 and js["instances"]["count"] == 3
    assert [r["confidence"] for r in js["instance_table"]] == [1.0, 1.0, 1.0]
    assert np.unique(lab).size == 4


def test_cli_noise_model_is_filtered(tmp_path, models_dir):
    # v = -x draws unrelated noise per sample: instances exist without the filter, none survive 0.95
    path = write_discs(tmp_path)
    rc, js, lab = _segment(models_dir, path, tmp_path / "b", "negx")
    assert rc == 0 and js["instances"]["count"] > 0
    assert max(r["confidence"] for r in js["instance_table"]) < 0.95
    rc, js, lab = _segment(models_dir, path, tmp_path / "c", "negx", ("--min-confidence", "0.95"))
    assert rc == 0 and js["instances"]["count"] == 0 and not lab.any()


def test_cli_bad_value(tmp_path, models_dir, capsys):
    path = write_discs(tmp_path)
    rc = main(["segment", "--engine", str(models_dir / "dirac.onnx"), str(path), "--out", str(tmp_path / "d"),
               "--min-confidence", "high"])
    assert rc == 2
    assert "min-confidence" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
