"""Backend protocol and the ONNX Runtime backend, checked against the tiny engines' numpy references."""

from __future__ import annotations

import re
import threading
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
    with pytest.raises(BackendError, match="not active"):
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
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for _ in range(2):  # this onnxruntime has no CUDA provider, so the session starts on the CPU only
        with pytest.raises(BackendError, match=r"could not start .*could not load libcudnn\.so\.9, libcublasLt\.so\.13;"
                           r".*pip install onnxruntime-gpu\[cuda,cudnn\]\) or choose --backend cpu\.$"):
            OrtBackend(models_dir / "negx.onnx", device="cuda").activate()
    assert calls == [1]  # once per process
    with OrtBackend(models_dir / "negx.onnx", device="cpu") as b:  # CPU sessions never preload
        assert b.describe()["name"] == "onnxruntime"
    assert calls == [1]


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
    with pytest.raises(BackendError, match=r"offers .*: install onnxruntime-gpu or choose --backend cpu\.$"):
        OrtBackend(models_dir / "negx.onnx", device="cuda").activate()
    monkeypatch.setattr(onnxrt, "onnxruntime_packages", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(onnxrt, "_cuda_provider_files", lambda: False)  # no GPU build's files: no clash
    assert onnxrt.package_clash() is None
