"""Backend protocol and the ONNX Runtime backend, checked against the tiny engines' numpy references."""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from segflow.runtime.backends import open_backend
from segflow.runtime.backends.base import TensorMeta, check_feed
from segflow.runtime.backends.onnxrt import OrtBackend, available_providers, physical_cores, providers_for

from segflow.errors import BackendError, ModelCardError

GRAPHS = ["negx.onnx", "const.onnx", "dirac.onnx", "dirac_rgb.onnx", "blur.onnx", "negx.encoder.onnx",
          "dirac_rgb.encoder.onnx", "blur.encoder.onnx"]


@pytest.mark.parametrize("name", GRAPHS)
def test_ort_matches_numpy_reference(models_dir, models_meta, name):
    with OrtBackend(models_dir / name, device="cpu", threads=1) as b:
        models_meta.check_backend(name, b)
        assert b.calls == 2 and b.seconds > 0


def test_metadata_and_card(models_dir):
    with open_backend(models_dir / "dirac.onnx", device="cpu") as b:
        ins = b.input_metadata()
        assert list(ins) == ["x", "t", "features"]
        assert ins["features"] == TensorMeta("features", np.dtype(np.float32), (None, 2, None, None))
        assert ins["x"].describe() == "x: float32[?, 1, ?, ?]"
        assert list(b.output_metadata()) == ["out"]
        assert '"kind": "flowsdf"' in b.metadata()["segflow.card"]
        assert b.describe()["providers"] == ["CPUExecutionProvider"]


def test_feed_validation(models_dir, models_meta):
    feed = models_meta.random_feed("dirac.onnx")
    with OrtBackend(models_dir / "dirac.onnx", device="cpu") as b:
        with pytest.raises(BackendError, match="expects inputs"):
            b.infer({k: v for k, v in feed.items() if k != "t"})
        with pytest.raises(BackendError, match="float32"):
            b.infer({**feed, "t": feed["t"].astype(np.float64)})
        with pytest.raises(BackendError, match="features"):
            b.infer({**feed, "features": feed["features"][:, :1]})
        with pytest.raises(BackendError, match="shape"):
            b.infer({**feed, "x": feed["x"][0]})


def test_check_feed_static_dims():
    meta = {"a": TensorMeta("a", np.dtype(np.float32), (None, 3))}
    check_feed({"a": np.zeros((5, 3), np.float32)}, meta)
    with pytest.raises(BackendError):
        check_feed({"a": np.zeros((5, 4), np.float32)}, meta)


def test_lifecycle(models_dir, models_meta):
    b = OrtBackend(models_dir / "negx.onnx", device="cpu")
    with pytest.raises(BackendError, match="is not open \\(closed, or never activated\\)"):
        b.infer(models_meta.random_feed("negx.onnx"))
    with b:
        assert b.is_active
        with pytest.raises(BackendError, match="already active"):
            b.activate()
    assert not b.is_active
    b.close()  # idempotent


def test_missing_or_corrupt_model(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        OrtBackend(tmp_path / "nope.onnx").activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelCardError, match="not a readable ONNX"):
        OrtBackend(bad).activate()


def test_providers():
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(BackendError, match="unknown device"):
        providers_for("tpu")


@pytest.mark.skipif("CUDAExecutionProvider" in available_providers(), reason="CUDA provider installed")
def test_cuda_request_never_falls_back_silently(models_dir):
    with pytest.raises(BackendError, match="CPUExecutionProvider"):
        OrtBackend(models_dir / "negx.onnx", device="cuda").activate()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_start_failure_names_the_libraries_it_could_not_load(models_dir, monkeypatch):
    """onnxruntime-gpu relying on NVIDIA's pip libraries: segflow preloads them once (the runtime never imports
    torch, which would), and a CUDA provider that still cannot start is reported with the missing libraries."""
    import onnxruntime as ort
    from segflow.runtime.backends import onnxrt

    calls = []

    def fake_preload():
        calls.append(1)
        print("Failed to load libcudnn.so.9: libcudnn.so.9: cannot open shared object file")
        print("Failed to load libcublasLt.so.13: libcublasLt.so.13: cannot open shared object file")
        print("Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.")

    monkeypatch.setattr(ort, "preload_dlls", fake_preload, raising=False)
    monkeypatch.setattr(onnxrt, "_preload_failures", None)
    monkeypatch.setattr(onnxrt, "_no_driver", lambda: False)  # a driver, but not NVIDIA's pip libraries
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for _ in range(2):  # this onnxruntime has no CUDA provider, so the session starts on the CPU only
        with pytest.raises(BackendError, match=r"could not start .*\(could not load libcudnn\.so\.9, "
                           r"libcublasLt\.so\.13\): install the CUDA.* / cuDNN 9 libraries \(`pip install "
                           r"\"onnxruntime-gpu\[cuda,cudnn\]\"`\) or choose --backend cpu\.$"):
            OrtBackend(models_dir / "negx.onnx", device="cuda").activate()
    assert calls == [1]  # once per process
    with OrtBackend(models_dir / "negx.onnx", device="cpu") as b:  # CPU sessions never preload
        assert b.describe()["name"] == "onnxruntime"
    assert calls == [1]


def _cuda_listed_but_not_starting(monkeypatch, log_line=""):
    """ONNX Runtime lists the CUDA provider, but sessions start on the CPU only, after logging ``log_line`` to
    file descriptor 2 as the native library does."""
    import onnxruntime as ort
    from segflow.runtime.backends import onnxrt

    real, attempts = ort.InferenceSession, []

    def session(path, sess_options=None, providers=None):
        attempts.append([p if isinstance(p, str) else p[0] for p in providers])
        if log_line and "CUDAExecutionProvider" in attempts[-1]:
            os.write(2, log_line.encode())
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "preload_cuda_libraries", lambda: [])
    return onnxrt, attempts


ORT_LOG = ("\x1b[1;31m2026-11-25 02:08:57 [E:onnxruntime:Default, provider_bridge_ort.cc:2359] Failed to load library "
           "/x/libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open shared object file: No "
           "such file or directory\n\x1b[m\n\x1b[0;93m2026-11-25 02:08:57 [W:onnxruntime:Default, onnxruntime_pybind_"
           "state.cc:992 CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. Require cuDNN "
           "9.* and CUDA 12.*.\x1b[m\nanother thread's line\n")


def test_no_driver_is_named_and_onnx_runtimes_own_log_is_held_back(models_dir, monkeypatch, capfd):
    onnxrt, _ = _cuda_listed_but_not_starting(monkeypatch, ORT_LOG)
    monkeypatch.setattr(onnxrt, "_no_driver", lambda: True)
    with pytest.raises(BackendError, match=r"could not start for .*negx.onnx \(no NVIDIA driver: libcuda.so.1 cannot "
                                           r"be loaded\): run it on a machine with an NVIDIA GPU and its driver or "
                                           r"choose --backend cpu\.$"):
        OrtBackend(models_dir / "negx.onnx", device="cuda").activate()
    assert "onnxruntime" not in capfd.readouterr().err  # one sentence, not ONNX Runtime's coloured lines too
    monkeypatch.setattr(onnxrt, "_no_driver", lambda: False)
    with pytest.raises(BackendError, match=r"\(libcublasLt.so.12: cannot open shared object file: No such file or "
                                           r"directory\): install the CUDA"):  # ONNX Runtime's reason, in one line
        OrtBackend(models_dir / "negx.onnx", device="cuda").activate()


def test_auto_warns_once_and_stops_trying_cuda(models_dir, monkeypatch, capfd):
    onnxrt, attempts = _cuda_listed_but_not_starting(monkeypatch, ORT_LOG)
    monkeypatch.setattr(onnxrt, "_no_driver", lambda: True)
    with pytest.warns(RuntimeWarning, match=r"^the CUDA execution provider could not start \(no NVIDIA driver"
                                            r".*\), so segflow runs on the CPU \(to use the GPU: .*; --backend "
                                            r"cpu skips the attempt\)\.$"):
        with OrtBackend(models_dir / "negx.onnx", device="auto") as b:
            assert b.providers == ["CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second session (an encoder, another Segmenter): no second warning
        with OrtBackend(models_dir / "negx.onnx", device="auto") as b:
            assert b.providers == ["CPUExecutionProvider"]
    assert attempts == [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]
    assert capfd.readouterr().err == "another thread's line\n"  # ONNX Runtime's lines held back, nothing else


@pytest.mark.filterwarnings("ignore:the CUDA execution provider could not start")
@pytest.mark.parametrize("tile_workers,want", [(None, 2), (1, 1)])
def test_auto_falling_back_to_the_cpu_splits_threads_as_a_cpu_run(models_dir, monkeypatch, tile_workers, want):
    from segflow.runtime import session
    from segflow.runtime.session import Segmenter

    onnxrt, attempts = _cuda_listed_but_not_starting(monkeypatch)
    monkeypatch.setattr(onnxrt, "_no_driver", lambda: True)
    monkeypatch.setattr(session, "available_providers", onnxrt.available_providers)
    with Segmenter(models_dir / "blur.onnx", backend="auto", threads=2, tile_workers=tile_workers) as seg:
        assert (seg.tile_workers, seg.backend_info["threads"]) == (want, 2 // want)
        assert seg.backend_info["providers"] == ["CPUExecutionProvider"]
    assert [a for a in attempts if "CUDAExecutionProvider" in a] == [["CUDAExecutionProvider",
                                                                       "CPUExecutionProvider"]]  # tried once


def test_onnx_runtimes_log_is_passed_on_when_cuda_starts(models_dir, monkeypatch, capfd):
    """Whatever ONNX Runtime says while a CUDA session starts fine is not swallowed."""
    import onnxruntime as ort
    from segflow.runtime.backends import onnxrt

    real = ort.InferenceSession

    class Started:
        def __init__(self, path, sess_options=None, providers=None):
            os.write(2, b"[W:onnxruntime] some nodes were not assigned to the preferred execution providers\n")
            self._s = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._s, name)

    monkeypatch.setattr(ort, "InferenceSession", Started)
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "preload_cuda_libraries", lambda: [])
    with OrtBackend(models_dir / "negx.onnx", device="cuda") as b:
        assert b.providers[0] == "CUDAExecutionProvider"
    assert "some nodes were not assigned" in capfd.readouterr().err


def test_threads_and_cores(models_dir):
    assert physical_cores() >= 1
    with OrtBackend(models_dir / "negx.onnx", device="cpu", threads=1) as b:
        assert b.describe()["threads"] == 1


def test_open_backend_by_suffix(models_dir, tmp_path):
    assert isinstance(open_backend(models_dir / "negx.onnx"), OrtBackend)
    with pytest.raises(BackendError, match="suffix"):
        open_backend(tmp_path / "model.pt")
    with pytest.raises(BackendError, match="ONNX Runtime cannot run"):
        open_backend(tmp_path / "model.plan", kind="onnxrt")
    with pytest.raises(BackendError, match="unknown backend kind"):
        open_backend(models_dir / "negx.onnx", kind="openvino")


def test_concurrent_infer_is_safe(models_dir, models_meta):
    feeds = [models_meta.random_feed("dirac.onnx", seed=s) for s in range(4)]
    with OrtBackend(models_dir / "dirac.onnx", device="cpu", threads=1) as b:
        expected = [b.infer(f)["out"] for f in feeds]
        got = [None] * 4

        def work(i):
            for _ in range(5):
                got[i] = b.infer(feeds[i])["out"]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(e, g)
        assert b.calls == 4 + 20


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.filterwarnings("ignore:the CUDA execution provider could not start")
def test_cuda_provider_gets_its_options(models_dir, monkeypatch):
    """The CUDA provider is started with its device, an arena grown by what is asked, and TF32 off."""
    import onnxruntime as ort
    from segflow.runtime.backends import onnxrt

    seen = []
    real = ort.InferenceSession

    def spy(path, sess_options=None, providers=None):
        seen.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "preload_cuda_libraries", lambda: [])
    with OrtBackend(models_dir / "negx.onnx", device="auto"):
        pass
    with OrtBackend(models_dir / "negx.onnx", device="cpu"):
        pass
    opts = {"device_id": "0", "arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}
    assert seen == [[("CUDAExecutionProvider", opts), "CPUExecutionProvider"], ["CPUExecutionProvider"]]


def _dist(site, name, init):
    """A minimal installed distribution in ``site``: METADATA and a RECORD naming one ``__init__.py``."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{init},,\n{info.name}/METADATA,,\n")


def test_onnxruntime_packages_are_those_whose_files_make_up_the_imported_folder(tmp_path, monkeypatch):
    """A distribution counts when its RECORD places files in the imported onnxruntime folder; one whose
    onnxruntime folder lies elsewhere (shadowed on the path) or that installs another module does not."""
    import os

    import onnxruntime as ort
    from segflow.runtime.backends import onnxrt

    real = os.path.relpath(Path(ort.__file__).resolve(), tmp_path)  # "../../.../site-packages/onnxruntime/..."
    _dist(tmp_path, "onnxruntime-gpu", real)
    _dist(tmp_path, "ort-nightly-gpu", "onnxruntime/__init__.py")  # its own folder here, not the imported one
    _dist(tmp_path, "onnxruntime-extensions", "onnxruntime_extensions/__init__.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert onnxrt.onnxruntime_packages() == ["onnxruntime", "onnxruntime-gpu"]


def test_cpu_and_gpu_packages_side_by_side_are_named_with_the_cure(models_dir, monkeypatch):
    """onnxruntime and onnxruntime-gpu in one environment: the CUDA provider is gone. --backend cuda says why
    and how to repair it; auto warns and runs on the CPU."""
    from segflow.runtime.backends import onnxrt

    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "_cuda_provider_files", lambda: True)
    monkeypatch.setattr(onnxrt, "onnxruntime_packages", lambda: ["onnxruntime", "onnxruntime-gpu"])
    cure = 'pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu[cuda,cudnn]"'
    with pytest.raises(BackendError, match=r"onnxruntime and onnxruntime-gpu are both installed and share one "
                                           r"folder, which hides the CUDA provider: run `" + re.escape(cure)
                       + r"` or choose --backend cpu\.$"):
        OrtBackend(models_dir / "negx.onnx", device="cuda").activate()
    with pytest.warns(RuntimeWarning, match="both installed.*until then segflow runs on the CPU"):
        with OrtBackend(models_dir / "negx.onnx", device="auto") as b:
            assert b.providers == ["CPUExecutionProvider"]

    monkeypatch.setattr(onnxrt, "onnxruntime_packages",
                        lambda: ["onnxruntime", "onnxruntime-directml", "onnxruntime-gpu"])
    assert "onnxruntime and onnxruntime-gpu are both" in onnxrt.package_clash()  # the CUDA build is the one named
    monkeypatch.setattr(onnxrt, "onnxruntime_packages", lambda: ["onnxruntime", "onnxruntime-directml"])
    assert onnxrt.package_clash().endswith("&& pip install onnxruntime-directml`")  # no NVIDIA extras there
    monkeypatch.setattr(onnxrt, "onnxruntime_packages", lambda: ["onnxruntime"])  # a plain CPU install
    with pytest.raises(BackendError, match=r"offers .*: install ONNX Runtime's GPU build \(`pip uninstall -y "
                                           r"onnxruntime && pip install \"onnxruntime-gpu\[cuda,cudnn\]\"`\) or "
                                           r"choose --backend cpu\.$"):
        OrtBackend(models_dir / "negx.onnx", device="cuda").activate()
    monkeypatch.setattr(onnxrt, "onnxruntime_packages", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(onnxrt, "_cuda_provider_files", lambda: False)  # no GPU build's files: no clash
    assert onnxrt.package_clash() is None


@pytest.mark.parametrize("state", ["half-removed", "gone"])
def test_a_broken_onnxruntime_is_one_sentence_for_every_command(models_dir, tmp_path, monkeypatch, capsys, state):
    """Uninstalling one of onnxruntime / onnxruntime-gpu installed side by side leaves an empty namespace
    package (only capi/*.so), or nothing while pip still lists the other: every command says how to repair it."""
    import types

    from segflow.runtime.cli import main as runtime_main

    if state == "half-removed":
        empty = types.ModuleType("onnxruntime")
        empty.__path__ = [str(tmp_path / "site-packages" / "onnxruntime")]  # a namespace package: no __file__
        monkeypatch.setitem(sys.modules, "onnxruntime", empty)
    else:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    img = tmp_path / "img.tif"
    import tifffile

    tifffile.imwrite(img, np.zeros((20, 20), np.uint8))
    for argv in (["segment", "--engine", str(models_dir / "blur.onnx"), str(img), "--out", str(tmp_path / "o"),
                  "--backend", "cpu", "-q"], ["info", "--engine", str(models_dir / "blur.onnx")]):
        assert runtime_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "pip uninstall -y onnxruntime onnxruntime-gpu && pip install " \
            "onnxruntime` (or `pip install \"onnxruntime-gpu[cuda,cudnn]\"` for NVIDIA GPUs)." in err, err
        assert ("files in" in err and "are missing" in err) if state == "half-removed" else "cannot be imported" in err
    assert not (tmp_path / "o").exists()


def test_a_signal_handler_closing_the_backend_mid_call_does_not_deadlock():
    """An application's SIGINT/SIGTERM handler may close a (serialising) backend while its call runs in the
    same thread: the close is taken and the engine released once the call returns, not a hang on the lock."""
    import signal

    from segflow.runtime.backends.base import Backend
    from segflow.runtime.trtlib import deferred_interrupt

    released = []

    class Serial(Backend):
        name, thread_safe = "serial", False

        def _activate(self):
            pass

        def _deactivate(self):
            released.append("engine")

        def input_metadata(self):
            return {}

        def output_metadata(self):
            return {}

        def _infer(self, feed, to_host):
            with deferred_interrupt():  # as TensorRTBackend._infer around the TensorRT call
                signal.raise_signal(signal.SIGINT)
            return {"done": True}

    b = Serial().activate()

    def handler(signum, frame):
        b.close()
        assert released == []  # the call is still running: not yet
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            b.infer({}, check=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert released == ["engine"] and not b.is_active
    with pytest.raises(BackendError, match="is not open"):
        b.infer({}, check=False)


def test_stderr_capture_is_one_at_a_time_and_gives_fd_2_back(monkeypatch):
    from segflow.runtime.backends import onnxrt

    before = os.fstat(2)
    out = []

    def capture(i):
        with onnxrt._captured_stderr() as log:
            os.write(2, f"thread {i}\n".encode())
            threading.Event().wait(0.01)
        out.append(log.getvalue())

    threads = [threading.Thread(target=capture, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(out) == [f"thread {i}\n" for i in range(6)]  # each capture saw its own line only
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # the real stderr is back
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None

    def no_temp(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(onnxrt.tempfile, "TemporaryFile", no_temp)
    with onnxrt._captured_stderr() as log:  # nothing can be captured: the session opens all the same
        pass
    assert log.getvalue() == ""
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds  # no file descriptor left behind
