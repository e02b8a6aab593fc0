"""``runtime build --out NAME.onnx``: an fp16 ONNX pair for ONNX Runtime, checked against fp32, all or nothing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tifffile
from segflow.runtime import engine as eng
from segflow.runtime.cli import main as runtime_main

from segflow.errors import BackendError


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_fp16_pair_is_written_checked_and_runs(blur_copy, tmp_path, capsys):
    out = tmp_path / "conv" / "blur16.onnx"
    assert runtime_main(["build", "--onnx", str(blur_copy), "--out", str(out)]) == 0  # fp16 is the default
    said = capsys.readouterr().out
    assert _files(out.parent) == ["blur16.card.json", "blur16.encoder.onnx", "blur16.onnx"]
    assert "fp16 (segflow conversion)" in said and "relative error against fp32 on random inputs: field" in said
    card = json.loads((out.parent / "blur16.card.json").read_text())
    assert card["tile"] == eng.card_from_onnx(blur_copy).tile

    import onnx

    types = {i.data_type for i in onnx.load(str(out)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types  # really converted; inputs and outputs stay float32
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in onnx.load(str(out)).graph.input)

    img = tmp_path / "img.tif"
    tifffile.imwrite(img, (np.random.default_rng(2).random((50, 61)) * 255).astype(np.uint8))
    flags = ["--samples", "2", "--steps", "2", "--stride", "12", "--seed", "3", "-q"]
    assert runtime_main(["segment", "--engine", str(blur_copy), str(img), "--out", str(tmp_path / "r32"), *flags]) == 0
    with pytest.warns(RuntimeWarning, match=r"blur16.onnx is an fp16 graph, and ONNX Runtime's CPU provider has no "
                                             r"fp16 kernels: it runs slower there than the fp32 model"):
        assert runtime_main(["segment", "--engine", str(out), str(img), "--out", str(tmp_path / "r16"), *flags]) == 0
    sdf32, sdf16 = (tifffile.imread(tmp_path / r / "img_sdf.tif") for r in ("r32", "r16"))
    assert 0 < np.abs(sdf32 - sdf16).max() < 5e-3  # fp16 arithmetic, not a copy of the fp32 model


def test_relative_error_is_reported_per_graph(blur_copy, tmp_path):
    res = eng.convert_engine(blur_copy, tmp_path / "b.onnx")
    assert set(res.errors) == {"field", "encoder"}
    assert all(0 < e < 2e-3 for e in res.errors.values())  # fp16 rounding, measured on random inputs


@pytest.mark.parametrize("flags,msg", [
    (["--precision", "bf16"], "bf16 is for TensorRT plans"),
    (["--precision", "fp32"], "use --precision fp16"),
    (["--timing-cache", "x.cache"], "--timing-cache applies to TensorRT plans"),
    (["--compute-capability", "8.9"], "--compute-capability applies to TensorRT plans"),
    (["--batch", "1:4:8"], "--batch applies to TensorRT plans"),
    (["--workspace", "4G"], "--workspace applies to TensorRT plans"),  # the default value, given: still unused
    (["--builder", "auto"], "--builder applies to TensorRT plans"),
])
def test_flags_that_do_not_apply_are_refused(blur_copy, tmp_path, capsys, flags, msg):
    out = tmp_path / "conv"
    assert runtime_main(["build", "--onnx", str(blur_copy), "--out", str(out / "x.onnx"), *flags]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists() or _files(out) == []


def test_bad_out_names(blur_copy, capsys):
    assert runtime_main(["build", "--onnx", str(blur_copy), "--out", str(blur_copy)]) == 2
    assert "is the source model itself" in capsys.readouterr().err
    assert runtime_main(["build", "--onnx", str(blur_copy), "--out", str(blur_copy.with_name("x.encoder.onnx"))]) == 2
    assert "must name the field graph" in capsys.readouterr().err


def test_nothing_is_written_when_the_check_fails(blur_copy, tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation")

    monkeypatch.setattr(eng, "_relative_error", broken)
    out = tmp_path / "conv"
    out.mkdir()
    with pytest.raises(BackendError, match="do not run on ONNX Runtime .*NOT_IMPLEMENTED.*try --conversion"):
        eng.convert_engine(blur_copy, out / "x.onnx")
    assert _files(out) == []  # no graphs, no card, no staging folder


def test_no_tensorrt_needed(blur_copy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert eng.convert_engine(blur_copy, tmp_path / "y.onnx", check=False).field.is_file()


def _fake_modelopt(monkeypatch, seen):
    """A stand-in for ``modelopt.onnx.autocast`` that, like the real one, runs the graph on its calibration data
    (a folder of .npz files) before converting, and records what it was given and its loggers' level."""
    import logging
    import types

    import onnxruntime as ort
    from segflow.runtime import autocast

    def convert_to_mixed_precision(*, onnx_path, low_precision_type, calibration_data=None, **_kw):
        assert calibration_data is not None, "ModelOpt's own random inputs have every dynamic dimension 1"
        from pathlib import Path

        batches = [dict(np.load(f)) for f in sorted(Path(calibration_data).glob("*.npz"))]
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        for feed in batches:
            sess.run(None, feed)
        seen[Path(onnx_path).name] = batches
        seen["log_level"] = logging.getLogger("modelopt.onnx").getEffectiveLevel()
        return autocast.cast_model(__import__("onnx").load(onnx_path), low_precision_type)

    fake = types.ModuleType("modelopt.onnx.autocast")
    fake.convert_to_mixed_precision = convert_to_mixed_precision
    for name in ("modelopt", "modelopt.onnx"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", fake)


def test_modelopt_calibrates_on_the_models_own_inputs(blur_copy, tmp_path, monkeypatch):
    import logging

    import onnxruntime as ort

    seen = {}
    _fake_modelopt(monkeypatch, seen)
    logging.getLogger("modelopt.onnx").setLevel(logging.INFO)
    res = eng.convert_engine(blur_copy, tmp_path / "m.onnx", conversion="modelopt")
    assert res.conversion == "modelopt" and all(0 < e < 2e-3 for e in res.errors.values())
    assert seen["log_level"] == logging.WARNING  # its per-node INFO lines are not printed
    assert logging.getLogger("modelopt.onnx").level == logging.INFO  # and the level is given back
    tile = eng.card_from_onnx(blur_copy).tile
    [enc], [field] = seen["blur.encoder.onnx"], seen["blur.onnx"]
    assert set(field) == {"x", "t", "features"} and enc["image"].shape[0] == 2 and enc["image"].shape[2:] == (
        tile, tile)
    assert 0.05 <= field["t"].min() and field["t"].max() <= 0.95
    encoder = ort.InferenceSession(str(blur_copy.with_name("blur.encoder.onnx")), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(field["features"], encoder.run(None, enc)[0])  # the encoder's, not noise


def test_sample_feeds_are_batched_and_seeded(blur_copy):
    card = eng.card_from_onnx(blur_copy)
    feeds = eng.sample_feeds(eng.resolve_engine(blur_copy), card, batch=3, seed=1)
    assert {k: v.shape[0] for k, v in feeds["field"].items()} == {"x": 3, "t": 3, "features": 3}
    again = eng.sample_feeds(eng.resolve_engine(blur_copy), card, batch=3, seed=1)
    np.testing.assert_array_equal(feeds["field"]["x"], again["field"]["x"])
    other = eng.sample_feeds(eng.resolve_engine(blur_copy), card, batch=3, seed=2)
    assert not np.array_equal(feeds["field"]["x"], other["field"]["x"])
