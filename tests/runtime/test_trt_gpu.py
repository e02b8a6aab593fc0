"""Real GPU checks (skipped without an NVIDIA GPU and CuPy): device-resident sampling and TensorRT engines."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
from segflow.runtime.session import Segmenter

pytestmark = pytest.mark.gpu
KW = {"samples": 4, "steps": 4, "method": "heun", "stride": 12, "batch_size": 8, "seed": 5}


def _image():
    return (np.random.default_rng(2).random((50, 61)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cpu_result(models_dir):
    with Segmenter(models_dir / "blur.onnx", backend="cpu", threads=1, **KW) as seg:
        return seg(_image())


def test_ort_cuda_device_resident_run_matches_cpu(models_dir, cpu_result):
    import cupy
    from segflow.runtime.gpu import DeviceField, DeviceSegmenter

    seen = []
    original = DeviceField.__call__

    def spy(self, x, t):
        out = original(self, x, t)
        seen.append((type(x), type(out)))
        return out

    DeviceField.__call__ = spy
    try:
        with DeviceSegmenter(models_dir / "blur.onnx", xp=cupy, **KW) as seg:
            got = seg(_image())
    finally:
        DeviceField.__call__ = original
    assert seen and all(a is cupy.ndarray and b is cupy.ndarray for a, b in seen)  # state never left the GPU
    # within fp16 resolution (the criterion) yet 2x tighter: segflow turns TF32 off (use_tf32=0), but
    # cuDNN paths that ignore that option may still round to TF32 (about 1.3e-4 on this field, simulated)
    np.testing.assert_allclose(got.mean_sdf, cpu_result.mean_sdf, atol=5e-4)
    np.testing.assert_allclose(got.std, cpu_result.std, atol=5e-4)
    assert np.mean(got.mask != cpu_result.mask) < 1e-3


def _skip_unless_a_tensorrt_runs_here():
    """Full TensorRT runs on any GPU it builds on; TensorRT-RTX only on the GPUs it lists (not Hopper 9.0):
    there, scripts/rtx_probe.py records the library's own answer instead."""
    if importlib.util.find_spec("tensorrt") is not None:
        return
    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("neither tensorrt nor tensorrt_rtx installed")
    from segflow.runtime.trtlib import gpu_info, rtx_supports

    gpu = gpu_info()
    if gpu is not None and not rtx_supports(gpu.compute_capability):
        pytest.skip(f"TensorRT-RTX lists no support for {gpu.name} (compute {gpu.compute_capability}); "
                    f"scripts/rtx_probe.py records its own answer")


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_tensorrt_engine_build_and_run_matches_cpu(models_dir, tmp_path, cpu_result, precision, atol):
    _skip_unless_a_tensorrt_runs_here()
    import cupy
    from segflow.runtime.engine import build_engine
    from segflow.runtime.gpu import DeviceSegmenter

    kw = KW
    if precision == "fp16":  # the test field (f - a x) / (1 - a t) has a pole at t = 1 in fp16, where Heun's
        kw = {**KW, "method": "euler"}  # last stage evaluates it (found by test_gpu_emulated); Euler stops short
        with Segmenter(models_dir / "blur.onnx", backend="cpu", threads=1, **kw) as seg:
            cpu_result = seg(_image())

    for name in ("blur.onnx", "blur.encoder.onnx"):
        shutil.copy(models_dir / name, tmp_path / name)
    res = build_engine(tmp_path / "blur.onnx", tmp_path / "blur.plan", precision=precision, batch=(1, 8, 16),
                       workspace_bytes=1 << 30, timing_cache=tmp_path / "tc.bin")
    for graph in (False, True):
        with DeviceSegmenter(res.field, xp=cupy, cuda_graph=graph, **kw) as seg:
            got = seg(_image())
            assert seg.backend_info["name"] == "tensorrt"
            assert seg.backend_info["cuda_graph"] is graph  # a failed capture falls back, warning: fail here
            if seg.backend_info["cuda_graph_mode"] == "capture":  # full TensorRT: one activation buffer
                assert seg.backend_info["shared_activation_bytes"] > 0
        np.testing.assert_allclose(got.mean_sdf, cpu_result.mean_sdf, atol=atol)
