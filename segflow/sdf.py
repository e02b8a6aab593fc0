"""Truncated, normalised signed distance functions (SDF) of masks — numpy only.

Convention (FlowSDF): negative inside, boundary pixels exactly 0, positive outside, clipped at ``delta`` pixels
and divided by ``delta`` so values lie in [-1, 1]. The mask is recovered exactly with ``sdf <= 0``.

* A foreground pixel's value is minus its Euclidean distance to the nearest *boundary pixel*, where boundary
  pixels are foreground pixels with a 4-neighbour of a different label (background or another instance).
* A background pixel's value is its distance to the nearest foreground pixel (>= 1).

Instance label masks: pixels where two instances meet are boundary pixels of both, so they are 0. The union
of all instances is still ``sdf <= 0``, and touching instances are separated by a ridge of zeros: the
connected components of ``sdf < 0`` (or of ``-sdf`` above any level > 0) are the instances' interiors. Pixels
on the image edge are not boundary pixels (the object may continue outside the tile).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi


def boundary_pixels(label_image: NDArray) -> NDArray[np.bool_]:
    """Foreground pixels with a 4-neighbour of a different label.

    Parameters
    ----------
    label_image : ndarray of int or bool, shape (H, W)
        Binary mask or instance labels (0 = background).

    Returns
    -------
    ndarray of bool
        True on boundary pixels.

    Examples
    --------
    >>> m = np.zeros((5, 5), int); m[1:4, 1:4] = 1
    >>> boundary_pixels(m).sum()
    8
    """
    lab = np.asarray(label_image)
    if lab.ndim != 2:
        raise ValueError(f"label_image must be 2-D, got shape {lab.shape}")
    lab = lab.astype(np.int64) if lab.dtype == bool else lab
    fg = lab != 0
    diff = np.zeros(lab.shape, dtype=bool)
    diff[1:, :] |= lab[1:, :] != lab[:-1, :]
    diff[:-1, :] |= lab[:-1, :] != lab[1:, :]
    diff[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    diff[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return fg & diff


def mask_to_sdf(label_image: NDArray, delta: float = 8.0) -> NDArray[np.float32]:
    """Truncated normalised SDF of a binary or instance mask.

    Parameters
    ----------
    label_image : ndarray, shape (H, W)
        Binary mask (bool or 0/1) or instance labels (0 = background).
    delta : float
        Truncation distance in pixels.

    Returns
    -------
    ndarray of float32 in [-1, 1]
        ``sdf <= 0`` equals ``label_image != 0``.

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> s = mask_to_sdf(m, delta=2.0)
    >>> float(s[2, 2]), float(s[1, 1]), float(s[0, 2])
    (-0.5, 0.0, 0.5)
    >>> bool(((s <= 0) == m).all())
    True
    """
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    lab = np.asarray(label_image)
    if lab.ndim != 2:
        raise ValueError(f"label_image must be 2-D, got shape {lab.shape}")
    fg = lab != 0
    if not fg.any():
        return np.ones(lab.shape, np.float32)
    if fg.all():
        # no background: interior distance to the (absent) boundary is unbounded, use the boundary if any
        bnd = boundary_pixels(lab)
        if not bnd.any():
            return -np.ones(lab.shape, np.float32)
    else:
        bnd = boundary_pixels(lab)
    d_in = ndi.distance_transform_edt(~bnd) if bnd.any() else np.full(lab.shape, np.inf)
    d_out = ndi.distance_transform_edt(~fg)
    sdf = np.where(fg, -d_in, d_out)
    return (np.clip(sdf, -delta, delta) / delta).astype(np.float32)


def sdf_to_mask(sdf: NDArray, threshold: float = 0.0) -> NDArray[np.bool_]:
    """Binary mask from an SDF: ``sdf <= threshold``.

    Examples
    --------
    >>> sdf_to_mask(np.array([[-0.5, 0.0, 0.25]])).tolist()
    [[True, True, False]]
    """
    return np.asarray(sdf) <= threshold


def binary_target(label_image: NDArray) -> NDArray[np.float32]:
    """The binary-mask ablation's target: -1 inside, +1 outside (same sign convention as the SDF)."""
    return np.where(np.asarray(label_image) != 0, -1.0, 1.0).astype(np.float32)


def sdf_to_prob(sdf: NDArray) -> NDArray[np.float32]:
    """Map an SDF in [-1, 1] to a foreground score in [0, 1]: ``(1 - sdf) / 2`` (0.5 on the boundary)."""
    return ((1.0 - np.clip(np.asarray(sdf, np.float32), -1, 1)) / 2.0).astype(np.float32)
