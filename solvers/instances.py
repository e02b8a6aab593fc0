"""Instances from one map: the entry points the runtime and the CLI call (``method`` picks the algorithm).

For SDF maps (negative inside, 0 on boundaries and on the ridge between touching instances, see
:mod:`segflow.sdf`) the map is turned into a probability with :func:`segflow.sdf.sdf_to_prob` (0.5 on the
boundary), so ``sdf <= threshold`` is the forest's lowest level. Touching instances merge at that level and
separate just above it; the default single-image selection (``score="persistence"``) picks the separated
children, because the merged region persists only over the ridge's short range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from segflow.sdf import sdf_to_prob

from ._validate import check_choice, check_connectivity
from .baselines import BASELINES, _relabel, label_components
from .fill import fill_to_mask
from .forest import build_forest
from .single import select_single

PROB_METHODS = ("hemd", *BASELINES)
SDF_METHODS = ("hemd", "watershed", "threshold")


def forest_instances(prob: NDArray, *, tau: float = 0.5, score: str = "persistence", min_area: int = 0,
                     connectivity: int = 1, decimals: int = 2, fill: bool = True,
                     samples: Sequence[NDArray] | None = None) -> NDArray[np.uint32]:
    """Single-image selection on the candidate forest (see :mod:`.single`), grown back to the tau mask.

    Examples
    --------
    >>> p = np.array([[0.6, 0.9, 0.9, 0.55, 0.9, 0.9, 0.6]])       # two cells merged only at 0.5-0.55
    >>> forest_instances(p).tolist(), forest_instances(p, score="roots").tolist()
    ([[1, 1, 1, 2, 2, 2, 2]], [[1, 1, 1, 1, 1, 1, 1]])
    """
    f = build_forest(prob, tau=tau, decimals=decimals, connectivity=connectivity, min_area=min_area)
    lab = f.to_labels(select_single(f, score=score, samples=samples))
    if fill:
        lab = fill_to_mask(lab, f.node_map >= 0, connectivity=connectivity)
    return _relabel(lab, min_area)


def instances_from_prob(prob: NDArray, *, method: str = "hemd", min_area: int = 0, connectivity: int = 1,
                        **kwargs) -> NDArray[np.uint32]:
    """Instance labels (uint32, 1..N) from a probability map with any method of :data:`PROB_METHODS`.

    ``"hemd"`` is the single-image forest selection (:func:`forest_instances`); the others are the
    baselines of :mod:`.baselines` (``"maxvalue"`` takes a (3, H, W) class map). Extra keywords go to the
    chosen function.
    """
    check_choice(method, PROB_METHODS, "method")
    fn = forest_instances if method == "hemd" else BASELINES[method]
    return fn(prob, min_area=min_area, connectivity=connectivity, **kwargs)


def instances_from_sdf(mean_sdf: NDArray, *, method: str = "hemd", threshold: float = 0.0, min_area: int = 10,
                       connectivity: int = 1, **kwargs) -> NDArray[np.uint32]:
    """Instance labels (uint32, 1..N) from a (mean) SDF map; the union of instances is ``sdf <= threshold``
    minus instances smaller than ``min_area``.

    Parameters
    ----------
    mean_sdf : ndarray of float, shape (H, W)
        SDF in [-1, 1] (negative inside).
    method : {"hemd", "watershed", "threshold"}
        ``"hemd"``: forest of ``sdf_to_prob(sdf)`` from ``tau = (1 - threshold) / 2`` with the single-image
        persistence selection (keywords ``score``, ``samples``, ``decimals`` pass through);
        ``"watershed"``: watershed of the SDF inside the mask, seeded at the h-maxima of ``-sdf`` (keyword
        ``h``, default 0.1); ``"threshold"``: components of ``sdf < threshold`` grown over the zero ridge.
    threshold : float
        Mask level: foreground is ``sdf <= threshold``.
    min_area : int
        Smallest instance kept, in pixels.

    Examples
    --------
    >>> from segflow.sdf import mask_to_sdf
    >>> lab = np.zeros((9, 16), int); lab[1:8, 1:8] = 1; lab[1:8, 8:15] = 2          # two touching squares
    >>> sdf = mask_to_sdf(lab, delta=4.0)
    >>> [int(instances_from_sdf(sdf, method=m, min_area=1).max()) for m in SDF_METHODS]
    [2, 2, 2]
    """
    check_choice(method, SDF_METHODS, "method")
    check_connectivity(connectivity)
    sdf = np.asarray(mean_sdf, np.float64)
    if sdf.ndim != 2:
        raise ValueError(f"mean_sdf must be 2-D, got shape {sdf.shape}")
    mask = sdf <= threshold
    if method == "hemd":
        tau = (1.0 - float(np.clip(threshold, -1, 1))) / 2.0
        return forest_instances(sdf_to_prob(sdf), tau=tau, min_area=min_area, connectivity=connectivity, **kwargs)
    if method == "watershed":
        return _sdf_watershed(sdf, mask, connectivity=connectivity, min_area=min_area, **kwargs)
    cores = label_components(sdf < threshold, connectivity=connectivity)
    lab = fill_to_mask(cores, mask, connectivity=connectivity, max_steps=2)
    rest = label_components(mask & (lab == 0), connectivity=connectivity)
    lab = np.where(rest > 0, rest + lab.max(), lab)
    return _relabel(lab, min_area)


def _sdf_watershed(sdf: NDArray, mask: NDArray, *, connectivity: int, min_area: int, h: float = 0.1):
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if not mask.any():
        return np.zeros(sdf.shape, np.uint32)
    inside = np.where(mask, -sdf, -1.0)
    peaks = h_maxima(inside, h).astype(bool) & mask
    markers = label_components(peaks, connectivity=2)
    lab = watershed(sdf, markers.astype(np.int32), mask=mask, connectivity=connectivity)
    return _relabel(lab, min_area)
