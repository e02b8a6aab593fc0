"""Ambiguity metrics: how well a set of sampled masks matches a set of annotators' masks (numpy only).

Conventions (stated once, used everywhere)
------------------------------------------
* Masks are boolean (anything non-zero is foreground); a set of masks is an array (K, H, W) (any trailing
  shape works: 3-D masks are (K, D, H, W)).
* ``IoU(empty, empty) = 1`` and ``Dice(empty, empty) = 1``: two annotators who both see nothing agree.
* **GED** is reported *squared*, as PHiSeg and the probabilistic-U-Net papers do:
  ``D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``d = 1 - IoU``, every expectation taken over
  *all* ordered pairs including self-pairs (whose distance is 0). It is 0 when the two sets are equal.
* **CI score** (Rahman et al., CVPR 2023) = ``3 S_c D_max D_a / (S_c + D_max + D_a)``, with
  ``S_c`` the sensitivity of the union of samples against the union of annotators (1 if that union is empty),
  ``D_max`` the mean over annotators of the best Dice against any sample, and
  ``D_a = 1 - (|ΔV_max| + |ΔV_min|) / 2``, ΔV the difference between annotators and samples of the largest
  (smallest) *pairwise pixel variance*. The pairwise pixel variance of masks A, B is the population variance of
  the two values at a pixel, averaged over pixels: ``mean(((A - B) / 2)²) = |A xor B| / (4 P)``; a side with
  fewer than two masks has no pairs and counts as V = 0.
* **D_DDI** compares, for every pair of annotators (i, j), the distribution over images of
  ``Dice(Y_i, Y_j)`` (expert side) with that of ``Dice(S_i, S_j)``, S_i being the sample conditioned on
  annotator i (generated side): histograms on ``bins`` equal bins of [0, 1], Jensen–Shannon divergence in
  bits (so in [0, 1]), averaged over the ``C(M, 2)`` pairs. The paper writes the prefactor as
  ``3 / C(M, 2)``, which does not say whether the 3 belongs to the average; we normalise by ``1 / C(M, 2)``
  so D_DDI is a mean JS divergence in [0, 1] (0 = identical distributions). Multiply by 3 to compare with
  numbers that kept the factor.

Examples
--------
>>> import numpy as np
>>> a = np.array([[[1, 1, 0, 0]]], bool)          # one mask, 2 of 4 pixels
>>> b = np.array([[[0, 1, 1, 0]]], bool)          # overlaps a in 1 pixel: IoU 1/3
>>> round(ged(a, b), 4)                           # 2 * (2/3) - 0 - 0
1.3333
>>> ged(a, a)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["pairwise_iou", "pairwise_dice", "ged", "combined_sensitivity", "d_max", "pairwise_variance",
           "diversity_agreement", "ci_score", "CIScore", "js_divergence", "d_ddi"]


def _masks(masks: ArrayLike, name: str) -> NDArray[np.bool_]:
    m = np.asarray(masks)
    if m.ndim < 2 or m.shape[0] < 1:
        raise ValueError(f"{name} must be a stack of masks (K, H, W) with K >= 1, got shape {m.shape}")
    return m.reshape(m.shape[0], -1) != 0


def _overlaps(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> tuple[NDArray, NDArray, NDArray]:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"mask sets have different pixel counts ({a.shape[1]} and {b.shape[1]})")
    inter = a.astype(np.int64) @ b.astype(np.int64).T
    return inter, a.sum(1)[:, None], b.sum(1)[None, :]


def pairwise_iou(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """IoU of every mask of ``a`` (K, ...) with every mask of ``b`` (M, ...): shape (K, M); IoU(∅, ∅) = 1."""
    inter, sa, sb = _overlaps(_masks(a, "a"), _masks(b, "b"))
    union = sa + sb - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def pairwise_dice(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Dice of every mask of ``a`` with every mask of ``b``: shape (K, M); Dice(∅, ∅) = 1."""
    inter, sa, sb = _overlaps(_masks(a, "a"), _masks(b, "b"))
    total = sa + sb
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def ged(samples: ArrayLike, annotators: ArrayLike) -> float:
    """Squared generalised energy distance ``D²_GED`` with ``d = 1 - IoU`` (see the module conventions).

    Examples
    --------
    >>> s = np.array([[1, 0], [0, 1]], bool).reshape(2, 1, 2)
    >>> round(ged(s, s[:1]), 4)   # 2 * (0 + 1) / 2 - (0 + 1 + 1 + 0) / 4 - 0
    0.5
    """
    d_sy = 1.0 - pairwise_iou(samples, annotators)
    d_ss = 1.0 - pairwise_iou(samples, samples)
    d_yy = 1.0 - pairwise_iou(annotators, annotators)
    return float(2.0 * d_sy.mean() - d_ss.mean() - d_yy.mean())


def combined_sensitivity(samples: ArrayLike, annotators: ArrayLike) -> float:
    """``S_c``: fraction of the annotators' union covered by the samples' union (1 if the former is empty)."""
    s, y = _masks(samples, "samples").any(0), _masks(annotators, "annotators").any(0)
    if s.shape != y.shape:
        raise ValueError(f"samples and annotators have different pixel counts ({s.size} and {y.size})")
    total = int(y.sum())
    return 1.0 if total == 0 else float((s & y).sum() / total)


def d_max(samples: ArrayLike, annotators: ArrayLike) -> float:
    """``D_max``: mean over annotators of the best Dice against any sample (maximum Dice matching)."""
    return float(pairwise_dice(annotators, samples).max(axis=1).mean())


def pairwise_variance(masks: ArrayLike) -> NDArray[np.float64]:
    """Pairwise pixel variance ``|A xor B| / (4 P)`` of every unordered pair of masks, shape (C(K, 2),)."""
    m = _masks(masks, "masks")
    out = [np.count_nonzero(m[i] ^ m[j]) / (4.0 * m.shape[1]) for i, j in combinations(range(len(m)), 2)]
    return np.asarray(out, np.float64)


def diversity_agreement(samples: ArrayLike, annotators: ArrayLike) -> float:
    """``D_a = 1 - (|ΔV_max| + |ΔV_min|) / 2`` from the pairwise pixel variances of both sides."""
    def extremes(masks: ArrayLike) -> tuple[float, float]:
        v = pairwise_variance(masks)
        return (float(v.max()), float(v.min())) if v.size else (0.0, 0.0)

    (sy_max, sy_min), (ss_max, ss_min) = extremes(annotators), extremes(samples)
    return 1.0 - (abs(sy_max - ss_max) + abs(sy_min - ss_min)) / 2.0


@dataclass(frozen=True)
class CIScore:
    """The CI score and its three parts."""

    ci: float
    s_c: float
    d_max: float
    d_a: float


def ci_score(samples: ArrayLike, annotators: ArrayLike) -> CIScore:
    """Collective-insight score ``3 S_c D_max D_a / (S_c + D_max + D_a)`` (0 when all three are 0)."""
    s_c = combined_sensitivity(samples, annotators)
    dm = d_max(samples, annotators)
    da = diversity_agreement(samples, annotators)
    denom = s_c + dm + da
    return CIScore(ci=3.0 * s_c * dm * da / denom if denom else 0.0, s_c=s_c, d_max=dm, d_a=da)


def js_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen–Shannon divergence in bits between two histograms (normalised here; 0 log 0 = 0)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0 or (p < 0).any() or (q < 0).any():
        raise ValueError("p and q must be non-negative histograms of the same shape with positive mass")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: NDArray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def _histogram(values: NDArray, bins: int) -> NDArray[np.float64]:
    return np.histogram(values, bins=bins, range=(0.0, 1.0))[0].astype(np.float64)


def d_ddi(samples: ArrayLike, annotators: ArrayLike, *, bins: int = 10) -> float:
    """D_DDI: mean over annotator pairs of the JS divergence between expert and generated Dice distributions.

    Parameters
    ----------
    samples, annotators : array, shape (N, M, H, W)
        For N images, the M annotators' masks and M samples, sample i conditioned on annotator i.
    bins : int
        Equal-width histogram bins on [0, 1].

    Returns
    -------
    float
        In [0, 1]; 0 when every pair's Dice distribution is reproduced (see the module docstring for the
        normalising constant).
    """
    s, y = np.asarray(samples), np.asarray(annotators)
    if s.ndim < 3 or s.shape[:2] != y.shape[:2] or s.shape[1] < 2:
        raise ValueError(f"samples and annotators must both be (N, M, H, W) with M >= 2, got {s.shape}, {y.shape}")
    pairs = list(combinations(range(s.shape[1]), 2))
    total = 0.0
    for i, j in pairs:
        expert = np.array([pairwise_dice(y[n, i:i + 1], y[n, j:j + 1])[0, 0] for n in range(len(y))])
        generated = np.array([pairwise_dice(s[n, i:i + 1], s[n, j:j + 1])[0, 0] for n in range(len(s))])
        total += js_divergence(_histogram(expert, bins), _histogram(generated, bins))
    return total / len(pairs)
