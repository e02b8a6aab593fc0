"""Image normalisation shared by the trainer and the runtime, so inference sees what training saw."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from segflow.errors import InputError


def as_channels(image: NDArray, in_channels: int, *, name: str = "image") -> NDArray:
    """Return ``image`` as (H, W, C) with C = ``in_channels``.

    Grayscale is repeated to 3 channels for RGB models; RGB is converted to luminance for 1-channel models;
    an alpha channel is dropped. Other channel counts raise :class:`InputError`.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise InputError(f"{name} has shape {img.shape}: expected a 2-D grayscale or (H, W, C) colour image.")
    c = img.shape[2]
    if c == 4:
        img, c = img[..., :3], 3
    if c == in_channels:
        return img
    if c == 1 and in_channels == 3:
        return np.repeat(img, 3, axis=2)
    if c == 3 and in_channels == 1:
        w = np.array([0.299, 0.587, 0.114], np.float32)
        return (img.astype(np.float32) @ w)[..., None].astype(img.dtype if img.dtype.kind == "f" else np.float32)
    raise InputError(f"{name} has {c} channels but the model takes {in_channels}: convert it to 1 or 3 channels.")


def dtype_scale(dtype: np.dtype) -> float:
    """The value that maps to 1.0 for the ``dtype`` normalisation mode."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype.kind == "b":
        return 1.0
    if dtype.kind == "f":
        return 1.0
    if dtype.kind in "iu":
        return float(np.iinfo(dtype).max)
    raise InputError(f"image dtype {dtype} is unsupported: use uint8, uint16 or float images.")


def norm_stats(image: NDArray, spec: dict) -> tuple[float, float]:
    """Return (offset, scale) such that ``(x - offset) / scale`` lies in [0, 1] for this image.

    Compute it once per image (or slide) and apply it per tile with :func:`apply_norm`, so tiling never
    changes the normalisation.
    """
    mode = spec.get("mode", "dtype")
    if mode == "dtype":
        return 0.0, dtype_scale(np.asarray(image).dtype)
    if mode == "percentile":
        a = np.asarray(image, np.float32)
        lo, hi = np.percentile(a, [spec.get("low", 1.0), spec.get("high", 99.8)])
        return float(lo), float(max(hi - lo, 1e-6))
    raise ValueError(f"unknown normalisation mode {mode!r}")


def apply_norm(image: NDArray, stats: tuple[float, float]) -> NDArray[np.float32]:
    """Normalise to [-1, 1] (float32, channels last kept) with precomputed ``(offset, scale)``."""
    off, scale = stats
    x = (np.asarray(image, np.float32) - off) / scale
    return (np.clip(x, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def channels_and_stats(image: NDArray, in_channels: int, spec: dict, *,
                       name: str = "image") -> tuple[NDArray, tuple[float, float]]:
    """Return ``image`` as (H, W, ``in_channels``) and its normalisation statistics, the same way everywhere.

    RGB -> gray (:func:`as_channels`) turns an integer image into float luminance, so in ``dtype`` mode the
    scale must come from the input's dtype (255 for uint8), not from the float result (1.0). Training, COIN
    and the runtime all go through here, so a 1-channel model sees the same values in each.
    """
    raw = np.asarray(image)
    img = as_channels(raw, in_channels, name=name)
    return img, norm_stats(raw if spec.get("mode", "dtype") == "dtype" else img, spec)


def normalize(image: NDArray, spec: dict) -> NDArray[np.float32]:
    """Normalise a whole image to [-1, 1] as in training (``norm_stats`` then ``apply_norm``)."""
    return apply_norm(image, norm_stats(image, spec))
