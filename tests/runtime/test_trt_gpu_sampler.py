"""The device-resident sampler's code paths, run on numpy with CPU backends (the GPU runs the same functions)."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.runtime.backends.onnxrt import OrtBackend
from segflow.runtime.gpu import DeviceFlowSDFSampler, DeviceSegmenter, reduce_samples
from segflow.runtime.sampling import FlowSDFSampler, SamplerStats, SamplingSettings
from segflow.runtime.session import Segmenter


@pytest.fixture(scope="module")
def blur(models_dir):
    with OrtBackend(models_dir / "blur.onnx", device="cpu", threads=1) as f, \
            OrtBackend(models_dir / "blur.encoder.onnx", device="cpu", threads=1) as e:
        yield f, e


def _tiles(n=3, size=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, size, size)).astype(np.float32)


@pytest.mark.parametrize("method,steps,t_iters", [("euler", 3, 0), ("heun", 2, 0), ("rk4", 1, 0), ("euler", 4, 2)])
def test_device_sampler_on_numpy_equals_cpu_sampler(blur, method, steps, t_iters):
    settings = SamplingSettings(samples=3, steps=steps, method=method, noise_iterations=t_iters, seed=7, batch=4)
    cpu = FlowSDFSampler(*blur, settings, sigma_min=1e-4)
    dev = DeviceFlowSDFSampler(*blur, settings, sigma_min=1e-4, xp=np, noise="host")
    images, idx = _tiles(), [5, 9, 2]
    s_cpu, s_dev = SamplerStats(), SamplerStats()
    a, b = cpu.sample(images, idx, s_cpu), dev.sample_device(images, idx, s_dev)
    np.testing.assert_array_equal(a, b)
    assert (s_cpu.field_calls, s_cpu.sample_evals) == (s_dev.field_calls, s_dev.sample_evals)
    assert s_dev.sample_evals == 9 * settings.nfe


def test_device_noise_is_reproducible_and_distinct(blur):
    settings = SamplingSettings(samples=2, steps=2, seed=3, batch=4)
    dev = DeviceFlowSDFSampler(*blur, settings, sigma_min=1e-4, xp=np, noise="device")
    host = DeviceFlowSDFSampler(*blur, settings, sigma_min=1e-4, xp=np, noise="host")
    images = _tiles(2)
    a, b = dev.sample_device(images, [0, 1]), dev.sample_device(images, [0, 1])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, dev.sample_device(images, [0, 1], seed=4))
    assert not np.allclose(a, host.sample_device(images, [0, 1]))
    with pytest.raises(ValueError, match="noise must be one of"):
        DeviceFlowSDFSampler(*blur, settings, sigma_min=1e-4, xp=np, noise="gpu")


def test_reduce_samples_hand_worked():
    s = np.array([[[0.2, -0.4]], [[-0.2, -0.2]], [[0.5, 0.0]], [[-0.5, 0.6]]], np.float32)  # K=4, 1x2
    mean, std, prob = reduce_samples(s, 0.0)
    np.testing.assert_allclose(mean, [[0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(std, [[np.sqrt((0.04 + 0.04 + 0.25 + 0.25) / 4), np.sqrt((0.16 + 0.04 + 0 + 0.36) / 4)]],
                               rtol=1e-6)
    np.testing.assert_array_equal(prob, [[0.5, 0.75]])
    assert mean.dtype == std.dtype == prob.dtype == np.float32


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_device_segmenter_on_numpy_equals_segmenter(models_dir, method):
    image = (np.random.default_rng(1).random((37, 45)) * 255).astype(np.uint8)
    kw = {"samples": 3, "steps": 2, "method": method, "stride": 10, "threads": 2, "batch_size": 4, "seed": 11}
    with Segmenter(models_dir / "blur.onnx", **kw) as seg:
        assert seg.tile_workers == 2  # the host path splits its threads into tile workers
        want = seg(image)
    with DeviceSegmenter(models_dir / "blur.onnx", xp=np, **kw) as seg:
        assert seg.tile_workers == 1 and seg.backend_info["threads"] == 2  # the device loop keeps them together
        got = seg(image)
    np.testing.assert_array_equal(got.sample_sdfs, want.sample_sdfs)
    for name in ("mean_sdf", "std", "prob", "mask", "labels"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.nfe == want.nfe and got.timings["field_calls"] == want.timings["field_calls"]
    assert got.n_instances == want.n_instances
