"""FlowSDF sampling: seeded noise, noise injection by hand, honest NFE, encoder once per tile, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.runtime.backends.onnxrt import OrtBackend
from segflow.runtime.sampling import (
    FlowSDFSampler,
    SamplerStats,
    SamplingSettings,
    batch_from_budget,
    flowsdf_nfe,
    flowsdf_sample,
    renoise_steps,
    tile_noise,
)


class Counting:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.f(x, t)


def test_tile_noise_is_deterministic_and_distinct():
    a = tile_noise(3, 7, 1, (1, 8, 8))
    np.testing.assert_array_equal(a, tile_noise(3, 7, 1, (1, 8, 8)))
    assert a.dtype == np.float32
    for other in (tile_noise(4, 7, 1, (1, 8, 8)), tile_noise(3, 8, 1, (1, 8, 8)), tile_noise(3, 7, 2, (1, 8, 8)),
                  tile_noise(3, 7, 1, (1, 8, 8), iteration=1)):
        assert not np.array_equal(a, other)


def test_noise_injection_by_hand():
    # f = -x with Euler: one pass over [0, 1] in 4 steps multiplies by 0.75^4; each re-noise pass maps
    # x -> keep*z + r*x, then 2 steps over [0.5, 1] multiply by (1 - 0.25)^2.
    x0, z = np.array([1.0]), np.array([2.0])
    f = Counting(lambda x, t: -x)
    out = flowsdf_sample(f, x0, steps=4, method="euler", noise_iterations=2, renoise_t=0.5, sigma_min=0.0,
                         renoise=lambda i: z * i)
    x = 0.75**4
    x = (0.5 * 2.0 + 0.5 * x) * 0.75**2
    x = (0.5 * 4.0 + 0.5 * x) * 0.75**2
    assert out[0] == pytest.approx(x, abs=1e-15)
    assert f.calls == flowsdf_nfe("euler", 4, 2, 0.5) == 4 + 2 * 2


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("steps,t_iter,rt", [(4, 0, 0.5), (3, 1, 0.3), (5, 3, 0.8)])
def test_nfe_counts_every_evaluation(method, steps, t_iter, rt):
    f = Counting(lambda x, t: -x)
    flowsdf_sample(f, np.ones(2), steps=steps, method=method, noise_iterations=t_iter, renoise_t=rt,
                   renoise=lambda i: np.zeros(2))
    assert f.calls == flowsdf_nfe(method, steps, t_iter, rt)
    assert renoise_steps(steps, rt) >= 1


def test_noise_injection_needs_noise():
    with pytest.raises(ValueError, match="renoise"):
        flowsdf_sample(lambda x, t: -x, np.ones(1), steps=2, noise_iterations=1)


def test_settings_validation():
    assert SamplingSettings(samples=2, steps=3, method="heun").nfe == 6
    for bad in ({"samples": 0}, {"steps": 0}, {"method": "dopri"}, {"renoise_t": 1.0}, {"noise_iterations": -1}):
        with pytest.raises(ValueError):
            SamplingSettings(**bad)


def test_batch_from_budget():
    per = 4 * 128 * 128 * (32 * 9 + 2 + 1)
    assert batch_from_budget(128, 32, "euler", 10 * per) == 10
    assert batch_from_budget(128, 32, "euler", 1) == 1
    assert batch_from_budget(128, 32, "euler", 1e15) == 64
    assert batch_from_budget(128, 32, "rk4", 10 * per) == 9  # 3 more stage buffers: 10 * 291 // 294


@pytest.fixture()
def negx(models_dir):
    with OrtBackend(models_dir / "negx.onnx", device="cpu", threads=1) as f, \
            OrtBackend(models_dir / "negx.encoder.onnx", device="cpu", threads=1) as e:
        yield f, e


@pytest.mark.parametrize("batch", [1, 3, 8, 64])
def test_sampler_negx_known_output_encoder_once(negx, batch):
    field, encoder = negx
    s = SamplingSettings(samples=3, steps=4, seed=5, batch=batch)
    sampler = FlowSDFSampler(field, encoder, s, sigma_min=1e-4)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 1, 16, 16)).astype(np.float32)
    stats = SamplerStats()
    out = sampler.sample(images, [10, 11, 12, 13], stats)
    assert out.shape == (4, 3, 16, 16)
    for i in range(4):
        for k in range(3):  # each sample is its own seeded noise times (1 - 1/4)^4
            np.testing.assert_allclose(out[i, k], 0.75**4 * tile_noise(5, 10 + i, k, (1, 16, 16))[0], rtol=1e-6)
    assert stats.encoder_tiles == 4  # once per tile whatever the batch
    assert stats.sample_evals == 4 * 3 * 4  # tiles * K * NFE
    assert stats.field_calls == -(-12 // batch) * 4


def test_sampler_same_result_for_any_batch(models_dir):
    images = np.random.default_rng(1).uniform(-1, 1, (5, 1, 16, 16)).astype(np.float32)
    outs = []
    with OrtBackend(models_dir / "blur.onnx", device="cpu") as f, \
            OrtBackend(models_dir / "blur.encoder.onnx", device="cpu") as e:
        for batch in (1, 4, 64):
            s = SamplingSettings(samples=2, steps=3, method="heun", seed=9, batch=batch, noise_iterations=1)
            outs.append(FlowSDFSampler(f, e, s, sigma_min=1e-4).sample(images, list(range(5))))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
