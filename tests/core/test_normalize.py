"""segflow.normalize: channel handling, dtype and percentile modes, tile-invariance."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.errors import InputError
from segflow.normalize import apply_norm, as_channels, channels_and_stats, dtype_scale, norm_stats, normalize


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


def test_rgb_to_gray_keeps_the_integer_scale_in_dtype_mode():
    # a uint8 RGB image for a 1-channel model: luminance 0.299*200 + 0.587*100 + 0.114*50 = 124.2 -> /255
    rgb = np.array([[[200, 100, 50], [255, 255, 255]]], np.uint8)
    img, stats = channels_and_stats(rgb, 1, {"mode": "dtype"})
    assert img.shape == (1, 2, 1) and stats == (0.0, 255.0)
    got = apply_norm(img, stats).ravel()
    np.testing.assert_allclose(got, [124.2 / 255 * 2 - 1, 1.0], atol=1e-5)
    # without the fix the float luminance would be scaled by 1.0 and clip to 1
    assert apply_norm(img, norm_stats(img, {"mode": "dtype"})).ravel()[0] == 1.0
    # percentile mode takes its statistics from the converted image
    _, pstats = channels_and_stats(rgb, 1, {"mode": "percentile", "low": 0, "high": 100})
    assert pstats == pytest.approx((124.2, 255 - 124.2), rel=1e-5)


def test_trainer_and_runtime_see_the_same_gray_values():
    pytest.importorskip("torch")
    from segflow.trainer.data import Pair, prepare

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    labels = np.zeros((16, 16), np.int32)
    labels[4:9, 4:9] = 1
    prep = prepare(Pair(name="x", image=rgb, labels=labels), in_channels=1, normalisation={"mode": "dtype"},
                   target="sdf", sdf_delta=4.0)
    img, stats = channels_and_stats(rgb, 1, {"mode": "dtype"})
    np.testing.assert_array_equal(prep.image, apply_norm(img, stats))
    assert -1.0 < prep.image.min() and prep.image.max() < 1.0  # not clipped: the 8-bit scale applied
