"""``runtime solve`` and ``runtime evaluate`` on tiny files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from segflow.runtime.cli import main

PROB = np.array([[0.0, 0.9, 0.9, 0.3, 0.9, 0.9, 0.0],
                 [0.0, 0.9, 0.9, 0.3, 0.9, 0.9, 0.0]])
GT = np.array([[0, 1, 1, 0, 2, 2, 0], [0, 1, 1, 0, 2, 2, 0]], np.uint16)


def test_solve_folder_then_evaluate(tmp_path, capsys):
    (tmp_path / "probs").mkdir()
    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "probs" / "a.tif", PROB.astype(np.float32))
    tifffile.imwrite(tmp_path / "gt" / "a.tif", GT)
    assert main(["solve", str(tmp_path / "probs"), "--out", str(tmp_path / "lab"), "--method", "threshold"]) == 0
    lab = tifffile.imread(tmp_path / "lab" / "a.tif")
    assert lab.dtype == np.uint16 and lab.tolist() == GT.tolist()
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "lab"), "--gt", str(tmp_path / "gt"), "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mean"]["aji"] == 1.0 and out["pooled"]["ctc_det"] == 1.0 and out["names"] == ["a"]
    assert main(["evaluate", "--pred", str(tmp_path / "lab"), "--gt", str(tmp_path / "gt")]) == 0
    assert "aji_plus" in capsys.readouterr().out


def test_solve_multipage_sequence_with_hemd(tmp_path):
    merged = PROB.copy()
    merged[:, 3] = 0.6                                       # frame 1 is merged at 0.5
    tifffile.imwrite(tmp_path / "seq.tif", np.stack([PROB, merged, PROB]).astype(np.float32))
    assert main(["solve", str(tmp_path / "seq.tif"), "--out", str(tmp_path / "out"), "--score", "roots"]) == 0
    lab = tifffile.imread(tmp_path / "out" / "seq.tif")
    assert lab.shape == (3, 2, 7) and lab[1].max() == 2     # separated thanks to frames 0 and 2


def test_unpairable_inputs_exit_2(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    tifffile.imwrite(tmp_path / "p" / "x.tif", GT)
    tifffile.imwrite(tmp_path / "g" / "y.tif", GT)
    tifffile.imwrite(tmp_path / "g" / "z.tif", GT)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g")]) == 2
    assert "no common file names" in capsys.readouterr().err


def test_evaluate_reads_a_segment_output_folder_as_it_is(tmp_path, capsys):
    """``runtime segment`` writes NAME_labels.tif (slides: NAME_labels.ome.tif) next to float maps; evaluate pairs
    the labels with GT NAME.tif and leaves the maps alone (as labels they would score differently, or pair with
    nothing)."""
    out, gt = tmp_path / "results", tmp_path / "gt"
    out.mkdir()
    gt.mkdir()
    split = GT.copy()
    split[:, 2] = 3                                          # one of the two true cells split in two
    for name, labels in (("a", GT), ("b", split)):
        tifffile.imwrite(out / (f"{name}_labels.ome.tif" if name == "b" else f"{name}_labels.tif"), labels)
        tifffile.imwrite(out / f"{name}_mask.tif", (labels > 0).astype(np.uint8))
        tifffile.imwrite(out / f"{name}_sdf.tif", np.where(labels > 0, -1.0, 1.0).astype(np.float32))
        tifffile.imwrite(gt / f"{name}.tif", GT)
    assert main(["evaluate", "--pred", str(out), "--gt", str(gt), "--json", "-"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["names"] == ["a", "b"] and res["n_images"] == 2
    rows = dict(zip(res["names"], res["per_image"], strict=True))
    assert rows["a"]["aji"] == 1.0
    # b: cell 1 (4 px) is split 2 + 2; AJI pairs it with one half: I = 2 + 4, U = 4 + 4, plus the unmatched half
    assert rows["b"]["aji"] == (2 + 4) / (4 + 4 + 2)
    # a single labels file pairs with its ground truth by name as well
    assert main(["evaluate", "--pred", str(out / "b_labels.ome.tif"), "--gt", str(gt), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["names"] == ["b"]


@pytest.mark.parametrize("flag,value,shown,want", [
    ("--tau", "1", "1.0", "in [0, 1)"), ("--tau", "nan", "nan", "in [0, 1)"),
    ("--min-area", "-5", "-5", "of at least 0 pixels"), ("--delta", "-1", "-1.0", "of at least 0"),
    ("--iou-gate", "1.5", "1.5", "in [0, 1]"), ("--iterations", "0", "0", "of at least 1"),
    ("--time-limit", "0", "0.0", "above 0 seconds"),
])
def test_solve_refuses_out_of_range_options_before_writing(tmp_path, capsys, flag, value, shown, want):
    """--min-area -5 was a ValueError traceback; --tau 2 and --delta -1 ran and wrote labels."""
    tifffile.imwrite(tmp_path / "a.tif", PROB.astype(np.float32))
    assert main(["solve", str(tmp_path / "a.tif"), "--out", str(tmp_path / "lab"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"runtime solve: error: {flag} {shown} is out of range: use a value {want}."
    assert not (tmp_path / "lab").exists()
