"""TensorRT backend checks that need no GPU: build records, version/GPU mismatch, profiles, load errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from fake_cupy import make_fake_cupy
from fake_trt import make_fake_trt
from segflow.runtime import trtlib
from segflow.runtime.backends import open_backend
from segflow.runtime.backends import tensorrt as trt_backend
from segflow.runtime.backends.tensorrt import TensorRTBackend, check_profile, validity_error
from segflow.runtime.trtlib import GpuInfo, PlanInfo, check_plan, parse_nvidia_smi, sidecar_path

from segflow.errors import BackendError, MissingDependency, ModelCardError

ADA = GpuInfo("NVIDIA RTX 6000 Ada Generation", "8.9")
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


def _info(**kw) -> PlanInfo:
    base = {"library": "tensorrt", "trt_version": "11.4.0.106", "precision": "fp16", "gpu_name": ADA.name,
            "compute_capability": "8.9", "profiles": {"x": [[1, 1, 128, 128], [16, 1, 128, 128], [64, 1, 128, 128]]}}
    base.update(kw)
    return PlanInfo(**base)


def test_check_plan_accepts_same_machine():
    assert check_plan("m.plan", _info(), "tensorrt", "11.4.0.106", ADA) == []


def test_check_plan_version_mismatch_is_one_sentence():
    with pytest.raises(BackendError) as err:
        check_plan("models/flowsdf.plan", _info(), "tensorrt", "11.5.0.1", ADA)
    msg = str(err.value)
    assert "built with tensorrt 11.4.0.106 but this machine has tensorrt 11.5.0.1" in msg
    # the rebuild repeats what the build was given (a plan's name says nothing of its precision or batch)
    assert ("`runtime build --onnx flowsdf.onnx --out models/flowsdf.plan --precision fp16 --builder tensorrt "
            "--batch 1:16:64`") in msg and msg.count(". ") == 0
    src = _info(onnx="nuclei-v2.onnx", precision="bf16", profiles={
        "x": [[2, 1, 64, 64], [8, 1, 64, 64], [32, 1, 64, 64]], "t": [[2], [8], [32]]})
    with pytest.raises(BackendError, match=r"`runtime build --onnx nuclei-v2.onnx --out models/n.plan --precision "
                                           r"bf16 --builder tensorrt --batch 1:8:32`\.$"):  # MIN 1, as builds need
        check_plan("models/n.plan", src, "tensorrt", "11.5.0.1", ADA)
    with pytest.raises(BackendError, match=r"--onnx nuclei-v2.onnx --out models/n.plan --precision bf16 --builder "
                                           r"tensorrt --encoder-batch 1:8:32`"):  # an encoder plan's own flag
        check_plan("models/n.encoder.plan", src, "tensorrt", "11.5.0.1", ADA)
    with pytest.raises(BackendError, match=r"built with tensorrt but this machine runs tensorrt_rtx: rebuild it "
                                           r"with `.* --builder tensorrt_rtx --batch"):
        check_plan("models/n.plan", src, "tensorrt_rtx", "1.7.1.116", ADA)


def test_check_plan_gpu_mismatch_names_both_gpus():
    with pytest.raises(BackendError, match=r"built on NVIDIA RTX 6000 Ada Generation \(compute 8.9\) but this "
                                           r"machine has NVIDIA H100 80GB HBM3 \(compute 9.0\): rebuild"):
        check_plan("m.plan", _info(), "tensorrt", "11.4.0.106", H100)


def test_check_plan_same_cc_other_model_warns_only():
    other = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
    warns = check_plan("m.plan", _info(), "tensorrt", "11.4.0.106", other)
    assert len(warns) == 1 and "RTX 4090" in warns[0]


def test_check_plan_library_and_no_gpu():
    with pytest.raises(BackendError, match="built with tensorrt but this machine runs tensorrt_rtx"):
        check_plan("m.plan", _info(), "tensorrt_rtx", "1.7.1.116", ADA)
    with pytest.raises(BackendError, match="needs an NVIDIA GPU, but none is visible"):
        check_plan("m.plan", _info(), "tensorrt", "11.4.0.106", None)


def test_check_plan_rtx_targets():
    rtx = _info(library="tensorrt_rtx", trt_version="1.7.1.116", gpu_name=None, compute_capability=None)
    assert check_plan("m.plan", rtx, "tensorrt_rtx", "1.7.1.116", ADA) == []
    assert check_plan("m.plan", rtx, "tensorrt_rtx", "1.7.1.116", GpuInfo("RTX PRO", "12.1")) == []  # "and later"
    with pytest.raises(BackendError, match=r"compiled for compute capabilities 8.0, 8.6, 8.9, 12.0 but this "
                                           r"NVIDIA H100 80GB HBM3 is 9.0 \(TensorRT-RTX lists no support"):
        check_plan("m.plan", rtx, "tensorrt_rtx", "1.7.1.116", H100)
    turing = GpuInfo("Quadro RTX 8000", "7.5")  # supported, but only when the build asked for it: rebuild
    only_ada = _info(library="tensorrt_rtx", trt_version="1", target_compute_capabilities=["8.9"])
    with pytest.raises(BackendError, match=r"compiled for compute capabilities 8.9 but this Quadro RTX 8000 is 7.5: "
                                           r"rebuild it with `runtime build --onnx m.onnx --out m.plan "
                                           r"--precision fp16 --builder tensorrt_rtx --batch 1:16:64 "
                                           r"--compute-capability 7.5,8.9`\.$"):
        check_plan("m.plan", only_ada, "tensorrt_rtx", "1", turing)
    with pytest.raises(BackendError, match=r"--compute-capability 8.9,12.0`"):  # a default target left out
        check_plan("m.plan", only_ada, "tensorrt_rtx", "1", GpuInfo("RTX PRO 6000 Blackwell", "12.0"))
    with pytest.raises(BackendError, match=r"is 9.0 \(TensorRT-RTX lists no support"):  # never Hopper
        check_plan("m.plan", only_ada, "tensorrt_rtx", "1", H100)


@pytest.mark.parametrize("cc,ok", [("7.0", False), ("7.5", True), ("8.0", True), ("8.6", True), ("8.7", False),
                                   ("8.9", True), ("9.0", False), ("10.0", False), ("12.0", True), ("12.1", True)])
def test_rtx_supports(cc, ok):
    from segflow.runtime.trtlib import rtx_supports

    assert rtx_supports(cc) is ok


def test_plan_info_roundtrip_and_errors(tmp_path):
    plan = tmp_path / "m.plan"
    with pytest.raises(ModelCardError, match="has no build record m.plan.json beside it"):
        PlanInfo.read(plan)
    sidecar_path(plan).write_text(_info().to_json())
    assert PlanInfo.read(plan) == _info()
    assert PlanInfo.read(plan).profile_range("x") == ([1, 1, 128, 128], [64, 1, 128, 128])
    for bad in ("{not json", "[1, 2]", '{"library": 5, "trt_version": "1", "precision": "fp16"}',
                '{"library": "tensorrt"}', '{"library": "tensorrt", "trt_version": "1", "precision": "fp16", '
                '"profiles": [1]}'):
        sidecar_path(plan).write_text(bad)
        with pytest.raises(ModelCardError, match="unreadable"):
            PlanInfo.read(plan)
    sidecar_path(plan).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelCardError, match="unreadable"):
        PlanInfo.read(plan)


def test_check_profile():
    check_profile("m.plan", "x", (64, 1, 128, 128), (1, 1, 128, 128), (64, 1, 128, 128))
    with pytest.raises(BackendError) as err:
        check_profile("m.plan", "x", (80, 1, 128, 128), (1, 1, 128, 128), (64, 1, 128, 128))
    msg = str(err.value)
    assert "shape [80, 1, 128, 128], outside the plan's profile [1..64, 1, 128, 128]" in msg
    assert "`runtime build --onnx m.onnx --out m.plan --batch 1:1:80`" in msg  # no record: the profile's MIN
    with pytest.raises(BackendError, match=r"--precision fp16 --builder tensorrt --batch 1:16:80`"):  # its OPT kept
        check_profile("m.plan", "x", (80, 1, 128, 128), (1, 1, 128, 128), (64, 1, 128, 128), _info())
    with pytest.raises(BackendError, match="feed tiles of the model's tile size"):
        check_profile("m.plan", "x", (4, 1, 96, 96), (1, 1, 128, 128), (64, 1, 128, 128))
    with pytest.raises(BackendError, match="outside"):
        check_profile("m.plan", "t", (4, 1), (1,), (64,))


def test_validity_error_names_diagnostics():
    class V:
        def __init__(self, name):
            self.name = name

    fake = types.SimpleNamespace(__name__="tensorrt_rtx", EngineInvalidityDiagnostics=types.SimpleNamespace(
        UNSUPPORTED_CC=4, VERSION_MISMATCH=1, OLD_CUDA_DRIVER=8))
    assert validity_error(fake, "m.plan", V("VALID"), 0) is None
    msg = validity_error(fake, "m.plan", V("INVALID"), 4 | 1)
    assert "invalid on this machine (unsupported cc, version mismatch)" in msg


def test_parse_nvidia_smi():
    assert parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0\n") == H100
    assert parse_nvidia_smi("NVIDIA GeForce RTX 4090, 8.9\nNVIDIA GeForce RTX 4090, 8.9") == \
        GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
    assert parse_nvidia_smi("No devices were found") is None


def test_gpu_info_without_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(trtlib.shutil, "which", lambda name: None)
    assert trtlib.gpu_info() is None


# -- the backend's activation errors ---------------------------------------------------------------------------
def _plan(tmp_path, info: PlanInfo, data: bytes = b"PLAN"):
    plan = tmp_path / "m.plan"
    plan.write_bytes(data)
    sidecar_path(plan).write_text(info.to_json())
    return plan


def test_backend_missing_plan_and_record(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist: build it with `runtime build`"):
        TensorRTBackend(tmp_path / "none.plan").activate()
    (tmp_path / "m.plan").write_bytes(b"PLAN")
    with pytest.raises(ModelCardError, match="no build record"):
        TensorRTBackend(tmp_path / "m.plan").activate()


def test_backend_missing_library(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    # the plan's own library, not TensorRT-RTX: a full-TensorRT plan cannot run on TensorRT-RTX
    with pytest.raises(MissingDependency, match=r"`tensorrt` Python module, which is not installed: run `pip install "
                                                 r"tensorrt`\.$"):
        TensorRTBackend(_plan(tmp_path, _info())).activate()


def test_backend_refuses_other_version_before_deserialising(tmp_path, monkeypatch):
    fake = make_fake_trt(version="11.5.0.1")
    fake.Runtime = lambda logger: pytest.fail("must not deserialise a plan of another TensorRT version")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: ADA)
    backend = TensorRTBackend(_plan(tmp_path, _info()))
    with pytest.raises(BackendError, match="built with tensorrt 11.4.0.106 but this machine has tensorrt 11.5.0.1"):
        backend.activate()
    assert not backend.is_active


def test_backend_deserialisation_failure(tmp_path, monkeypatch):
    fake = make_fake_trt(version="11.4.0.106")

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return None

    fake.Runtime = Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy())
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: ADA)
    with pytest.raises(BackendError, match=r"could not load plan .*m.plan \(corrupt file, or built for another GPU"):
        TensorRTBackend(_plan(tmp_path, _info())).activate()


def test_open_backend_picks_tensorrt_for_plans(tmp_path):
    backend = open_backend(tmp_path / "m.plan")
    assert isinstance(backend, TensorRTBackend) and not backend.is_active


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx not installed")
def test_real_tensorrt_rtx_plan_without_gpu_is_refused(tmp_path, models_dir, monkeypatch):
    """A real TensorRT-RTX plan built here (CPU-only AOT) cannot load without a GPU: one sentence."""
    from segflow.runtime import engine as eng

    monkeypatch.setattr(eng, "gpu_info", lambda: None)
    for name in ("negx.onnx", "negx.encoder.onnx"):
        shutil.copy(models_dir / name, tmp_path / name)
    res = eng.build_engine(tmp_path / "negx.onnx", tmp_path / "negx.plan", precision="fp32", batch=(1, 2, 4),
                           workspace_bytes=1 << 26, builder="tensorrt_rtx")
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: None)
    with pytest.raises(BackendError, match="needs an NVIDIA GPU, but none is visible"):
        TensorRTBackend(res.field).activate()
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: ADA)  # pretend: the library itself must refuse
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy())
    with pytest.raises(BackendError, match=r"(could not load|reports) plan .*negx.plan"):
        TensorRTBackend(res.field).activate()


def test_cuda_that_cannot_start_is_one_sentence(tmp_path, monkeypatch):
    """A driver too old for the CUDA runtime: CuPy's error inside one sentence naming the plan and the check."""
    cp = make_fake_cupy()

    def no_stream(*a, **k):
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime "
                           "version")

    cp.cuda.Stream = no_stream
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(version="11.4.0.106", executable=True))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: ADA)
    with pytest.raises(BackendError, match=r"^CUDA could not start for plan .*m.plan \(cudaErrorInsufficientDriver"
                                           r".*\): check the NVIDIA driver with `nvidia-smi`"):
        TensorRTBackend(_plan(tmp_path, _info())).activate()


def _probe():
    import importlib.util as iu

    spec = iu.spec_from_file_location("rtx_probe", Path(__file__).resolve().parents[2] / "scripts" / "rtx_probe.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rtx_probe_without_the_library(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert _probe().main([]) == 0
    assert "tensorrt_rtx is not importable" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx not installed")
def test_rtx_probe_reports_the_library_own_answer():
    """The real TensorRT-RTX: the probe builds (no GPU needed), then records what the library says when asked to
    load the plan here (without a GPU: its own CUDA error, and no engine). In a process of its own: the library
    keeps the first logger a process gives it, and the probe's must be that one."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "rtx_probe.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "build_serialized_network (default targets): returned" in out and "get_engine_validity" in out
    assert "tensorrt_rtx log [" in out  # the library's own words, through the probe's logger
    if "GPU: none visible" in out:
        assert "deserialize_cuda_engine: returned None" in out


# -- version- and hardware-compatible plans (full TensorRT) -----------------------------------------------------
@pytest.mark.parametrize("built, running, ok", [
    ("11.4.0.106", "11.4.0.106", True), ("11.4.0.106", "11.5.0.2", True), ("11.4.0.106", "11.3.1.0", False),
    ("10.16.1.11", "11.4.0.106", True), ("8.6.1", "10.13.3.9", True), ("8.6.1", "11.4.0.106", False),
    ("11.4.0.106", "12.0.0", False), ("10.16.1.11", "10.13.3.9", False)])
def test_version_compatible_plans_run_on_later_versions_nvidia_supports(built, running, ok):
    """NVIDIA: a version-compatible plan runs on a full TensorRT of the same or a later version of its major
    release, and across 8 -> 10 and 10 -> 11 only; on the lean runtime of its own version only."""
    info = _info(trt_version=built, version_compatible=True)
    if ok:
        assert check_plan("m.plan", info, "tensorrt", running, ADA) == []
    else:
        with pytest.raises(BackendError, match=rf"m.plan is version-compatible from TensorRT {built}, which "
                                               rf"tensorrt {running} cannot run .*--version-compatible"):
            check_plan("m.plan", info, "tensorrt", running, ADA)
    # the lean runtime: one per version (NVIDIA); other versions' plans are the dispatch runtime's job
    if built == running:
        assert check_plan("m.plan", info, "tensorrt_lean", running, ADA) == []
    else:
        with pytest.raises(BackendError, match=rf"built by TensorRT {built}, and the TensorRT lean runtime runs "
                                               rf"plans of its own version only, but {running} is installed: run "
                                               rf"`pip install tensorrt-lean-cu13-bindings=={built} "):
            check_plan("m.plan", info, "tensorrt_lean", running, ADA)


def test_the_lean_runtime_refuses_other_plans_with_the_rebuild():
    with pytest.raises(BackendError, match=r"m.plan is not version-compatible, and the TensorRT lean runtime installed "
                                           r"here runs only such plans: rebuild it with `runtime build --onnx m.onnx "
                                           r"--out m.plan --precision fp16 --builder tensorrt --batch 1:16:64 "
                                           r"--version-compatible`, or install full TensorRT"):
        check_plan("m.plan", _info(), "tensorrt_lean", "11.4.0.106", ADA)


def test_hardware_compatible_plans_run_on_the_gpus_they_were_built_for():
    ampere = _info(hardware_compatibility="ampere+", gpu_name=H100.name, compute_capability="9.0")
    for gpu in (ADA, H100, GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), GpuInfo("RTX PRO 6000 Blackwell", "12.0")):
        assert check_plan("m.plan", ampere, "tensorrt", "11.4.0.106", gpu) == []
    with pytest.raises(BackendError, match=r"built for Ampere and later GPUs \(compute 8.0\+\) but this machine has "
                                           r"Quadro RTX 8000 \(compute 7.5\): rebuild it here with `runtime build "
                                           r"--onnx m.onnx --out m.plan --precision fp16 --builder tensorrt --batch "
                                           r"1:16:64`\.$"):  # for this GPU only: Turing is not Ampere+
        check_plan("m.plan", ampere, "tensorrt", "11.4.0.106", GpuInfo("Quadro RTX 8000", "7.5"))
    same = _info(hardware_compatibility="same-cc")
    assert check_plan("m.plan", same, "tensorrt", "11.4.0.106", GpuInfo("NVIDIA GeForce RTX 4090", "8.9")) == []
    with pytest.raises(BackendError, match="compute 8.9.*compute 9.0"):
        check_plan("m.plan", same, "tensorrt", "11.4.0.106", H100)


def test_build_records_without_the_portability_fields_still_read(tmp_path):
    plan = tmp_path / "old.plan"
    plan.write_bytes(b"x")
    record = {k: v for k, v in json.loads(_info().to_json()).items()
              if k not in ("version_compatible", "hardware_compatibility")}
    sidecar_path(plan).write_text(json.dumps(record))
    info = PlanInfo.read(plan)
    assert info.version_compatible is False and info.hardware_compatibility == "none"
    sidecar_path(plan).write_text(json.dumps({**record, "hardware_compatibility": "turing+"}))
    with pytest.raises(ModelCardError, match="unreadable"):
        PlanInfo.read(plan)
