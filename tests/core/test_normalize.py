"""segflow.normalize: channel handling, dtype and percentile modes, tile-invariance."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.errors import InputError
from segflow.normalize import apply_norm, as_channels, dtype_scale, norm_stats, normalize


def test_dtype_mode_hand_values():
    img = np.array([[0, 255], [51, 102]], np.uint8)
    out = normalize(img, {"mode": "dtype"})
    assert out.dtype == np.float32
    assert out.ravel().tolist() == pytest.approx([-1.0, 1.0, -0.6, -0.2])
    assert dtype_scale(np.uint16) == 65535.0
    assert normalize(np.array([65535], np.uint16), {"mode": "dtype"}).tolist() == [1.0]


def test_percentile_mode_stats_once_then_per_tile():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    stats = norm_stats(img, {"mode": "percentile", "low": 0.0, "high": 100.0})
    assert stats == (0.0, 99.0)
    whole = apply_norm(img, stats)
    assert np.array_equal(apply_norm(img[:5, :5], stats), whole[:5, :5])  # a tile sees the image's stats
    assert whole.min() == -1.0 and whole.max() == 1.0
    with pytest.raises(ValueError):
        norm_stats(img, {"mode": "zscore"})


def test_channels():
    g = np.full((2, 2), 7, np.uint8)
    assert as_channels(g, 3).shape == (2, 2, 3) and (as_channels(g, 3) == 7).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 100
    assert as_channels(rgba, 3).shape == (2, 2, 3)
    lum = as_channels(np.dstack([np.full((2, 2), 100.0)] * 3), 1)
    assert lum.shape == (2, 2, 1) and lum[0, 0, 0] == pytest.approx(100.0, rel=1e-5)
    with pytest.raises(InputError, match="channels"):
        as_channels(np.zeros((2, 2, 2)), 3)
