"""Tests for segflow.synthetic: determinism, shapes, ground-truth consistency, touching nuclei, divisions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segflow.sdf import boundary_pixels
from segflow.synthetic import (
    contact_line,
    paint_ellipses,
    synthetic_annotators,
    synthetic_nuclei,
    synthetic_sequence,
)


def test_paint_ellipses_disc_matches_hand_count():
    # a radius-2 disc at (3, 3): the 13 lattice points with dy^2 + dx^2 <= 4
    lab = paint_ellipses((7, 7), np.array([[3.0, 3.0]]), np.array([[2.0, 2.0]]), np.array([0.0]))
    yy, xx = np.mgrid[0:7, 0:7]
    assert np.array_equal(lab == 1, (yy - 3) ** 2 + (xx - 3) ** 2 <= 4)


def test_paint_ellipses_overlap_goes_to_nearest_centre():
    lab = paint_ellipses((5, 9), np.array([[2.0, 3.0], [2.0, 5.0]]), np.array([[2.0, 2.0], [2.0, 2.0]]),
                         np.zeros(2))
    assert lab[2, 3] == 1 and lab[2, 5] == 2
    assert lab[2, 2] == 1 and lab[2, 6] == 2


@pytest.mark.parametrize("rgb", [True, False])
def test_nuclei_deterministic_and_typed(rgb):
    a_img, a_lab = synthetic_nuclei((96, 80), n=12, rgb=rgb, seed=3)
    b_img, b_lab = synthetic_nuclei((96, 80), n=12, rgb=rgb, seed=3)
    c_img, _ = synthetic_nuclei((96, 80), n=12, rgb=rgb, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.dtype == np.uint8 and a_lab.dtype == np.int32
    assert a_img.shape == ((96, 80, 3) if rgb else (96, 80)) and a_lab.shape == (96, 80)


def test_nuclei_labels_consecutive_and_connected():
    _, lab = synthetic_nuclei((128, 128), n=25, touching=0.5, seed=0)
    ids = np.unique(lab)
    assert np.array_equal(ids, np.arange(lab.max() + 1))
    assert lab.max() >= 15
    for i in ids[1:]:
        _, k = ndi.label(lab == i)
        assert k == 1, f"nucleus {i} is split into {k} pieces"


def test_nuclei_some_touch_and_touching_zero_gives_none():
    _, lab = synthetic_nuclei((128, 128), n=25, touching=0.6, seed=0)
    # touching: a boundary pixel with a 4-neighbour of another nonzero label
    contact = (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
    assert contact.any()
    _, lab0 = synthetic_nuclei((128, 128), n=25, touching=0.0, seed=0)
    contact0 = (lab0[:, 1:] != lab0[:, :-1]) & (lab0[:, 1:] > 0) & (lab0[:, :-1] > 0)
    contact0v = (lab0[1:] != lab0[:-1]) & (lab0[1:] > 0) & (lab0[:-1] > 0)
    assert not contact0.any() and not contact0v.any()


def test_gap_draws_a_paler_seam_where_nuclei_touch_only():
    img0, lab0 = synthetic_nuclei((128, 128), n=25, touching=0.6, seed=0)
    img, lab = synthetic_nuclei((128, 128), n=25, touching=0.6, gap=0.9, seed=0)
    assert np.array_equal(lab, lab0)  # same nuclei, same labels; only the stain changes
    seam = contact_line(lab)
    assert seam.any() and (lab[seam] > 0).all()
    near = ndi.binary_dilation(seam, np.ones((7, 7), bool))  # the 0.7-px Gaussian's 3-px (square) reach
    assert np.array_equal(img[~near], img0[~near])
    brightness = img.astype(float).sum(-1)
    assert (brightness[seam] - img0.astype(float).sum(-1)[seam]).mean() > 40  # less haematoxylin: brighter
    assert np.array_equal(synthetic_nuclei((64, 64), n=5, gap=0.0, seed=2)[0],
                          synthetic_nuclei((64, 64), n=5, seed=2)[0])


def test_he_nuclei_are_darker_and_bluer_than_background():
    img, lab = synthetic_nuclei((128, 128), n=20, seed=1)
    fg, bg = lab > 0, lab == 0
    inner = fg & ~boundary_pixels(lab)
    rgb = img.astype(float)
    assert rgb[inner].mean() < rgb[bg].mean() - 30
    # haematoxylin absorbs red most: nuclei have blue > red, background (eosin) red > green
    assert rgb[inner][:, 2].mean() > rgb[inner][:, 0].mean()
    assert rgb[bg][:, 0].mean() > rgb[bg][:, 1].mean()


def test_fluorescence_nuclei_brighter():
    img, lab = synthetic_nuclei((96, 96), n=10, rgb=False, seed=2)
    assert img[lab > 0].mean() > img[lab == 0].mean() + 50


def test_sequence_lineage_consistent_with_labels():
    seq = synthetic_sequence(8, (96, 96), n=8, divisions=2, seed=5)
    assert seq.images.shape == (8, 96, 96) and seq.labels.shape == (8, 96, 96)
    assert seq.images.dtype == np.uint8 and seq.labels.dtype == np.int32
    lin = seq.lineage
    assert lin.shape == (8 + 4, 4)
    for label, begin, end, parent in lin:
        for t in range(8):
            present = (seq.labels[t] == label).any()
            assert present == (begin <= t <= end), (label, t)
        if parent:
            prow = lin[lin[:, 0] == parent][0]
            assert prow[2] == begin - 1
    daughters = lin[lin[:, 3] > 0]
    assert len(daughters) == 4 and len(set(daughters[:, 3])) == 2


def test_sequence_deterministic_and_moves():
    a = synthetic_sequence(4, (64, 64), n=4, divisions=0, seed=1)
    b = synthetic_sequence(4, (64, 64), n=4, divisions=0, seed=1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.lineage[:, 3].sum() == 0
    c0 = ndi.center_of_mass(a.labels[0] == 1)
    c3 = ndi.center_of_mass(a.labels[3] == 1)
    assert np.hypot(c0[0] - c3[0], c0[1] - c3[1]) > 0.5


def test_annotators_disagree_and_faint_lesion_split():
    img, masks = synthetic_annotators((64, 64), n_annotators=4, seed=0)
    assert img.shape == (64, 64) and img.dtype == np.uint8
    assert masks.shape == (4, 64, 64) and masks.dtype == bool
    areas = masks.sum(axis=(1, 2))
    assert len(set(areas.tolist())) > 1
    counts = [ndi.label(m)[1] for m in masks]
    assert min(counts) == 1 and max(counts) == 2  # someone marks the faint lesion, someone misses it
    inter = masks.all(axis=0)
    assert inter.sum() > 0 and img[inter].mean() > img[~masks.any(axis=0)].mean() + 50


def test_annotators_deterministic():
    a = synthetic_annotators((48, 48), n_annotators=3, seed=7)
    b = synthetic_annotators((48, 48), n_annotators=3, seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
