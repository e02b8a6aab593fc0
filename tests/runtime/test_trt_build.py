"""Engine build without a GPU: argument parsing, profiles, the builder's TensorRT call sequence, build records."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from fake_trt import make_fake_trt
from segflow.runtime import engine as eng
from segflow.runtime import trtlib
from segflow.runtime.commands import build as build_cmd
from segflow.runtime.trtlib import PlanInfo, sidecar_path

from segflow.card import ModelCard, card_from_onnx
from segflow.errors import InputError, MissingDependency, ModelCardError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(trtlib, "gpu_info", lambda: None)
    monkeypatch.setattr(eng, "gpu_info", lambda: None)


@pytest.fixture
def fake_trt(install_fake_trt, no_gpu):
    return install_fake_trt()


@pytest.fixture
def model(blur_copy):
    return blur_copy


# -- parsing -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [("1:16:64", (1, 16, 64)), ("8", (8, 8, 8)), ("2:2:3", (2, 2, 3))])
def test_parse_batch(text, want):
    assert eng.parse_batch(text) == want


@pytest.mark.parametrize("text", ["0:1:2", "4:2:1", "1:2", "a:b:c", "1:2:3:4", ""])
def test_parse_batch_rejects(text):
    with pytest.raises(ValueError, match="MIN:OPT:MAX"):
        eng.parse_batch(text)


@pytest.mark.parametrize("text,want", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5g", 3 << 29), ("64k", 65536),
                                       ("2GiB", 2 << 30), (1024, 1024), ("1T", 1 << 40)])
def test_parse_bytes(text, want):
    assert eng.parse_bytes(text) == want


@pytest.mark.parametrize("text", ["four", "-1G", "0", "4X", "1.2.3G"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="size"):
        eng.parse_bytes(text)


def test_profile_shapes_field_and_time():
    assert eng.profile_shapes((-1, 1, -1, -1), (2, 8, 32), 128) == (
        (2, 1, 128, 128), (8, 1, 128, 128), (32, 1, 128, 128))
    assert eng.profile_shapes((-1,), (1, 4, 9), 64) == ((1,), (4,), (9,))
    assert eng.profile_shapes((-1, 128, 64, 64), (1, 2, 3), 999) == (
        (1, 128, 64, 64), (2, 128, 64, 64), (3, 128, 64, 64))


def test_profile_shapes_static_and_dynamic_channels():
    assert eng.profile_shapes((4, 1, 128, 128), (1, 2, 3), 128) is None
    with pytest.raises(ValueError, match="dynamic dimension 1"):
        eng.profile_shapes((-1, -1, 128, 128), (1, 2, 3), 128)


def _args(**kw):
    base = {"onnx": "m.onnx", "out": "m.plan", "precision": "fp16", "batch": "1:16:64", "encoder_batch": None,
            "workspace": "4G", "timing_cache": None, "builder": "auto", "conversion": "auto",
            "compute_capability": ""}
    base.update(kw)
    return argparse.Namespace(**base)


def test_build_options_from_flags():
    opts = build_cmd.parse_options(_args(batch="2:8:32", encoder_batch="1:4:8", workspace="512M",
                                         compute_capability="7.5, 8.9"))
    assert opts["batch"] == (2, 8, 32) and opts["encoder_batch"] == (1, 4, 8)
    assert opts["workspace_bytes"] == 512 << 20 and opts["compute_capabilities"] == ("7.5", "8.9")
    with pytest.raises(InputError, match="--workspace"):
        build_cmd.parse_options(_args(workspace="lots"))
    with pytest.raises(InputError, match="--batch"):
        build_cmd.parse_options(_args(batch="64:16:1"))


def test_cli_flags_registered():
    parser = argparse.ArgumentParser()
    build_cmd.add_arguments(parser)
    ns = parser.parse_args(["--onnx", "a.onnx", "--out", "a.plan", "--builder", "tensorrt_rtx"])
    assert (ns.precision, ns.batch, ns.workspace, ns.builder) == ("fp16", "1:16:64", "4G", "tensorrt_rtx")


# -- missing libraries -----------------------------------------------------------------------------------------
def test_missing_library_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(MissingDependency, match=r"neither is installed: run `pip install tensorrt-rtx-cu13` \(RTX "):
        trtlib.import_trt("auto")
    with pytest.raises(MissingDependency, match="`tensorrt_rtx` Python module, which is not installed: run `pip "
                                                "install tensorrt-rtx-cu13`"):
        trtlib.import_trt("tensorrt_rtx")
    with pytest.raises(ValueError, match="unknown TensorRT builder"):
        trtlib.import_trt("onnxruntime")


def test_build_command_missing_library_writes_nothing(monkeypatch, model):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(MissingDependency) as err:
        build_cmd.run(_args(onnx=str(model), out=str(model.with_suffix(".plan"))))
    assert str(err.value).count(". ") == 0 and "pip install tensorrt-rtx-cu13` (RTX workstation GPUs) or " \
        "`pip install tensorrt` (data-centre GPUs)" in str(err.value)
    assert not model.with_suffix(".plan").exists()


def test_auto_prefers_full_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("tensorrt"))
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", make_fake_trt("tensorrt_rtx", version="1.7"))
    assert trtlib.import_trt("auto").__name__ == "tensorrt"
    assert trtlib.import_trt("tensorrt_rtx").__name__ == "tensorrt_rtx"


# -- the builder's call sequence (fake tensorrt) ------------------------------------------------------------------
def test_build_call_sequence(fake_trt, model, tmp_path):
    res = eng.build_engine(model, tmp_path / "out" / "blur.plan", precision="fp32", batch=(2, 8, 32),
                           workspace_bytes=3 << 30, encoder_batch=(1, 2, 8))
    calls = fake_trt.calls
    assert ("create_network", 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in calls
    assert calls.count(("set_memory_pool_limit", fake_trt.MemoryPoolType.WORKSPACE, 3 << 30)) == 2
    tile = card_from_onnx(model).tile
    shapes = [c for c in calls if c[0] == "set_shape"]
    assert ("set_shape", "x", (2, 1, tile, tile), (8, 1, tile, tile), (32, 1, tile, tile)) in shapes
    assert ("set_shape", "t", (2,), (8,), (32,)) in shapes
    assert ("set_shape", "features", (2, 2, tile, tile), (8, 2, tile, tile), (32, 2, tile, tile)) in shapes
    assert ("parse_from_file", "blur.onnx", True) in calls and ("parse_from_file", "blur.encoder.onnx", True) in calls
    assert calls.count(("build_serialized_network",)) == 2
    assert fake_trt.build_flags == [set(), set()]  # TF32 (on by default) cleared: float32 maths in float32
    assert fake_trt.logger_warnings == []  # both builds on the process's one logger
    assert not any(c[0] == "create_timing_cache" for c in calls)
    assert res.field.read_bytes() == b"PLAN:2" and res.encoder.name == "blur.encoder.plan"
    info = PlanInfo.read(res.field)
    assert (info.library, info.trt_version, info.precision) == ("tensorrt", "11.4.0.106", "fp32")
    assert info.profiles["t"] == [[2], [8], [32]] and info.workspace_bytes == 3 << 30 and info.gpu_name is None
    assert json.loads(sidecar_path(res.field).read_text())["onnx"] == "blur.onnx"
    assert ModelCard.from_json(res.card.read_text()) == card_from_onnx(model)
    assert res.card.name == "blur.card.json"


def test_build_without_strongly_typed_flag(monkeypatch, no_gpu, model, tmp_path):
    mod = make_fake_trt(strongly_typed=False)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    eng.build_engine(model, tmp_path / "b.plan", precision="fp32")
    assert ("create_network", 0) in mod.calls  # TensorRT 11 without the (deprecated) flag: always typed


def test_timing_cache_reused_only_for_same_version_and_gpu(monkeypatch, fake_trt, model, tmp_path):
    cache = tmp_path / "tc.bin"
    eng.build_engine(model, tmp_path / "a.plan", precision="fp32", timing_cache=cache)
    assert ("create_timing_cache", b"") in fake_trt.calls and ("set_timing_cache", False) in fake_trt.calls
    assert cache.read_bytes() == b"+tuned+tuned"  # field then encoder build, each adds to the same cache
    stamp = json.loads(cache.with_name("tc.bin.json").read_text())
    assert stamp == {"library": "tensorrt", "version": "11.4.0.106", "gpu": None}
    fake_trt.calls.clear()
    eng.build_engine(model, tmp_path / "b.plan", precision="fp32", timing_cache=cache)
    assert ("create_timing_cache", b"+tuned+tuned") in fake_trt.calls
    other = make_fake_trt(version="11.5.0.1")
    monkeypatch.setitem(sys.modules, "tensorrt", other)
    eng.build_engine(model, tmp_path / "c.plan", precision="fp32", timing_cache=cache)
    assert [c for c in other.calls if c[0] == "create_timing_cache"][0] == ("create_timing_cache", b"")


def test_tensorrt_rtx_skips_timing_cache(monkeypatch, no_gpu, model, tmp_path):
    mod = make_fake_trt("tensorrt_rtx", version="1.7.1.116")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", mod)
    res = eng.build_engine(model, tmp_path / "r.plan", precision="fp32", builder="tensorrt_rtx",
                           timing_cache=tmp_path / "tc.bin")
    assert not any(c[0] == "create_timing_cache" for c in mod.calls) and not (tmp_path / "tc.bin").exists()
    assert PlanInfo.read(res.field).library == "tensorrt_rtx"


def test_fp16_build_parses_converted_graph(fake_trt, model, tmp_path):
    res = eng.build_engine(model, tmp_path / "h.plan", precision="fp16", conversion="segflow")
    parsed = [c[1] for c in fake_trt.calls if c[0] == "parse_from_file"]
    assert parsed == ["blur.fp16.onnx", "blur.encoder.fp16.onnx"]
    assert fake_trt.build_flags == [set(), set()]  # the float32 ops the conversion keeps stay float32 (no TF32)
    info = PlanInfo.read(res.field)
    assert (info.precision, info.conversion, info.onnx) == ("fp16", "segflow", "blur.onnx")


def test_parse_failure_is_one_sentence(monkeypatch, no_gpu, model, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(parse_ok=False))
    with pytest.raises(ModelCardError, match=r"cannot parse .*unsupported attribute.*re-export"):
        eng.build_engine(model, tmp_path / "p.plan", precision="fp32")
    assert not (tmp_path / "p.plan").exists()


def test_bad_out_name_and_precision(fake_trt, model, tmp_path):
    with pytest.raises(InputError, match="must name the field plan"):
        eng.build_engine(model, tmp_path / "x.encoder.plan", precision="fp32")
    with pytest.raises(InputError, match="ending in .plan"):
        eng.build_engine(model, tmp_path / "x.engine", precision="fp32")
    with pytest.raises(InputError, match="precision 'int8' is unknown"):
        eng.build_engine(model, tmp_path / "x.plan", precision="int8")


def test_compute_capability_only_for_rtx(fake_trt, model, tmp_path):
    with pytest.raises(InputError, match="TensorRT-RTX builds only"):
        eng.build_engine(model, tmp_path / "x.plan", precision="fp32", compute_capabilities=("8.9",))


# -- a real TensorRT-RTX build (its builder needs no GPU); skipped unless tensorrt_rtx is installed ------------------
@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx not installed")
def test_real_tensorrt_rtx_cpu_build(model, tmp_path, no_gpu):
    res = eng.build_engine(model, tmp_path / "rtx.plan", precision="fp16", batch=(1, 2, 4),
                           workspace_bytes=1 << 28, builder="tensorrt_rtx", compute_capabilities=("8.9",))
    info = PlanInfo.read(res.field)
    assert res.field.stat().st_size > 1000 and res.encoder.stat().st_size > 1000
    assert info.library == "tensorrt_rtx" and info.target_compute_capabilities == ["8.9"]
    assert info.profiles["x"][2][0] == 4


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx not installed")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_real_tensorrt_rtx_builds_the_shipped_model(precision, tmp_path, no_gpu):
    """The default model (models/flowsdf-small-monuseg) through the real TensorRT-RTX builder, every precision."""
    shipped = Path(__file__).resolve().parents[2] / "models" / "flowsdf-small-monuseg.onnx"
    for name in (shipped.name, "flowsdf-small-monuseg.encoder.onnx", "flowsdf-small-monuseg.card.json"):
        shutil.copy(shipped.with_name(name), tmp_path / name)
    res = eng.build_engine(tmp_path / shipped.name, tmp_path / "f.plan", precision=precision,
                           builder="tensorrt_rtx", compute_capabilities=("8.9", "12.0"))
    info = PlanInfo.read(res.field)
    assert info.precision == precision and info.target_compute_capabilities == ["8.9", "12.0"]
    assert res.field.stat().st_size > 1e6 and res.encoder.stat().st_size > 1e5
    assert json.loads(res.card.read_text())["tile"] == info.profiles["x"][0][-1]  # the card travels with it


def test_info_reads_plan_build_records_without_a_gpu(fake_trt, model, capsys, monkeypatch):
    from segflow.runtime.cli import main as runtime_main

    res = eng.build_engine(model, model.with_name("flow.plan"), precision="fp32", batch=(1, 4, 8))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # neither a GPU nor TensorRT is needed to describe a plan
    assert runtime_main(["info", "--engine", str(res.field)]) == 0
    out = capsys.readouterr().out
    assert "built with tensorrt 11.4.0.106, fp32, on no GPU" in out and "from blur.onnx" in out
    tile = card_from_onnx(model).tile
    assert f"profile x: min [1, 1, {tile}, {tile}]  opt [4, 1, {tile}, {tile}]  max [8, 1, {tile}, {tile}]" in out
    assert "from blur.encoder.onnx" in out
    assert runtime_main(["info", "--engine", str(res.field), "--json"]) == 0
    graphs = json.loads(capsys.readouterr().out)["graphs"]
    assert graphs["field"]["build"]["profiles"]["t"] == [[1], [4], [8]]
    assert graphs["encoder"]["build"]["onnx"] == "blur.encoder.onnx"
    res.encoder.unlink()
    assert runtime_main(["info", "--engine", str(res.field)]) == 2
    assert "no companion encoder graph flow.encoder.plan" in capsys.readouterr().err


def test_one_logger_per_library_even_when_modules_alternate():
    from segflow.runtime.trtlib import trt_logger

    a, b = make_fake_trt(), make_fake_trt()
    first = trt_logger(a)
    assert trt_logger(b) is not first and trt_logger(a) is first  # a's logger survives b's use
    assert trt_logger(a, "VERBOSE").min_severity == a.Logger.VERBOSE  # the level follows each use
