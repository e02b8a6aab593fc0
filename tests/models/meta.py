"""Numpy references of the tiny test engines, and ``check_backend`` so every backend runs the same checks.

Usage (any backend class)::

    from meta import check_backend
    with OrtBackend(MODELS / "dirac.onnx") as b:
        check_backend("dirac.onnx", b)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIGMA = 1e-4
F = 2


def _encoder_mean(image: np.ndarray) -> np.ndarray:
    m = image.mean(axis=1, keepdims=True, dtype=np.float64)
    return np.repeat(m, F, axis=1).astype(np.float32)


def _encoder_blur(image: np.ndarray) -> np.ndarray:
    m = image.mean(axis=1, dtype=np.float64)
    p = np.pad(m, [(0, 0), (2, 2), (2, 2)])
    h, w = m.shape[1:]
    s = sum(p[:, i:i + h, j:j + w] for i in range(5) for j in range(5)) / 25.0
    return np.repeat(s[:, None], F, axis=1).astype(np.float32)


def field_negx(x, t, features):
    """v = -x."""
    return -x


def field_const(x, t, features):
    """v = 0.5."""
    return np.full_like(x, 0.5)


def field_dirac(x, t, features):
    """OT velocity towards features[:, :1]."""
    a = 1.0 - SIGMA
    return (features[:, :1] - a * x) / (1.0 - a * t[:, None, None, None])


REFERENCES = {  # graph file -> (kind, numpy function of its inputs)
    "negx.onnx": ("field", field_negx),
    "const.onnx": ("field", field_const),
    "dirac.onnx": ("field", field_dirac),
    "dirac_rgb.onnx": ("field", field_dirac),
    "blur.onnx": ("field", field_dirac),
    "negx.encoder.onnx": ("encoder", _encoder_mean),
    "const.encoder.onnx": ("encoder", _encoder_mean),
    "dirac.encoder.onnx": ("encoder", _encoder_mean),
    "dirac_rgb.encoder.onnx": ("encoder", _encoder_mean),
    "blur.encoder.onnx": ("encoder", _encoder_blur),
}
CHANNELS = {"dirac_rgb.encoder.onnx": 3}


def random_feed(name: str, *, batch: int = 3, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """A random feed for graph ``name``."""
    rng = np.random.default_rng(seed)
    kind = REFERENCES[name][0]
    if kind == "encoder":
        c = CHANNELS.get(name, 1)
        return {"image": rng.uniform(-1, 1, (batch, c, size, size)).astype(np.float32)}
    return {"x": rng.standard_normal((batch, 1, size, size)).astype(np.float32),
            "t": rng.uniform(0, 1, batch).astype(np.float32),
            "features": rng.uniform(-1, 1, (batch, F, size, size)).astype(np.float32)}


def check_backend(name: str, backend, *, atol: float = 1e-5) -> None:
    """Run ``backend`` (active) on a random feed and compare with the numpy reference of graph ``name``."""
    kind, ref = REFERENCES[name]
    for batch, size in ((1, 16), (3, 24)):
        feed = random_feed(name, batch=batch, size=size)
        out = backend.infer(feed)
        got = out["features" if kind == "encoder" else "out"]
        want = ref(**feed) if kind == "field" else ref(feed["image"])
        np.testing.assert_allclose(np.asarray(got), want, atol=atol, rtol=1e-5)
