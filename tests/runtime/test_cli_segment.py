"""``runtime segment`` and ``runtime info`` end to end on the tiny engines: exit codes, files, bad inputs."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import tifffile
from segflow.runtime.cli import main


def _png(path, shape=(30, 44, 3), seed=0):
    img = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _png(d / "a.png")
    tifffile.imwrite(d / "b.tif", np.random.default_rng(1).integers(0, 65536, (20, 17)).astype(np.uint16))
    return d


def _run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_folder(models_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "segment", "--engine", models_dir / "dirac_rgb.onnx", inputs, "--out", out,
                             "--samples", 2, "--steps", 3, "--method", "heun", "--stride", 10, "--seed", 3,
                             "--noise-iterations", 1, "--instances", "threshold", "--threads", 1)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}{x}" for s in "ab" for x in
                           (".json", "_labels.tif", "_mask.tif", "_sdf.tif", "_std.tif", "_prob.tif"))
    info = json.loads((out / "a.json").read_text())
    assert info["sampling"] | {"nfe": 6 + 2 * 2} == info["sampling"]  # heun: 3 steps + 1 re-noise pass of 2
    assert info["sampling"]["samples"] == 2 and info["sampling"]["seed"] == 3 and info["sampling"]["stride"] == 10
    assert info["input"]["shape"] == [30, 44, 3] and info["model_card"]["in_channels"] == 3
    assert info["instances"]["count"] == len(info["instance_table"])
    assert tifffile.imread(out / "b_sdf.tif").shape == (20, 17)
    assert "a.png" in stdout and "onnxruntime CPU" in stdout  # where it ran: the summary line says


def test_same_seed_same_files(models_dir, inputs, tmp_path, capsys):
    for d, workers in (("o1", 1), ("o2", 2)):  # same files whether tiles are sampled one group at a time or not
        assert _run(capsys, "segment", "--engine", models_dir / "negx.onnx", inputs / "b.tif", "--out",
                    tmp_path / d, "-k", 2, "--instances", "threshold", "--stride", 5, "--threads", 2,
                    "--tile-workers", workers, "-q")[0] == 0
        assert json.loads((tmp_path / d / "b.json").read_text())["backend"]["tile_workers"] == workers
    first, second = (tifffile.imread(tmp_path / d / "b_sdf.tif") for d in ("o1", "o2"))
    np.testing.assert_array_equal(first, second)
    code, _, err = _run(capsys, "segment", "--engine", models_dir / "negx.onnx", inputs / "b.tif", "--out",
                        tmp_path / "o3", "--tile-workers", 0)
    assert code == 2 and "tile_workers must be at least 1" in err and not (tmp_path / "o3").exists()


def test_info(models_dir, capsys):
    code, out, _ = _run(capsys, "info", "--engine", models_dir / "blur.onnx")
    assert code == 0
    assert "input   image: float32[?, 1, ?, ?]" in out and "output  out: float32[?, 1, ?, ?]" in out
    assert '"kind": "flowsdf"' in out
    code, out, _ = _run(capsys, "info", "--engine", models_dir / "blur.onnx", "--json")
    assert json.loads(out)["graphs"]["encoder"]["inputs"] == ["image: float32[?, 1, ?, ?]"]


def _bad_inputs(tmp_path, models_dir):
    """Each case: (engine, extra input file creator, expected words)."""
    trunc = tmp_path / "trunc.png"
    data = _png(tmp_path / "full.png").read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.zeros((12, 12, 2), np.uint8), photometric="minisblack", planarconfig="contig")
    cplx = tmp_path / "c.tif"
    tifffile.imwrite(cplx, np.zeros((12, 12), np.complex64))
    lonely = tmp_path / "eng"
    lonely.mkdir()
    shutil.copy(models_dir / "negx.onnx", lonely / "negx.onnx")
    ssb = tmp_path / "ssb"
    ssb.mkdir()
    for f in ("negx.onnx", "negx.encoder.onnx"):
        shutil.copy(models_dir / f, ssb / f)
    card = json.loads(json.dumps({"kind": "ssb", "tile": 16, "in_channels": 1, "feature_channels": 2}))
    (ssb / "negx.card.json").write_text(json.dumps(card))
    good = models_dir / "negx.onnx"
    return {
        "truncated": (good, trunc, "unreadable or truncated"),
        "channels": (good, two, "2 channels"),
        "dtype": (good, cplx, "dtype"),
        "missing image": (good, tmp_path / "nope.png", "does not exist"),
        "missing engine": (tmp_path / "none.onnx", None, "does not exist"),
        "not an engine": (trunc, None, "neither .onnx nor .plan"),
        "missing encoder": (lonely / "negx.onnx", None, "companion encoder"),
        "wrong kind": (ssb / "negx.onnx", None, "kind 'ssb'"),
    }


@pytest.mark.parametrize("case", ["truncated", "channels", "dtype", "missing image", "missing engine",
                                  "not an engine", "missing encoder", "wrong kind"])
def test_bad_inputs_exit_2_and_write_nothing(models_dir, inputs, tmp_path, capsys, case):
    engine, bad, words = _bad_inputs(tmp_path, models_dir)[case]
    out = tmp_path / "out"
    images = [inputs / "a.png"] + ([bad] if bad is not None else [])  # a good image first: still nothing written
    code, stdout, err = _run(capsys, "segment", "--engine", engine, *images, "--out", out, "-q",
                             "--instances", "threshold")
    assert code == 2
    assert words in err and err.count("\n") == 1 and err.startswith("runtime segment: error: ")
    assert not out.exists() or list(out.iterdir()) == []


def test_duplicate_stems_refused(models_dir, tmp_path, capsys):
    _png(tmp_path / "x.png")
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((8, 8), np.uint8))
    code, _, err = _run(capsys, "segment", "--engine", models_dir / "negx.onnx", tmp_path / "x.png",
                        tmp_path / "x.tif", "--out", tmp_path / "o")
    assert code == 2 and "same outputs" in err and not (tmp_path / "o").exists()


def test_bad_sampling_flags(models_dir, inputs, tmp_path, capsys):
    code, _, err = _run(capsys, "segment", "--engine", models_dir / "negx.onnx", inputs / "a.png", "--out",
                        tmp_path / "o", "--stride", 99)
    assert code == 2 and "stride" in err
    with pytest.raises(SystemExit):
        main(["segment", "--engine", str(models_dir / "negx.onnx"), str(inputs), "--out", "o", "--method", "x"])


@pytest.mark.parametrize("flag", ["--samples", "--steps", "--stride", "--batch-size"])
def test_zero_is_refused_not_read_as_the_default(models_dir, inputs, tmp_path, capsys, flag):
    """``--samples 0`` used to run with the card's K = 4 (0 was read as "not given"); now it is one sentence."""
    code, _, err = _run(capsys, "segment", "--engine", models_dir / "negx.onnx", inputs / "b.tif", "--out",
                        tmp_path / "o", flag, 0)
    name = flag[2:].replace("-", "_")
    assert code == 2 and f"{name} must be at least 1, got 0" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--label", "1"], ["--guidance", "2"], ["--ode"]])
def test_ssb_flags_on_a_flowsdf_engine_are_refused(models_dir, inputs, tmp_path, capsys, flags):
    """They used to be ignored silently, so a user asking for annotator 1 got an unconditional FlowSDF result."""
    code, _, err = _run(capsys, "segment", "--engine", models_dir / "negx.onnx", inputs / "b.tif", "--out",
                        tmp_path / "o", *flags)
    assert code == 2 and "--guidance, --label and --ode apply to SSB engines" in err
    assert not (tmp_path / "o").exists()


def test_memory_budget_must_be_positive(models_dir, inputs, tmp_path, capsys):
    code, _, err = _run(capsys, "segment", "--engine", models_dir / "negx.onnx", inputs / "b.tif", "--out",
                        tmp_path / "o", "--memory-budget", "0")
    assert code == 2 and "memory_budget_mb must be positive, got 0.0" in err and not (tmp_path / "o").exists()
