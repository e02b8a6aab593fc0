"""Annotation-free pseudo-labels for COIN-style training — numpy/scipy/scikit-image only (no torch).

Two steps turn an image into instance seeds without any annotation or foundation model:

1. :func:`seed_instances` — the classical pipeline: colour deconvolution to the haematoxylin channel
   (``skimage.color.rgb2hed``; grayscale images are used as they are, bright = nucleus), Gaussian smoothing,
   Otsu's threshold, hole filling and a small-object filter, then a watershed on the distance transform with one
   marker per distance peak.
2. :func:`refine_seeds` — optimal-transport refinement of foreground/background. Every pixel gets a small feature
   vector (haematoxylin at two scales, local contrast, local texture). Entropic optimal transport
   (:func:`sinkhorn`, log domain, regularisation ``reg`` = COIN's lambda) moves the pixels onto ``n_prototypes``
   prototypes, half of them foreground and half background, which are re-estimated as transport-weighted means
   (a soft k-means with fixed cluster masses, SwAV's equipartition within each group). The pixels are uniform;
   the target marginal gives the foreground prototypes together the seeds' foreground fraction, so the OT
   re-decides *which* pixels are foreground from their features without shrinking or growing the total. A
   pixel's foreground probability is the transport mass it sends to foreground prototypes. The refined mask is
   split into instances by the same distance-transform watershed.

COIN itself refines with SAM and scores with MAE-pretrained features; neither exists offline here, so the OT runs
on these hand-made pixel features and the instance scores come from IoU agreement (``segflow.runtime.confidence``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = ["SinkhornResult", "Refined", "sinkhorn", "nuclear_channel", "pixel_features", "split_instances",
           "seed_instances", "refine_seeds"]


@dataclass(frozen=True)
class SinkhornResult:
    """Entropic OT solution: ``plan = exp((f[:, None] + g[None, :] - cost) / reg)``.

    Attributes
    ----------
    plan : ndarray, shape (N, M)
        Transport plan; rows sum to ``a``, columns to ``b``.
    f, g : ndarray
        Dual potentials (log-domain scalings times ``reg``).
    n_iter : int
        Iterations run.
    error : float
        Max absolute deviation of the plan's row sums from ``a`` at exit (columns are exact after each sweep).
    """

    plan: NDArray[np.float64]
    f: NDArray[np.float64]
    g: NDArray[np.float64]
    n_iter: int
    error: float


def _logsumexp(x: NDArray, axis: int) -> NDArray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn(cost: NDArray, a: NDArray | None = None, b: NDArray | None = None, *, reg: float = 0.05,
             max_iter: int = 2000, tol: float = 1e-9) -> SinkhornResult:
    """Entropic optimal transport by Sinkhorn iterations: in scaling form while ``exp(-cost/reg)`` fits in
    float64, in the log domain (stable for any small ``reg``) beyond.

    Solves ``min <P, C> - reg * H(P)`` s.t. ``P 1 = a``, ``P^T 1 = b``.

    Parameters
    ----------
    cost : ndarray, shape (N, M)
        Cost matrix.
    a, b : ndarray, optional
        Source and target marginals (positive, equal sums); uniform ``1/N`` and ``1/M`` when omitted.
    reg : float
        Entropic regularisation (lambda); smaller = closer to unregularised OT, more iterations.
    max_iter, tol : int, float
        Stop when the row sums are within ``tol`` of ``a`` or after ``max_iter`` sweeps.

    Examples
    --------
    >>> r = sinkhorn(np.array([[0.0, 1.0], [1.0, 0.0]]), reg=0.01)
    >>> np.round(r.plan, 3).tolist()
    [[0.5, 0.0], [0.0, 0.5]]
    """
    c = np.asarray(cost, np.float64)
    if c.ndim != 2 or 0 in c.shape:
        raise ValueError(f"cost must be a non-empty 2-D matrix, got shape {c.shape}")
    if reg <= 0:
        raise ValueError(f"reg must be positive, got {reg}")
    n, m = c.shape
    a = np.full(n, 1.0 / n) if a is None else np.asarray(a, np.float64)
    b = np.full(m, 1.0 / m) if b is None else np.asarray(b, np.float64)
    if a.shape != (n,) or b.shape != (m,) or (a <= 0).any() or (b <= 0).any():
        raise ValueError("marginals a and b must be positive vectors matching the cost's rows and columns")
    if not np.isclose(a.sum(), b.sum(), rtol=1e-9):
        raise ValueError(f"marginals must have equal mass, got {a.sum()} and {b.sum()}")
    if np.abs(c).max() / reg < _SCALING_LIMIT:
        return _sinkhorn_scaling(c, a, b, reg, max_iter, tol)
    log_a, log_b = np.log(a), np.log(b)
    f, g = np.zeros(n), np.zeros(m)
    err, it = np.inf, 0
    for it in range(1, max_iter + 1):
        f = reg * (log_a - _logsumexp((g[None, :] - c) / reg, axis=1))
        g = reg * (log_b - _logsumexp((f[:, None] - c) / reg, axis=0))
        if it % 10 == 0 or it == max_iter:
            rows = np.exp(_logsumexp((f[:, None] + g[None, :] - c) / reg, axis=1))
            err = float(np.abs(rows - a).max())
            if err <= tol:
                break
    plan = np.exp((f[:, None] + g[None, :] - c) / reg)
    return SinkhornResult(plan=plan, f=f, g=g, n_iter=it, error=err)


# exp(-600) ~ 1e-261: the Gibbs kernel and the scalings stay inside float64, so the scaling form is exact
_SCALING_LIMIT = 600.0


def _sinkhorn_scaling(c: NDArray, a: NDArray, b: NDArray, reg: float, max_iter: int, tol: float
                      ) -> SinkhornResult:
    """The same iterations as the log-domain loop in scaling form (u = e^(f/reg), v = e^(g/reg)): two
    matrix-vector products per sweep instead of two log-sum-exps over the whole matrix (~10x faster). Used when
    ``|cost| / reg`` is small enough for the Gibbs kernel ``exp(-cost/reg)`` not to under- or overflow."""
    k = np.exp(-c / reg)
    u, v = np.ones(len(a)), np.ones(len(b))
    err, it = np.inf, 0
    for it in range(1, max_iter + 1):
        u = a / (k @ v)
        v = b / (k.T @ u)
        if it % 10 == 0 or it == max_iter:
            err = float(np.abs(u * (k @ v) - a).max())
            if err <= tol:
                break
    plan = u[:, None] * k * v[None, :]
    return SinkhornResult(plan=plan, f=reg * np.log(u), g=reg * np.log(v), n_iter=it, error=err)


def nuclear_channel(image: NDArray) -> NDArray[np.float64]:
    """Nuclear stain in [0, 1], high on nuclei: haematoxylin by colour deconvolution, or grayscale intensity."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] >= 3:
        from skimage.color import rgb2hed

        rgb = img[..., :3].astype(np.float64)
        rgb = rgb / (65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype.kind in "ui" else max(rgb.max(), 1))
        h = rgb2hed(np.clip(rgb, 0, 1))[..., 0]
    elif img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        h = img.reshape(img.shape[:2]).astype(np.float64)
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {img.shape}")
    lo, hi = np.percentile(h, [0.5, 99.5])
    return np.clip((h - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def split_instances(mask: NDArray[np.bool_], *, min_area: int = 12, min_distance: int = 3,
                    footprint: int | None = None) -> NDArray[np.int32]:
    """Instances from a binary mask: fill holes, drop objects < ``min_area`` px, distance-transform watershed.

    One marker per distance peak at least ``min_distance`` px apart (peaks below ``min_distance`` px from the
    border of the object are merged away by requiring a 1-px prominence after smoothing).
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    m = ndi.binary_fill_holes(np.asarray(mask, bool))
    if min_area > 1:
        comps, _ = ndi.label(m)
        m &= (np.bincount(comps.ravel()) >= min_area)[comps]
    if not m.any():
        return np.zeros(m.shape, np.int32)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(m), 1.0)
    comps, _ = ndi.label(m)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False,
                           footprint=None if footprint is None else np.ones((footprint, footprint), bool))
    markers = np.zeros(m.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=m)
    missed, n_missed = ndi.label(m & (lab == 0))  # components without a peak keep one label each
    lab = np.where(missed > 0, missed + lab.max(), lab)
    return lab.astype(np.int32)


def seed_instances(image: NDArray, *, sigma: float = 1.0, min_area: int = 12,
                   min_distance: int = 3) -> NDArray[np.int32]:
    """Classical seeds: nuclear channel, Gaussian blur, Otsu, distance-transform watershed.

    Examples
    --------
    >>> img = np.zeros((20, 20)); img[3:9, 3:9] = 1.0; img[12:18, 10:17] = 1.0
    >>> int(seed_instances(img).max())
    2
    """
    from skimage.filters import threshold_otsu

    h = ndi.gaussian_filter(nuclear_channel(image), sigma)
    if np.ptp(h) == 0:
        return np.zeros(h.shape, np.int32)
    return split_instances(h > threshold_otsu(h), min_area=min_area, min_distance=min_distance)


def pixel_features(image: NDArray) -> NDArray[np.float64]:
    """Per-pixel features (H*W, 4), each standardised: stain at sigma 1 and 3, local contrast, local texture."""
    h = nuclear_channel(image)
    s1, s3 = ndi.gaussian_filter(h, 1.0), ndi.gaussian_filter(h, 3.0)
    contrast = s1 - ndi.gaussian_filter(h, 8.0)
    texture = np.sqrt(np.maximum(ndi.gaussian_filter(h * h, 2.0) - ndi.gaussian_filter(h, 2.0) ** 2, 0))
    feats = np.stack([s1, s3, contrast, texture], axis=-1).reshape(-1, 4)
    return (feats - feats.mean(0)) / (feats.std(0) + 1e-12)


@dataclass(frozen=True)
class Refined:
    """OT-refined pseudo-labels: instance ``labels``, foreground probability ``fg_prob`` and the prototypes."""

    labels: NDArray[np.int32]
    fg_prob: NDArray[np.float64]
    prototypes: NDArray[np.float64]
    prototype_fg: NDArray[np.bool_]


def refine_seeds(image: NDArray, seeds: NDArray, *, reg: float = 0.05, n_prototypes: int = 8,
                 rounds: int = 5, max_pixels: int = 20000, min_area: int = 12, min_distance: int = 3,
                 seed: int = 0) -> Refined:
    """Refine seed foreground/background by entropic OT from pixel features to fg and bg prototypes.

    ``n_prototypes // 2`` prototypes start as means of stain-ordered slices of the seeds' foreground pixels, the
    others of their background pixels; the target marginal is the seeds' foreground fraction spread evenly over
    the foreground prototypes and the rest over the background ones.

    Parameters
    ----------
    image : ndarray
        (H, W, 3) H&E-like or (H, W) grayscale image.
    seeds : ndarray of int, shape (H, W)
        Seed instances (0 = background), e.g. from :func:`seed_instances`; they place the prototypes and set the
        foreground mass.
    reg : float
        Entropic regularisation (COIN's lambda) on costs normalised to a maximum of 1.
    n_prototypes : int
        Number of prototypes (>= 2), half foreground and half background.
    rounds : int
        Prototype updates (transport-weighted means).
    max_pixels : int
        Pixels sampled for fitting the prototypes; every pixel is then assigned with the fitted dual potential.
    """
    if n_prototypes < 2:
        raise ValueError(f"n_prototypes must be at least 2 (one foreground, one background), got {n_prototypes}")
    feats = pixel_features(image)
    fg_seed = np.asarray(seeds).reshape(-1) > 0
    rng = np.random.default_rng(seed)
    idx = rng.choice(feats.shape[0], size=min(max_pixels, feats.shape[0]), replace=False)
    x, x_fg = feats[idx], fg_seed[idx]
    n = x.shape[0]
    # Half the prototypes start in the seeds' foreground, half in their background (means of equal-size slices
    # along the stain feature), and the target marginal gives each group the seeds' share of the pixels. Plain
    # uniform marginals (1 / n_prototypes each) would round the foreground fraction to a multiple of
    # 1 / n_prototypes: 8 prototypes and 17 % nuclei leave one foreground prototype with 12.5 % of the pixels,
    # and every refined mask shrinks to about three quarters of its seed.
    p_fg = float(np.clip(x_fg.mean(), 1.0 / n, 1.0 - 1.0 / n))
    n_fg = n_prototypes // 2
    groups = []
    for part, k in ((np.flatnonzero(x_fg), n_fg), (np.flatnonzero(~x_fg), n_prototypes - n_fg)):
        part = part if part.size >= k else np.arange(n)  # seeds (nearly) empty or full: slice all pixels
        order = part[np.argsort(x[part, 0])]
        groups.append(np.stack([x[chunk].mean(0) for chunk in np.array_split(order, k)]))
    protos = np.concatenate(groups)
    b = np.r_[np.full(n_fg, p_fg / n_fg), np.full(n_prototypes - n_fg, (1 - p_fg) / (n_prototypes - n_fg))]
    for _ in range(rounds):
        cost = ((x[:, None, :] - protos[None]) ** 2).sum(-1)
        scale = cost.max()
        res = sinkhorn(cost / scale, b=b, reg=reg, max_iter=500, tol=1e-7)
        w = res.plan / res.plan.sum(0, keepdims=True)
        protos = w.T @ x
    # out-of-sample assignment of every pixel with the fitted column potential g: P(k | x) ~ exp((g_k - C) / reg)
    cost_all = ((feats[:, None, :] - protos[None]) ** 2).sum(-1) / scale
    logits = (res.g[None, :] - cost_all) / reg
    post = np.exp(logits - logits.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    proto_fg = np.arange(n_prototypes) < n_fg
    fg_prob = (post[:, proto_fg].sum(1)).reshape(np.asarray(seeds).shape)
    labels = split_instances(fg_prob > 0.5, min_area=min_area, min_distance=min_distance)
    return Refined(labels=labels, fg_prob=fg_prob, prototypes=protos, prototype_fg=proto_fg)
