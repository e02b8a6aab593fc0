"""Shared input checks for the solvers: each raises ``ValueError``/``TypeError`` naming the parameter."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

CONNECTIVITIES = (1, 2)


def check_prob(prob: NDArray, name: str = "prob", *, ndim: int = 2) -> NDArray[np.float64]:
    """Return ``prob`` as a float64 array of ``ndim`` dimensions with values in [0, 1].

    Examples
    --------
    >>> check_prob(np.array([[0.2, 1.0]])).dtype
    dtype('float64')
    """
    a = np.asarray(prob)
    if a.dtype == bool or a.dtype.kind not in "uif":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got range [{a.min():.3g}, {a.max():.3g}]")
    return a


def check_label_image(label_image: NDArray, name: str = "label_image", *, ndim: int = 2) -> NDArray:
    """Return ``label_image`` as an integer array (bool becomes 0/1); negative labels are refused.

    Examples
    --------
    >>> check_label_image(np.array([[0, 2]])).tolist()
    [[0, 2]]
    """
    a = np.asarray(label_image)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        if a.size and not np.array_equal(a, np.round(a)):
            raise TypeError(f"{name} must hold integer labels, got non-integer floats")
        a = a.astype(np.int64)
    if a.dtype.kind not in "ui":
        raise TypeError(f"{name} must be an integer label image, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{name} must not contain negative labels")
    return a


def check_connectivity(connectivity: int) -> int:
    """Return ``connectivity`` (1 = 4-neighbours, 2 = 8-neighbours) or raise ``ValueError``."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")
    return int(connectivity)


def check_same_shape(a: NDArray, b: NDArray, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` if two arrays differ in shape."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}")


def check_choice(value: str, choices, name: str) -> str:
    """Raise ``ValueError`` listing ``choices`` if ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: choose one of {sorted(choices)}")
    return value
