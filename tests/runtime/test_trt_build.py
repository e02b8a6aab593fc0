"""Engine build without a GPU: argument parsing, profiles, the builder's TensorRT call sequence, build records."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from fake_trt import make_fake_trt
from segflow.runtime import engine as eng
from segflow.runtime import trtlib
from segflow.runtime.commands import build as build_cmd
from segflow.runtime.trtlib import PlanInfo, sidecar_path

from segflow import imageio
from segflow.card import ModelCard, card_from_onnx
from segflow.errors import BackendError, InputError, MissingDependency, ModelCardError


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


def test_parse_batch_keeps_to_32_bit_dimensions():
    assert eng.parse_batch(f"1:16:{2**31 - 1}")[2] == 2**31 - 1
    with pytest.raises(ValueError, match="beyond 2147483647"):
        eng.parse_batch("1:16:2147483648")


@pytest.mark.parametrize("text,want", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5g", 3 << 29), ("64k", 65536),
                                       ("2GiB", 2 << 30), (1024, 1024), ("1T", 1 << 40)])
def test_parse_bytes(text, want):
    assert eng.parse_bytes(text) == want


@pytest.mark.parametrize("text", ["four", "-1G", "0", "4X", "1.2.3G", "0.5", "99999999T"])
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
    base = {"onnx": "m.onnx", "out": "m.plan", "precision": "fp16", "batch": None, "encoder_batch": None,
            "workspace": None, "timing_cache": None, "builder": None, "conversion": "segflow",
            "compute_capability": None, "version_compatible": None, "hardware_compatibility": None, "quiet": True}
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("argv, want", [([], "fp16"), (["--fp32"], "fp32"), (["--bf16"], "bf16"),
                                         (["--fp16"], "fp16"), (["--precision", "bf16"], "bf16")])
def test_trtexec_precision_flags_are_shorthands(argv, want):
    parser = argparse.ArgumentParser()
    build_cmd.add_arguments(parser)
    assert parser.parse_args(["--onnx", "m.onnx", "--out", "m.plan", *argv]).precision == want


def test_two_precisions_are_refused(capsys):
    parser = argparse.ArgumentParser()
    build_cmd.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--onnx", "m.onnx", "--out", "m.plan", "--fp16", "--precision", "fp32"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_build_options_from_flags():
    opts = build_cmd.parse_options(_args(batch="2:8:32", encoder_batch="1:4:8", workspace="512M",
                                         compute_capability="7.5, 8.9"))
    assert opts["batch"] == (2, 8, 32) and opts["encoder_batch"] == (1, 4, 8)
    assert opts["workspace_bytes"] == 512 << 20 and opts["compute_capabilities"] == ("7.5", "8.9")
    with pytest.raises(InputError, match="--workspace"):
        build_cmd.parse_options(_args(workspace="lots"))
    with pytest.raises(InputError, match="^--batch: "):
        build_cmd.parse_options(_args(batch="64:16:1"))
    with pytest.raises(InputError, match="^--encoder-batch: "):  # the flag at fault, and "" is not ignored
        build_cmd.parse_options(_args(encoder_batch=""))
    defaults = build_cmd.parse_options(_args())
    assert (defaults["batch"], defaults["workspace_bytes"], defaults["builder"]) == ((1, 16, 64), 4 << 30, "auto")


@pytest.mark.parametrize("text,want", [("8.9", ("8.9",)), ("8.9, 7.5,8.9", ("8.9", "7.5")), ("12.0", ("12.0",))])
def test_compute_capabilities_parsed_in_order_without_repeats(text, want):
    assert build_cmd.parse_compute_capabilities(text) == want


@pytest.mark.parametrize("text", ["89", "", "8.9,", "abc", "8.9.1", "sm89"])
def test_compute_capabilities_need_major_dot_minor(text):
    with pytest.raises(InputError, match="is not a compute capability like 8.9"):
        build_cmd.parse_compute_capabilities(text)


def test_timing_cache_folder_must_exist_or_be_the_out_folder(fake_trt, model, tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"--timing-cache .*nope/f.cache: its folder .*nope does not exist"):
        eng.build_engine(model, tmp_path / "p.plan", precision="fp32", timing_cache=tmp_path / "nope" / "f.cache")
    assert not (tmp_path / "p.plan").exists()
    monkeypatch.chdir(tmp_path)  # relative paths, the cache in the out folder the build creates
    eng.build_engine(model, Path("new/p.plan"), precision="fp32", timing_cache=Path("new/p.cache"))
    assert (tmp_path / "new" / "p.cache").is_file()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", make_fake_trt("tensorrt_rtx", version="1.7.1.116"))
    eng.build_engine(model, tmp_path / "r.plan", precision="fp32", timing_cache=tmp_path / "nope" / "f.cache")


def test_cli_flags_registered():
    parser = argparse.ArgumentParser()
    build_cmd.add_arguments(parser)
    ns = parser.parse_args(["--onnx", "a.onnx", "--out", "a.plan", "--builder", "tensorrt_rtx"])
    # unset plan flags stay None, so an .onnx --out can refuse any that was given (build_cmd._DEFAULTS fills them)
    assert (ns.precision, ns.batch, ns.workspace, ns.builder, ns.conversion) == (
        "fp16", None, None, "tensorrt_rtx", "segflow")


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
    res = eng.build_engine(model, tmp_path / "out" / "blur.plan", precision="fp32", batch=(1, 8, 32),
                           workspace_bytes=3 << 30, encoder_batch=(1, 2, 8))
    calls = fake_trt.calls
    assert ("create_network", 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in calls
    assert calls.count(("set_memory_pool_limit", fake_trt.MemoryPoolType.WORKSPACE, 3 << 30)) == 2
    tile = card_from_onnx(model).tile
    shapes = [c for c in calls if c[0] == "set_shape"]
    assert ("set_shape", "x", (1, 1, tile, tile), (8, 1, tile, tile), (32, 1, tile, tile)) in shapes
    assert ("set_shape", "t", (1,), (8,), (32,)) in shapes
    assert ("set_shape", "features", (1, 2, tile, tile), (8, 2, tile, tile), (32, 2, tile, tile)) in shapes
    assert ("parse_from_file", "blur.onnx", True) in calls and ("parse_from_file", "blur.encoder.onnx", True) in calls
    assert calls.count(("build_serialized_network",)) == 2
    assert fake_trt.build_flags == [set(), set()]  # TF32 (on by default) cleared: float32 maths in float32
    assert fake_trt.logger_warnings == []  # both builds on the process's one logger
    assert not any(c[0] == "create_timing_cache" for c in calls)
    assert res.field.read_bytes() == b"PLAN:2" and res.encoder.name == "blur.encoder.plan"
    info = PlanInfo.read(res.field)
    assert (info.library, info.trt_version, info.precision) == ("tensorrt", "11.4.0.106", "fp32")
    assert info.profiles["t"] == [[1], [8], [32]] and info.workspace_bytes == 3 << 30 and info.gpu_name is None
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
    cache.with_name("tc.bin.json").write_text("{half written")  # an unreadable stamp: the cache is not trusted
    fake_trt.calls.clear()
    eng.build_engine(model, tmp_path / "d.plan", precision="fp32", timing_cache=cache)
    assert ("create_timing_cache", b"") in fake_trt.calls
    assert json.loads(cache.with_name("tc.bin.json").read_text()) == stamp  # and it is written anew
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


# -- all or nothing, one sentence ---------------------------------------------------------------------------------
def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("stop", [ModelCardError("encoder broken"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_encoder_build_leaves_no_files(fake_trt, model, tmp_path, monkeypatch, stop):
    real = eng.build_plan

    def field_only(graph, dst, **kw):
        if "encoder" in Path(graph).name:
            raise stop
        return real(graph, dst, **kw)

    monkeypatch.setattr(eng, "build_plan", field_only)
    with pytest.raises(type(stop)):
        eng.build_engine(model, tmp_path / "new" / "deeper" / "f.plan", precision="fp32")
    assert not (tmp_path / "new").exists()  # the folders it created are gone too
    monkeypatch.setattr(eng, "build_plan", real)
    good = eng.build_engine(model, tmp_path / "g.plan", precision="fp32")
    before = {p: p.read_bytes() for p in tmp_path.glob("g.*")}
    monkeypatch.setattr(eng, "build_plan", field_only)
    with pytest.raises(type(stop)):
        eng.build_engine(model, good.field, precision="fp16")  # a failed rebuild keeps the good set as it was
    assert {p: p.read_bytes() for p in tmp_path.glob("g.*")} == before and len(before) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".segflow-build-")]


def test_ctrl_c_during_a_tensorrt_build_stops_it_and_publishes_nothing(monkeypatch, no_gpu, model, tmp_path, capfd):
    """TensorRT calls the logger during a build and its bindings swallow exceptions raised there: a Ctrl-C must
    be held over the call and raised after it, not left to surface inside log()."""
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(interrupt_build=True))
    with pytest.raises(KeyboardInterrupt):
        eng.build_engine(model, tmp_path / "out" / "f.plan", precision="fp32")
    assert not (tmp_path / "out").exists()
    assert "Exception caught in log()" not in capfd.readouterr().err


def test_deferred_interrupt_holds_ctrl_c_until_the_block_ends():
    import signal

    done = []
    with pytest.raises(KeyboardInterrupt):
        with trtlib.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back


def test_deferred_interrupt_holds_a_sigterm_python_handles():
    import signal

    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with trtlib.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []  # held while TensorRT would be running (its bindings swallow handler exceptions)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_ctrl_c_held_while_the_block_raises_is_still_delivered():
    import signal

    with pytest.raises(KeyboardInterrupt) as caught:
        with trtlib.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("TensorRT failed")
    assert isinstance(caught.value.__context__, RuntimeError)  # the failure is kept as the context


def test_deferred_interrupt_hands_ctrl_c_to_the_applications_own_handler(monkeypatch):
    import signal

    got = []
    app = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with trtlib.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            assert got == []  # held during the block
        assert got == [signal.SIGINT]  # then the application's handler, not a KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored (nohup): nothing held, nothing raised
        with trtlib.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        # a host application embedding Python set SIGINT outside Python: getsignal() is None, which cannot be
        # put back, so segflow leaves SIGINT alone
        monkeypatch.setattr(signal, "getsignal", lambda _sig: None)
        monkeypatch.setattr(signal, "signal", lambda *_a: pytest.fail("SIGINT touched"))
        with trtlib.deferred_interrupt():
            pass
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGINT, app)


def test_out_folder_problems_are_one_sentence(fake_trt, model, tmp_path):
    (tmp_path / "d.encoder.plan").mkdir()
    with pytest.raises(InputError, match=r"d.encoder.plan is a folder, where runtime build writes a file"):
        eng.build_engine(model, tmp_path / "d.plan", precision="fp32")
    assert not (tmp_path / "d.plan").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"cannot write to the output folder .*file/sub .*choose a writable --out"):
        eng.build_engine(model, tmp_path / "file" / "sub" / "d.plan", precision="fp32")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_out_folder_is_one_sentence(fake_trt, model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match=r"cannot write to the output folder .*ro "):
            eng.build_engine(model, ro / "f.plan", precision="fp32")
    finally:
        ro.chmod(0o755)


def test_an_empty_graph_is_named_not_built(monkeypatch, no_gpu, model, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(outputs=0))  # what the parser makes of garbage
    with pytest.raises(ModelCardError, match=r"blur.onnx holds no graph tensorrt can build .*trainer export"):
        eng.build_engine(model, tmp_path / "e.plan", precision="fp32")
    assert _listing(tmp_path) == ["blur.encoder.onnx", "blur.onnx"]


def test_a_failed_build_names_the_users_graph_and_the_log_goes_to_stderr(monkeypatch, no_gpu, model, tmp_path,
                                                                         capfd):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(build_ok=False))
    with pytest.raises(BackendError, match=rf"failed to build a plan from {model} \(see its log above\)"):
        eng.build_engine(model, tmp_path / "f.plan", precision="fp16")  # not the converted copy in a temp folder
    out, err = capfd.readouterr()
    assert "[tensorrt] [ERROR] IBuilder::buildSerializedNetwork" in err and "IBuilder" not in out


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 10])
def test_an_unreadable_graph_is_one_sentence_before_conversion(fake_trt, model, tmp_path, content):
    model.with_name("blur.encoder.onnx").write_bytes(content)
    for precision in ("fp32", "fp16"):
        with pytest.raises(ModelCardError, match=r"blur.encoder.onnx (is not a readable ONNX model|holds no ONNX "
                                                 r"graph)"):
            eng.build_engine(model, tmp_path / "out" / "f.plan", precision=precision)
    assert ("build_serialized_network",) not in fake_trt.calls  # found before the field plan's build
    with pytest.raises(ModelCardError, match=r"blur.encoder.onnx (is not a readable ONNX model|holds no ONNX graph)"):
        eng.convert_engine(model, tmp_path / "out" / "f.onnx")
    with pytest.raises(ModelCardError, match=r"ONNX Runtime cannot load .*blur.encoder.onnx"):  # where onnx is absent
        eng.sample_feeds(eng.resolve_engine(model), card_from_onnx(model))
    assert not (tmp_path / "out").exists()


def test_progress_lines_name_each_step(fake_trt, model, tmp_path):
    said = []
    eng.build_engine(model, tmp_path / "p.plan", precision="fp16", progress=said.append)
    assert [m.split(" ")[0] for m in said] == ["converting", "building", "converting", "building"]
    assert "building the encoder plan with tensorrt 11.4.0.106, batch 1..64" in said[3]


def test_cli_result_line_and_the_rtx_timing_cache_note(monkeypatch, no_gpu, model, tmp_path, capsys):
    from segflow.runtime.cli import main as runtime_main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", make_fake_trt("tensorrt_rtx", version="1.7.1.116"))
    out = tmp_path / "r.plan"
    assert runtime_main(["build", "--onnx", str(model), "--out", str(out), "--precision", "fp32", "--batch",
                         "1:8:16", "--encoder-batch", "1:2:4", "--timing-cache", str(tmp_path / "t.cache")]) == 0
    said, err = capsys.readouterr()
    assert "tensorrt_rtx 1.7.1.116, fp32, field batch 1..16, encoder batch 1..4, on no GPU" in said
    assert "(none conversion)" not in said
    assert "runtime build: building the field plan" in err  # progress on stderr, the result on stdout
    assert "note: --timing-cache" in err and "TensorRT-RTX has no timing caches" in err
    assert not (tmp_path / "t.cache").exists()
    assert runtime_main(["build", "--onnx", str(model), "--out", str(out), "--precision", "fp32", "-q"]) == 0
    assert "runtime build:" not in capsys.readouterr().err
    assert runtime_main(["info", "--engine", str(out)]) == 0  # default targets: say which GPUs those are
    assert "runs on compute 8.0, 8.6, 8.9, 12.0 and above 12.0 (TensorRT-RTX's defaults)" in capsys.readouterr().out


def test_rebuild_hint_of_an_old_min_above_one_pair_asks_for_min_one(fake_trt, model, tmp_path):
    res = eng.build_engine(model, tmp_path / "o.plan", precision="fp32", batch=(1, 6, 12), encoder_batch=(1, 2, 4))
    for plan, rng in ((res.field, [4, 6, 12]), (res.encoder, [2, 2, 4])):  # as an older segflow allowed
        rec = json.loads(sidecar_path(plan).read_text())
        rec["profiles"] = {k: [[rng[0], *v[0][1:]], [rng[1], *v[1][1:]], [rng[2], *v[2][1:]]]
                           for k, v in rec["profiles"].items()}
        sidecar_path(plan).write_text(json.dumps(rec))
    hint = trtlib.rebuild_hint(res.field, info=PlanInfo.read(res.field))
    assert hint.endswith("--batch 1:6:12 --encoder-batch 1:2:4`")  # a command build_engine accepts


def test_rebuild_hint_repeats_both_plans_build(fake_trt, model, tmp_path, monkeypatch):
    res = eng.build_engine(model, tmp_path / "out" / "h.plan", precision="bf16", batch=(1, 4, 8),
                           encoder_batch=(1, 3, 5))
    want = (f"`runtime build --onnx {model.resolve()} --out {res.field} --precision bf16 --builder tensorrt "
            "--batch 1:4:8 --encoder-batch 1:3:5`")
    for plan in (res.field, res.encoder):  # from either plan's record, the whole build
        assert trtlib.rebuild_hint(plan, info=PlanInfo.read(plan)) == want
    monkeypatch.chdir(tmp_path / "out")
    model.rename(model.with_name("moved.onnx"))  # the source is gone: its recorded name is all there is
    assert trtlib.rebuild_hint(res.field, info=PlanInfo.read(res.field)).startswith("`runtime build --onnx blur.onnx ")


@pytest.mark.parametrize("kw,msg", [
    ({"batch": (2, 8, 32)}, r"--batch MIN is 2, but an image's last call can hold a single sample .*use MIN 1, e.g. "
                            r"1:8:32\.$"),
    ({"encoder_batch": (4, 4, 8)}, r"--encoder-batch MIN is 4"),
    ({"batch": (1, 2)}, r"--batch \(1, 2\) must be \(MIN, OPT, MAX\) integers"),
    ({"batch": (1, 16, 2**40)}, r"MAX <= 2147483647"),
    ({"batch": (4, 2, 1)}, r"1 <= MIN <= OPT <= MAX"),
    ({"workspace_bytes": "4G"}, r"workspace '4G' must be a positive number of bytes \(the CLI takes 4G\)"),
    ({"workspace_bytes": 0}, r"workspace 0 must be a positive number of bytes"),
    ({"builder": "bogus"}, r"builder 'bogus' is unknown: choose one of auto, tensorrt, tensorrt_rtx\.$"),
    ({"conversion": "bogus"}, r"conversion 'bogus' is unknown"),
])
def test_build_engine_checks_its_arguments_as_the_cli_does(fake_trt, model, tmp_path, kw, msg):
    with pytest.raises(InputError, match=msg):
        eng.build_engine(model, tmp_path / "a.plan", precision="fp32", **kw)
    assert list(tmp_path.glob("a.*")) == []


def test_build_engine_takes_integers_of_any_kind(fake_trt, model, tmp_path):
    import numpy as np

    res = eng.build_engine(model, tmp_path / "n.plan", precision="fp32", batch=np.array([1, 4, 8]),
                           encoder_batch=[1, 2, 4], workspace_bytes=np.int64(1 << 30))
    info = PlanInfo.read(res.field)
    assert info.profiles["t"] == [[1], [4], [8]] and type(info.workspace_bytes) is int
    with pytest.raises(InputError, match="must be \\(MIN, OPT, MAX\\) integers"):
        eng.build_engine(model, tmp_path / "b.plan", precision="fp32", batch=(True, 4, 8))


def test_missing_onnx_names_the_flag(fake_trt, tmp_path):
    with pytest.raises(InputError, match=r"--onnx .*none.onnx does not exist: pass the exported field graph"):
        eng.build_engine(tmp_path / "none.onnx", tmp_path / "n.plan")


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


def test_a_killed_builds_staging_folder_is_removed_by_the_next_build(tmp_path):
    """A SIGKILL skips staged_outputs' cleanup; the next build into that folder removes what the dead process
    left, and leaves a live build's, another host's, another container's (same host name, own pids) and an
    unrecorded staging folder alone."""
    import json
    import os
    import subprocess
    import sys
    import time

    def stage(name, owner):
        d = tmp_path / (eng.STAGE_PREFIX + name)
        d.mkdir()
        (d / "f.plan").write_bytes(b"x" * 100)
        if owner is not None:
            (d / ".segflow-owner.json").write_text(json.dumps(owner))
        return d

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = imageio._this_machine()
    killed = stage("killed", {**here, "pid": int(dead.stdout)})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    while Path(f"/proc/{child.pid}/stat").exists() and Path(f"/proc/{child.pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.01)  # killed but not yet reaped: signal 0 still reaches it
    zombie = stage("zombie", {**here, "pid": child.pid})
    live = stage("live", {**here, "pid": os.getpid()})
    elsewhere = stage("elsewhere", {**here, "host": here["host"] + "-other", "pid": int(dead.stdout)})
    container = stage("container", {**here, "pidns": -1, "pid": int(dead.stdout)})
    rebooted = stage("rebooted", {**here, "boot": "an-earlier-boot", "pid": os.getpid()})  # pid reused since
    legacy = stage("legacy", {"host": here["host"], "pid": int(dead.stdout)})  # a record without boot and pidns
    unrecorded = stage("unrecorded", None)
    said = []
    with eng.staged_outputs(tmp_path, said.append) as new:
        assert json.loads((new / ".segflow-owner.json").read_text()) == {**here, "pid": os.getpid()}
    child.wait()
    assert not killed.exists() and live.exists() and elsewhere.exists() and unrecorded.exists() and container.exists()
    assert here["pidns"] is not None and here["boot"]  # Linux: the namespace and boot are recorded
    assert said == [f"removed {killed}, left by an interrupted run (process {int(dead.stdout)})",
                    f"removed {legacy}, left by an interrupted run (process {int(dead.stdout)})",
                    f"removed {rebooted}, left by an interrupted run (process {os.getpid()})",
                    f"removed {zombie}, left by an interrupted run (process {child.pid})"]
    assert not new.exists()


@pytest.mark.parametrize("gpu, targets, said", [
    (trtlib.GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), (), "TensorRT-RTX lists no support for it; to run them here, "
     "run the .onnx model with the CUDA provider, or build with full TensorRT (--builder tensorrt)."),
    (trtlib.GpuInfo("Quadro RTX 8000", "7.5"), ("8.9",), "the plans are compiled for 8.9 only; to run them here, "
     "add --compute-capability 7.5,8.9."),
    (trtlib.GpuInfo("NVIDIA RTX 6000 Ada Generation", "8.9"), (), None),
    (trtlib.GpuInfo("NVIDIA RTX PRO 6000 Blackwell", "12.1"), (), None),  # later than the defaults: covered
])
def test_an_rtx_build_says_first_when_the_plans_will_not_run_on_this_gpu(monkeypatch, model, tmp_path, gpu, targets,
                                                                         said):
    """A build server may make plans for other GPUs, so this is a warning, said before the (long) build."""
    import warnings

    for mod in (trtlib, eng):
        monkeypatch.setattr(mod, "gpu_info", lambda: gpu)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", make_fake_trt("tensorrt_rtx", version="1.7.1.116"))
    for name in ("_target_enums", "_set_targets"):  # the stand-in has no ComputeCapability enum (the real one: below)
        monkeypatch.setattr(eng, name, lambda *a: [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        eng.build_engine(model, tmp_path / "r.plan", precision="fp32", builder="tensorrt_rtx",
                         compute_capabilities=targets)
    got = [str(w.message) for w in seen if "will not run" in str(w.message)]
    want = [] if said is None else [f"these plans will not run on this machine's {gpu.name} (compute "
                                    f"{gpu.compute_capability}): {said}"]
    assert got == want


def test_ampere_plus_plans_are_refused_before_building_on_an_older_gpu(fake_trt, model, tmp_path, monkeypatch):
    """TensorRT builds AMPERE_PLUS plans only on Ampere or later GPUs: say so before the build."""
    for mod in (trtlib, eng):
        monkeypatch.setattr(mod, "gpu_info", lambda: trtlib.GpuInfo("Quadro RTX 8000", "7.5"))
    with pytest.raises(InputError, match=r"--hardware-compatibility ampere\+ needs an Ampere or later GPU to build "
                                         r"on \(TensorRT\), but this machine has Quadro RTX 8000 \(compute 7.5\)"):
        eng.build_engine(model, tmp_path / "a.plan", precision="fp32", hardware_compatibility="ampere+")
    assert not any(c[0] == "build_serialized_network" for c in fake_trt.calls) and not list(tmp_path.glob("a.*"))
    info = eng.build_engine(model, tmp_path / "s.plan", precision="fp32", hardware_compatibility="same-cc").field_info
    assert info.hardware_compatibility == "same-cc"
