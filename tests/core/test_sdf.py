"""segflow.sdf on hand-made masks: sign, boundary zeros, truncation, round trip, touching instances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segflow.sdf import binary_target, boundary_pixels, mask_to_sdf, sdf_to_mask, sdf_to_prob


def _square(n=9, lo=2, hi=7):
    m = np.zeros((n, n), bool)
    m[lo:hi, lo:hi] = True
    return m


def test_square_values_by_hand():
    m = _square()  # 5x5 square at rows/cols 2..6, centre (4, 4)
    s = mask_to_sdf(m, delta=4.0)
    assert s[4, 4] == pytest.approx(-2 / 4)  # two pixels to the nearest boundary pixel
    assert s[3, 4] == pytest.approx(-1 / 4)
    assert s[2, 2] == 0.0 and s[2, 4] == 0.0  # boundary pixels are exactly 0
    assert s[1, 4] == pytest.approx(1 / 4) and s[0, 4] == pytest.approx(2 / 4)
    assert s[0, 0] == pytest.approx(np.hypot(2, 2) / 4)


def test_round_trip_sign_and_range():
    rng = np.random.default_rng(0)
    m = ndi.binary_opening(rng.random((40, 40)) < 0.5, iterations=2)
    s = mask_to_sdf(m, delta=3.0)
    assert s.dtype == np.float32 and s.min() >= -1 and s.max() <= 1
    assert np.array_equal(sdf_to_mask(s), m)
    assert (s[m] <= 0).all() and (s[~m] > 0).all()


def test_truncation_at_delta():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    s = mask_to_sdf(m, delta=2.0)
    assert s[20, 20] == -1.0 and s[0, 0] == 1.0
    assert s[6, 20] == -0.5  # one pixel inside the boundary
    assert np.unique(s[m]).tolist() == [-1.0, -0.5, 0.0]  # depths 0, 1, >= 2 px; nothing in between


def test_touching_instances_are_separated_in_the_interior():
    lab = np.zeros((7, 12), np.int32)
    lab[1:6, 1:6] = 1
    lab[1:6, 6:11] = 2  # touches instance 1 along columns 5|6
    s = mask_to_sdf(lab, delta=4.0)
    assert (s[1:6, 5] == 0).all() and (s[1:6, 6] == 0).all()  # the meeting pixels are boundary (0)
    assert np.array_equal(sdf_to_mask(s), lab > 0)  # union still recovered
    comps, n = ndi.label(s < 0)
    assert n == 2
    # each interior component lies inside exactly one instance
    assert {tuple(np.unique(lab[comps == k])) for k in (1, 2)} == {(1,), (2,)}
    # the binary mask of the same union has a single interior
    assert ndi.label(mask_to_sdf(lab > 0, 4.0) < 0)[1] == 1


def test_boundary_pixels_and_edges():
    lab = np.ones((4, 4), np.int32)
    assert not boundary_pixels(lab).any()  # the image edge is not a boundary
    assert (mask_to_sdf(lab, 2.0) == -1).all()
    assert (mask_to_sdf(np.zeros((3, 3)), 2.0) == 1).all()
    with pytest.raises(ValueError):
        mask_to_sdf(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        mask_to_sdf(np.zeros((2, 2)), delta=0)


def test_binary_target_and_prob():
    m = np.array([[0, 3], [1, 0]])
    assert binary_target(m).tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    assert sdf_to_prob(np.array([-1.0, 0.0, 1.0, 3.0])).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert sdf_to_mask(np.array([0.02, 0.04]), threshold=0.03).tolist() == [True, False]
