"""Grow instance labels into the unlabelled pixels of a mask (geodesic dilation, one pixel per step)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from ._validate import check_connectivity


def fill_to_mask(labels: NDArray, mask: NDArray, *, connectivity: int = 1, max_steps: int | None = None) -> NDArray:
    """Give every unlabelled pixel of ``mask`` the label of the instance that reaches it first.

    Growth moves one neighbour per step and only through ``mask``, so it never crosses background; pixels
    of mask components without any instance stay 0. Where two instances arrive in the same step the larger
    label wins. Used after selecting forest nodes above tau, whose union is smaller than the tau mask.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels (0 = none), fewer than 2**24.
    mask : ndarray of bool, shape (H, W)
        Pixels to cover.
    connectivity : {1, 2}
        Neighbourhood of one growth step.
    max_steps : int, optional
        Stop after this many steps (default: until nothing changes).

    Returns
    -------
    ndarray
        New label image, same dtype as ``labels``.

    Examples
    --------
    >>> fill_to_mask(np.array([[0, 1, 0, 0, 2, 0]]), np.array([[1, 1, 1, 1, 1, 0]], bool)).tolist()
    [[1, 1, 1, 2, 2, 0]]
    """
    lab = np.asarray(labels)
    m = np.asarray(mask, bool)
    if lab.shape != m.shape:
        raise ValueError(f"labels and mask must have the same shape, got {lab.shape} and {m.shape}")
    if lab.size and lab.max() >= 2**24:
        raise ValueError("labels must be below 2**24 to be grown")
    kernel = np.ones((3, 3), np.uint8) if check_connectivity(connectivity) == 2 else \
        cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    work = lab.astype(np.float32)
    todo = m & (lab == 0)
    steps = 0
    while todo.any() and (max_steps is None or steps < max_steps):
        grown = cv2.dilate(work, kernel)
        take = todo & (grown > 0)
        if not take.any():
            break
        work[take] = grown[take]
        todo &= ~take
        steps += 1
    return work.astype(lab.dtype)
