"""Synthetic images with known ground truth for tests, demos and smoke trainings (numpy + scipy, no torch).

Three generators, each deterministic for a given ``seed`` and fast (milliseconds):

* :func:`synthetic_nuclei` — an H&E-like RGB tile (Beer–Lambert mix of haematoxylin and eosin, so colour
  deconvolution works on it) or a fluorescence-like grayscale tile, with isolated and touching nuclei and their
  instance labels.
* :func:`synthetic_sequence` — a short 2D+time sequence of moving, touching and dividing cells with a
  Cell-Tracking-Challenge-style lineage table.
* :func:`synthetic_annotators` — a lesion-like image with several annotators' binary masks that disagree on
  the extent of a lesion (and some miss a faint one).

Nuclei are ellipses. Where two ellipses overlap, a pixel belongs to the one whose normalised radius
``(x'/a)^2 + (y'/b)^2`` is smallest, so touching nuclei meet along a curve and every nucleus stays connected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei", "synthetic_sequence", "synthetic_annotators", "SyntheticSequence",
           "paint_ellipses", "contact_line"]

# Ruifrok & Johnston optical-density vectors (unit length), RGB order.
_HAEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_EOSIN = np.array([0.072, 0.990, 0.105])


def paint_ellipses(shape: tuple[int, int], centres: NDArray, axes: NDArray, angles: NDArray,
                   labels: NDArray | None = None) -> NDArray[np.int32]:
    """Rasterise ellipses into an instance label image (overlaps split by the smallest normalised radius).

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the output.
    centres : ndarray, shape (N, 2)
        (row, col) centres.
    axes : ndarray, shape (N, 2)
        Semi-axes (a, b) in pixels along the ellipse's own axes.
    angles : ndarray, shape (N,)
        Rotation in radians.
    labels : ndarray of int, shape (N,), optional
        Label of each ellipse (default 1..N).

    Returns
    -------
    ndarray of int32, shape (H, W)

    Examples
    --------
    >>> lab = paint_ellipses((7, 7), np.array([[3, 3]]), np.array([[2, 2]]), np.array([0.0]))
    >>> int((lab == 1).sum())
    13
    """
    h, w = shape
    out = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    labels = np.arange(1, len(centres) + 1) if labels is None else np.asarray(labels)
    for (cy, cx), (a, b), th, lab in zip(centres, axes, angles, labels, strict=True):
        r = int(np.ceil(max(a, b))) + 1
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        c, s = np.cos(th), np.sin(th)
        rho = ((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2
        win = (rho <= 1.0) & (rho < best[y0:y1, x0:x1])
        best[y0:y1, x0:x1][win] = rho[win]
        out[y0:y1, x0:x1][win] = lab
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> NDArray[np.float64]:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    z = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (z - z.mean()) / (z.std() + 1e-12)


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, int], n: int, radius: tuple[float, float],
                  touching: float) -> tuple[NDArray, NDArray, NDArray]:
    """Centres, semi-axes and angles of ``n`` nuclei; a fraction ``touching`` is placed against a neighbour."""
    h, w = shape
    centres: list[tuple[float, float]] = []
    axes: list[tuple[float, float]] = []
    for _ in range(40 * n):
        if len(centres) == n:
            break
        r = rng.uniform(*radius)
        ab = (r * rng.uniform(1.0, 1.3), r * rng.uniform(0.7, 1.0))
        if centres and rng.random() < touching:
            j = int(rng.integers(len(centres)))
            phi = rng.uniform(0, 2 * np.pi)
            dist = 0.85 * (min(axes[j]) + min(ab))  # overlap a little so they share a boundary
            c = (centres[j][0] + dist * np.sin(phi), centres[j][1] + dist * np.cos(phi))
            need = [0.7 * (min(q) + min(ab)) for q in axes]  # may touch others too: clusters
        else:
            c = (rng.uniform(0, h), rng.uniform(0, w))
            need = [max(q) + max(ab) + 2.0 for q in axes]  # isolated: no contact possible
        if not (0 <= c[0] < h and 0 <= c[1] < w):
            continue
        ok = all(np.hypot(c[0] - p[0], c[1] - p[1]) >= d for p, d in zip(centres, need, strict=True))
        if ok:
            centres.append(c)
            axes.append(ab)
    k = len(centres)
    return (np.array(centres, float).reshape(k, 2), np.array(axes, float).reshape(k, 2),
            rng.uniform(0, np.pi, k))


def _relabel(labels: NDArray[np.int32]) -> NDArray[np.int32]:
    """Renumber labels consecutively 1..N in order of first appearance (raster order)."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[order != 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def contact_line(labels: NDArray) -> NDArray[np.bool_]:
    """One-pixel line where two instances touch: pixels with a 4-neighbour in an instance of *lower* label.

    Examples
    --------
    >>> contact_line(np.array([[1, 1, 2, 2, 0, 3]])).astype(int).tolist()
    [[0, 0, 1, 0, 0, 0]]
    """
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, bool)
    below = (lab[1:] > lab[:-1]) & (lab[:-1] > 0)
    above = (lab[:-1] > lab[1:]) & (lab[1:] > 0)
    right = (lab[:, 1:] > lab[:, :-1]) & (lab[:, :-1] > 0)
    left = (lab[:, :-1] > lab[:, 1:]) & (lab[:, 1:] > 0)
    out[1:] |= below
    out[:-1] |= above
    out[:, 1:] |= right
    out[:, :-1] |= left
    return out


def synthetic_nuclei(shape: tuple[int, int] = (256, 256), *, n: int = 30, radius: tuple[float, float] = (5, 10),
                     touching: float = 0.4, rgb: bool = True, gap: float = 0.0,
                     seed: int = 0) -> tuple[NDArray, NDArray[np.int32]]:
    """An H&E-like (or fluorescence-like) image with nuclei and its instance labels.

    Parameters
    ----------
    shape : tuple of int
        (H, W).
    n : int
        Number of nuclei to attempt (fewer if the image is too crowded).
    radius : tuple of float
        Range of nucleus radii in pixels.
    touching : float
        Probability that a nucleus is placed against an existing one (touching pairs and clusters).
    rgb : bool
        True: H&E-like uint8 RGB (pink stroma, purple-blue nuclei). False: fluorescence-like uint8 grayscale
        (dark background, bright nuclei).
    gap : float
        Fraction of the nuclear stain removed on the one-pixel line where two nuclei touch
        (:func:`contact_line`; the thin paler seam of membrane between touching nuclei). 0 (default) draws no
        seam; the labels are the same either way, the seam pixels belong to their nucleus.
    seed : int
        Random seed; the output is a pure function of the arguments.

    Returns
    -------
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
    labels : ndarray of int32, shape (H, W)
        Instance labels 1..N in raster order of first appearance, 0 = background.

    Examples
    --------
    >>> img, lab = synthetic_nuclei((64, 64), n=5, seed=1)
    >>> img.shape, img.dtype.name, lab.dtype.name
    ((64, 64, 3), 'uint8', 'int32')
    >>> bool(lab.max() >= 1)
    True
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    centres, axes, angles = _place_nuclei(rng, shape, n, radius, touching)
    labels = _relabel(paint_ellipses(shape, centres, axes, angles))
    fg = labels > 0
    # chromatin texture inside nuclei, darker rim (distance to the nucleus boundary is small)
    chromatin = _smooth_noise(rng, shape, 1.0)
    per_nucleus = rng.uniform(0.8, 1.2, labels.max() + 1)[labels]
    inner = ndi.distance_transform_edt(fg)
    rim = np.exp(-np.maximum(inner - 1, 0) / 1.5)
    h_conc = np.where(fg, per_nucleus * (0.9 + 0.15 * chromatin + 0.25 * rim), 0.0)
    if gap:
        h_conc = np.where(contact_line(labels), h_conc * (1.0 - float(gap)), h_conc)
    h_conc = ndi.gaussian_filter(h_conc, 0.7)
    if rgb:
        stroma = 0.5 + 0.25 * _smooth_noise(rng, shape, 6.0) + 0.1 * _smooth_noise(rng, shape, 1.5)
        fibres = np.abs(ndi.gaussian_filter(rng.standard_normal(shape), (0.8, 5.0))) * 0.6
        e_conc = np.clip(stroma + fibres, 0.05, None) * np.where(fg, 0.6, 1.0)
        od = h_conc[..., None] * _HAEMATOXYLIN + e_conc[..., None] * _EOSIN * 0.45 + 0.03
        img = 255.0 * np.exp(-od) + rng.normal(0, 3.0, od.shape)
    else:
        bg = 12 + 4 * _smooth_noise(rng, shape, 8.0)
        img = bg + 150.0 * h_conc * (1.0 + 0.1 * _smooth_noise(rng, shape, 2.0))
        img = ndi.gaussian_filter(img, 1.0) + rng.normal(0, 4.0, shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), labels


@dataclass(frozen=True)
class SyntheticSequence:
    """A synthetic 2D+time sequence.

    Attributes
    ----------
    images : ndarray of uint8, shape (T, H, W)
        Fluorescence-like frames.
    labels : ndarray of int32, shape (T, H, W)
        Instance labels; a cell keeps its track id over time (CTC ``TRA`` convention), 0 = background.
    lineage : ndarray of int64, shape (K, 4)
        One row per track: ``label, begin, end, parent`` (frames inclusive; parent 0 = none), as in CTC's
        ``man_track.txt``. A division ends the parent at frame f - 1 and starts two daughters at frame f.
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.int32]
    lineage: NDArray[np.int64]


def _separate(pos: NDArray, rad: NDArray, shape: tuple[int, int], iters: int = 20) -> NDArray:
    """Push overlapping cells apart (keeps every cell visible) and keep centres inside the frame."""
    lo, hi = rad[:, None], np.array(shape, float)[None, :] - rad[:, None]
    for _ in range(iters):
        d = pos[:, None, :] - pos[None, :, :]
        dist = np.hypot(d[..., 0], d[..., 1]) + np.eye(len(pos))
        need = 0.8 * (rad[:, None] + rad[None, :])
        push = np.clip(need - dist, 0, None) * (1 - np.eye(len(pos)))
        if not push.any():
            break
        pos = pos + 0.5 * (push[..., None] * d / dist[..., None]).sum(axis=1)
        pos = np.clip(pos, lo, hi)
    return np.clip(pos, lo, hi)


def synthetic_sequence(n_frames: int = 8, shape: tuple[int, int] = (128, 128), *, n: int = 10,
                       divisions: int = 1, seed: int = 0) -> SyntheticSequence:
    """Moving, touching and dividing cells over ``n_frames`` frames.

    Parameters
    ----------
    n_frames : int
        Number of frames T.
    shape : tuple of int
        (H, W).
    n : int
        Number of cells in the first frame.
    divisions : int
        Number of mitoses (at distinct frames ≥ 1 when ``n_frames`` allows).
    seed : int
        Random seed.

    Returns
    -------
    SyntheticSequence

    Examples
    --------
    >>> seq = synthetic_sequence(4, (48, 48), n=3, divisions=1, seed=0)
    >>> seq.images.shape, seq.lineage.shape
    ((4, 48, 48), (5, 4))
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    rad = rng.uniform(5, 8, n)
    pos = _separate(rng.uniform(0, 1, (n, 2)) * np.array(shape), rad, shape)
    vel = rng.normal(0, 1.5, (n, 2))
    ids = np.arange(1, n + 1)
    tracks = {int(i): [int(i), 0, 0, 0] for i in ids}
    frames = rng.permutation(np.arange(1, max(n_frames, 2)))[:divisions] if n_frames > 1 else []
    div_at = {int(f) for f in frames}
    angles = rng.uniform(0, np.pi, n)
    images, labels = [], []
    for t in range(n_frames):
        if t > 0:
            vel = 0.8 * vel + rng.normal(0, 0.8, vel.shape)
            pos = pos + vel
            rad = np.minimum(rad * 1.02, 9.0)
        if t in div_at and len(ids):
            k = int(rng.integers(len(ids)))
            parent = int(ids[k])
            tracks[parent][2] = t - 1
            phi = rng.uniform(0, 2 * np.pi)
            off = 0.55 * rad[k] * np.array([np.sin(phi), np.cos(phi)])
            new_ids = np.array([max(tracks) + 1, max(tracks) + 2])
            for j in new_ids:
                tracks[int(j)] = [int(j), t, t, parent]
            keep = np.arange(len(ids)) != k
            pos = np.concatenate([pos[keep], pos[k] + np.stack([off, -off])])
            rad = np.concatenate([rad[keep], np.full(2, max(rad[k] * 0.75, 4.0))])
            vel = np.concatenate([vel[keep], np.stack([off, -off]) * 0.3])
            angles = np.concatenate([angles[keep], np.full(2, phi)])
            ids = np.concatenate([ids[keep], new_ids])
        pos = _separate(pos, rad, shape)
        axes = np.stack([rad * 1.15, rad * 0.85], axis=1)
        lab = paint_ellipses(shape, pos, axes, angles, ids)
        for i in ids:
            tracks[int(i)][2] = t
        fg = lab > 0
        tex = 1.0 + 0.15 * _smooth_noise(rng, shape, 1.5)
        img = ndi.gaussian_filter(np.where(fg, 120.0 * tex, 0.0), 1.2) + 15 + rng.normal(0, 5.0, shape)
        images.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
        labels.append(lab)
    lineage = np.array(sorted(tracks.values()), np.int64).reshape(-1, 4)
    return SyntheticSequence(np.stack(images), np.stack(labels).astype(np.int32), lineage)


def _blob(rng: np.random.Generator, shape: tuple[int, int], centre: NDArray, radius: float,
          harmonics: NDArray, phases: NDArray) -> NDArray[np.float64]:
    """Signed 'radius excess' field of a star-shaped blob: > 0 inside (in pixels)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    dy, dx = yy - centre[0], xx - centre[1]
    theta = np.arctan2(dy, dx)
    k = np.arange(2, 2 + len(harmonics))
    boundary = radius * (1 + (harmonics[:, None, None] * np.cos(k[:, None, None] * theta + phases[:, None, None]))
                         .sum(axis=0))
    return boundary - np.hypot(dy, dx)


def synthetic_annotators(shape: tuple[int, int] = (64, 64), *, n_annotators: int = 4,
                         seed: int = 0) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """A lesion-like grayscale image and ``n_annotators`` disagreeing binary masks.

    Each annotator draws the main lesion with its own extent (scale 0.8–1.2 of the radius, slightly different
    outline); a second, faint lesion is marked by a random subset of annotators, at least one and at most
    ``n_annotators - 1`` of them when ``n_annotators >= 2``.

    Returns
    -------
    image : ndarray of uint8, shape (H, W)
    masks : ndarray of bool, shape (A, H, W)

    Examples
    --------
    >>> img, masks = synthetic_annotators((32, 32), n_annotators=3, seed=0)
    >>> img.shape, masks.shape, masks.dtype.name
    ((32, 32), (3, 32, 32), 'bool')
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    side = min(shape)
    c_main = np.array(shape) / 2 + rng.normal(0, side / 16, 2)
    r_main = side * rng.uniform(0.14, 0.2)
    harm, ph = rng.uniform(0, 0.12, 3), rng.uniform(0, 2 * np.pi, 3)
    c_faint = np.array(shape) * rng.uniform(0.2, 0.8, 2)
    while np.hypot(*(c_faint - c_main)) < r_main * 1.2 + side * 0.15:
        c_faint = np.array(shape) * rng.uniform(0.15, 0.85, 2)
    r_faint = side * rng.uniform(0.06, 0.09)
    main = _blob(rng, shape, c_main, r_main, harm, ph)
    faint = _blob(rng, shape, c_faint, r_faint, harm[::-1] * 0.5, ph)
    soft = 1 / (1 + np.exp(-main / 1.5)) + 0.45 / (1 + np.exp(-faint / 1.5))
    img = 40 + 140 * soft * (1 + 0.1 * _smooth_noise(rng, shape, 1.5)) + 10 * _smooth_noise(rng, shape, 6.0)
    img = np.clip(np.round(img + rng.normal(0, 6, shape)), 0, 255).astype(np.uint8)
    a = int(n_annotators)
    marks = rng.random(a) < 0.5
    if a >= 2:
        marks[rng.integers(a)] = True
        if marks.all():
            marks[rng.choice(np.flatnonzero(marks))] = False
    masks = np.zeros((a, *shape), bool)
    for i in range(a):
        scale = rng.uniform(0.8, 1.2)
        h_i = harm + rng.normal(0, 0.02, 3)
        masks[i] = _blob(rng, shape, c_main, r_main * scale, h_i, ph) >= 0
        if marks[i]:
            masks[i] |= _blob(rng, shape, c_faint, r_faint * rng.uniform(0.8, 1.2), harm[::-1] * 0.5, ph) >= 0
    return img, masks
