"""Classical instance baselines the H-EMD paper compares against, on probability maps.

* ``threshold``: connected components of ``prob >= 0.5``.
* ``otsu``: connected components above Otsu's threshold of the map.
* ``watershed``: watershed of the Gaussian-smoothed distance map of the 0.5 mask, seeded at its local maxima.
* ``maxvalue``: 3-class maps (background, interior, boundary): components of the argmax-interior pixels,
  grown into the argmax-boundary pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from ._validate import check_connectivity, check_prob
from .fill import fill_to_mask


def label_components(mask: NDArray, *, connectivity: int = 1, min_area: int = 0) -> NDArray[np.uint32]:
    """Connected components of a boolean mask as labels 1..N in raster order, dropping those < ``min_area``.

    Examples
    --------
    >>> label_components(np.array([[1, 0, 1], [0, 0, 1]], bool)).tolist()
    [[1, 0, 2], [0, 0, 2]]
    """
    m = np.ascontiguousarray(np.asarray(mask, bool))
    n, lab = cv2.connectedComponents(m.view(np.uint8), connectivity=4 if check_connectivity(connectivity) == 1
                                     else 8, ltype=cv2.CV_32S)
    if min_area > 1 and n > 1:
        area = np.bincount(lab.ravel(), minlength=n)
        keep = area >= min_area
        keep[0] = False
        lut = np.where(keep, np.cumsum(keep), 0)
        lab = lut[lab]
    return lab.astype(np.uint32)


def threshold_instances(prob: NDArray, *, threshold: float = 0.5, connectivity: int = 1,
                        min_area: int = 0) -> NDArray[np.uint32]:
    """Connected components of ``prob >= threshold``."""
    return label_components(check_prob(prob) >= threshold, connectivity=connectivity, min_area=min_area)


def otsu_instances(prob: NDArray, *, connectivity: int = 1, min_area: int = 0) -> NDArray[np.uint32]:
    """Connected components of ``prob`` above Otsu's threshold (0.5 for a constant map)."""
    from skimage.filters import threshold_otsu

    p = check_prob(prob)
    t = threshold_otsu(p) if p.size and p.min() < p.max() else 0.5
    return label_components(p > t, connectivity=connectivity, min_area=min_area)


def watershed_instances(prob: NDArray, *, threshold: float = 0.5, sigma: float = 1.0, min_distance: int = 3,
                        connectivity: int = 1, min_area: int = 0) -> NDArray[np.uint32]:
    """Watershed of the smoothed distance map of ``prob >= threshold``, seeded at its local maxima."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = check_prob(prob) >= threshold
    if not mask.any():
        return np.zeros(mask.shape, np.uint32)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), sigma) if sigma > 0 else \
        ndi.distance_transform_edt(mask)
    comps = label_components(mask, connectivity=connectivity)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=mask, connectivity=check_connectivity(connectivity))
    return _relabel(lab, min_area)


def maxvalue_instances(class_prob: NDArray, *, interior: int = 1, boundary: int = 2, connectivity: int = 1,
                       min_area: int = 0) -> NDArray[np.uint32]:
    """Instances from a 3-class map (C, H, W): components of argmax == interior, grown into argmax == boundary."""
    c = np.asarray(class_prob, np.float64)
    if c.ndim != 3 or c.shape[0] < 3:
        raise ValueError(f"class_prob must have shape (3, H, W), got {c.shape}")
    arg = np.argmax(c, axis=0)
    lab = label_components(arg == interior, connectivity=connectivity)
    lab = fill_to_mask(lab, (arg == interior) | (arg == boundary), connectivity=connectivity, max_steps=2)
    return _relabel(lab, min_area)


def _relabel(lab: NDArray, min_area: int) -> NDArray[np.uint32]:
    lab = np.asarray(lab, np.int64)
    n = int(lab.max()) if lab.size else 0
    area = np.bincount(lab.ravel(), minlength=n + 1)
    keep = area >= max(min_area, 1)
    keep[0] = False
    return np.where(keep, np.cumsum(keep), 0)[lab].astype(np.uint32)


BASELINES: dict[str, Callable[..., NDArray]] = {
    "threshold": threshold_instances,
    "otsu": otsu_instances,
    "watershed": watershed_instances,
    "maxvalue": maxvalue_instances,
}
