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
