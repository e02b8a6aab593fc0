"""ONNX Runtime sampling agrees with PyTorch eager sampling from the same noise (needs the train extra)."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.runtime.backends.onnxrt import OrtBackend
from segflow.runtime.sampling import FlowSDFSampler, SamplingSettings, tile_noise

from segflow.card import ModelCard

pytestmark = pytest.mark.torch

TILE = 16


def _tiny_model():
    torch = pytest.importorskip("torch")
    nets = pytest.importorskip("segflow.trainer.nets")
    cfg = nets.NetConfig.from_name("lite", in_channels=1, base=8, channel_mults=(1, 2), groups=4, attention_ds=(2,),
                                   encoder_blocks=1, encoder_nf=8, encoder_growth=4)
    torch.manual_seed(0)
    model = nets.SegModel(cfg).eval()
    with torch.no_grad():  # the last convs are zero-initialised: give them weights so the field is not trivial
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model, cfg


def _torch_sample(model, image, noise, steps, method):
    """Reference-style sampler: PyTorch eager, full model (encoder included) at every evaluation."""
    import torch

    x = torch.from_numpy(noise)
    img = torch.from_numpy(image).repeat(noise.shape[0], 1, 1, 1)

    def f(x, t):
        return model(x, torch.full((x.shape[0],), t, dtype=torch.float32), img)

    dt = 1.0 / steps
    with torch.no_grad():
        for i in range(steps):
            t = i * dt
            if method == "euler":
                x = x + dt * f(x, t)
            else:  # heun
                k1 = f(x, t)
                k2 = f(x + dt * k1, t + dt)
                x = x + 0.5 * dt * (k1 + k2)
    return x.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, cfg = _tiny_model()
    onnx_mod = pytest.importorskip("segflow.export.onnx")
    card = ModelCard(kind="flowsdf", preset="custom", tile=TILE, in_channels=1, feature_channels=cfg.base)
    d = tmp_path_factory.mktemp("tiny")
    onnx_mod.export_model(model, card, d / "tiny.onnx", check=False, exporter="torchscript")
    return model, card, d


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ort_sampling_matches_torch(exported, method):
    model, card, tmp_path = exported
    image = np.random.default_rng(0).uniform(-1, 1, (1, 1, TILE, TILE)).astype(np.float32)
    k, steps, seed = 3, 3, 5
    with OrtBackend(tmp_path / "tiny.onnx", device="cpu") as f, \
            OrtBackend(tmp_path / "tiny.encoder.onnx", device="cpu") as e:
        s = SamplingSettings(samples=k, steps=steps, method=method, seed=seed, batch=2)
        got = FlowSDFSampler(f, e, s, sigma_min=card.sigma_min).sample(image, [4])[0]
    noise = np.stack([tile_noise(seed, 4, i, (1, TILE, TILE)) for i in range(k)])
    want = _torch_sample(model, image, noise, steps, method)[:, 0]
    assert np.abs(want - noise[:, 0]).max() > 1e-2  # the field really moved the state
    assert np.abs(got - want).max() < 1e-4
