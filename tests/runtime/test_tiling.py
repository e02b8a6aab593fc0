"""Tiling geometry and blending: coverage, exact identity reconstruction, and measured seams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from segflow.runtime.blend import BLENDS, Blender, blend_weights, seam_lines, seam_ratio
from segflow.runtime.tiling import Tile, axis_starts, extract_tile, pad_to_tile, plan_tiles


def test_axis_starts_by_hand():
    assert axis_starts(20, 8, 6) == [0, 6, 12]
    assert axis_starts(16, 8, 8) == [0, 8]
    assert axis_starts(17, 8, 8) == [0, 8, 9]
    assert axis_starts(8, 8, 3) == [0]
    assert axis_starts(5, 8, 3) == [0]


@pytest.mark.parametrize("args", [(10, 8, 9), (10, 0, 1), (10, 8, 0), (0, 8, 4)])
def test_axis_starts_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        axis_starts(*args)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), tile=st.sampled_from([8, 16]), data=st.data())
def test_plan_covers_every_pixel_and_stays_inside(h, w, tile, data):
    stride = data.draw(st.integers(1, tile))
    plan = plan_tiles((h, w), tile, stride)
    cover = np.zeros((h, w), int)
    for i, t in enumerate(plan):
        assert t.index == i and t.size == tile
        assert t.valid == (min(h, tile), min(w, tile))
        assert 0 <= t.y and t.y + t.valid[0] <= h and 0 <= t.x and t.x + t.valid[1] <= w
        cover[t.read] += 1
    assert cover.min() >= 1
    # consecutive starts never skip pixels
    ys = sorted({t.y for t in plan})
    assert all(b - a <= stride for a, b in zip(ys, ys[1:], strict=False))


def test_extract_tile_reflects_small_images():
    img = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = plan_tiles(img.shape, 4, 2)[0]
    win = extract_tile(img, t)
    assert win.shape == (4, 4)
    np.testing.assert_array_equal(win[:2, :3], img)
    np.testing.assert_array_equal(win[:, 3], [1, 4, 1, 4])  # reflected column 1
    np.testing.assert_array_equal(pad_to_tile(np.ones((1, 1, 3)), 4), np.ones((4, 4, 3)))
    with pytest.raises(ValueError):
        pad_to_tile(np.ones((5, 5)), 4)


@pytest.mark.parametrize("mode", sorted(BLENDS))
def test_weights_positive_symmetric(mode):
    for size in (1, 7, 16):
        w = blend_weights(size, mode)
        assert w.shape == (size, size) and (w > 0).all()
        np.testing.assert_allclose(w, w[::-1, ::-1])
        np.testing.assert_allclose(w, w.T)
    assert not blend_weights(8, mode).flags.writeable
    with pytest.raises(ValueError):
        blend_weights(8, "median")


def test_linear_weights_by_hand():
    np.testing.assert_allclose(blend_weights(4, "linear")[0], [0.25, 0.5, 0.5, 0.25])
    np.testing.assert_allclose(blend_weights(3, "pyramid")[1], [0.5, 1.0, 0.5])


def _tiled(image, tile, stride, mode, model):
    plan = plan_tiles(image.shape, tile, stride)
    b = Blender(image.shape, 1, mode=mode)
    for t in plan:
        b.add(t, model(extract_tile(image, t))[None])
    return b.result()[0], plan


@pytest.mark.parametrize("mode", sorted(BLENDS))
@pytest.mark.parametrize("shape,stride", [((37, 53), 5), ((16, 16), 16), ((5, 11), 3), ((1, 1), 8), ((40, 17), 11)])
def test_identity_model_is_reproduced_exactly(mode, shape, stride):
    img = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out, plan = _tiled(img, 16, stride, mode, lambda x: x)
    np.testing.assert_array_equal(out, img)


def test_blender_refuses_uncovered_pixels():
    b = Blender((20, 20), 1)
    b.add(Tile(0, 0, 0, 8, (8, 8)), np.ones((1, 8, 8)))
    with pytest.raises(ValueError, match="covered"):
        b.result()


def test_seam_lines_by_hand():
    plan = plan_tiles((20, 10), 8, 6)  # rows start 0, 6, 12; end 8, 14, 20
    assert seam_lines(plan, (20, 10)) == ([6, 8, 12, 14], [2, 8])


def _edge_model(win):
    """A model with edge effects: a 5x5 box blur with zero padding (like a conv net without context)."""
    return ndi.uniform_filter(win.astype(np.float64), 5, mode="constant")


def test_flat_average_shows_seams_and_smooth_blends_hide_them():
    rng = np.random.default_rng(0)
    img = ndi.gaussian_filter(rng.standard_normal((96, 96)), 3) * 10
    ratios = {m: seam_ratio(_tiled(img, 32, 24, m, _edge_model)[0], plan_tiles(img.shape, 32, 24))
              for m in BLENDS}
    reference = seam_ratio(ndi.uniform_filter(img, 5, mode="reflect"), plan_tiles(img.shape, 32, 24))
    assert 0.7 < reference < 1.3  # an untiled map has no seams
    assert ratios["average"] > 1.4  # measured 1.57: flat weights switch abruptly at tile edges
    for m in ("linear", "pyramid", "gaussian"):  # measured 1.10, 1.14, 1.03
        assert ratios[m] < 1.2 < ratios["average"]
    assert ratios["gaussian"] == min(ratios.values())
