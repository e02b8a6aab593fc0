"""File-level helpers behind ``runtime solve`` and ``runtime evaluate`` (reading maps, writing label TIFFs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from segflow.errors import InputError
from segflow.imageio import label_dtype, list_images, read_image, write_tiff
from segflow.sdf import sdf_to_prob

from .hemd import hemd
from .instances import instances_from_prob, instances_from_sdf

KINDS = ("prob", "sdf", "classes")


@dataclass(frozen=True)
class MapFile:
    """One input file: its path and its array, (H, W), (T, H, W) for a stack, or (3, H, W) for classes."""

    path: Path
    data: NDArray


def read_stack(path: Path) -> NDArray:
    """Read a 2-D image or a multi-page TIFF (pages first) without reinterpreting the page axis."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            return np.asarray(tifffile.imread(path))
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for broken files
            raise InputError(f"image {path} is not a readable TIFF ({exc}): re-save or re-copy the file.") from exc
    return read_image(path)


def to_unit(a: NDArray, path: Path) -> NDArray[np.float64]:
    """Scale a probability map to [0, 1]: uint8 / 255, uint16 / 65535, floats as they are."""
    if a.dtype == np.uint8:
        return a / 255.0
    if a.dtype == np.uint16:
        return a / 65535.0
    f = a.astype(np.float64)
    if f.size and (f.min() < 0 or f.max() > 1):
        raise InputError(f"probability map {path} has values outside [0, 1]: pass --kind sdf for SDF maps or "
                         "rescale it.")
    return f


def load_maps(inputs: list[str | Path]) -> list[MapFile]:
    """Every image under ``inputs`` (files and folders, sorted)."""
    return [MapFile(p, read_stack(p)) for p in list_images(inputs)]


def _single(arr: NDArray, path: Path, kind: str, method: str, opts: dict) -> NDArray:
    if kind == "sdf":
        return instances_from_sdf(arr.astype(np.float64), method=method, **opts)
    if kind == "classes":
        c = arr if arr.shape[0] == 3 else np.moveaxis(arr, -1, 0)
        return instances_from_prob(to_unit(c, path), method="maxvalue", **opts)
    return instances_from_prob(to_unit(arr, path), method=method, **opts)


def solve_stack(stack: NDArray, path: Path, *, kind: str, method: str, sequence: bool, hemd_opts: dict,
                opts: dict) -> NDArray:
    """Labels for one 2-D map, or a (T, H, W) stack (H-EMD across frames when ``sequence`` and method hemd)."""
    if stack.ndim == 2 or (kind == "classes" and stack.ndim == 3):
        return _single(stack, path, kind, method, opts)
    if stack.ndim != 3:
        raise InputError(f"map {path} has shape {stack.shape}: expected (H, W) or a (T, H, W) stack.")
    if sequence and method == "hemd" and kind in ("prob", "sdf"):
        if kind == "sdf":
            thr = float(opts.get("threshold", 0.0))
            probs, tau = sdf_to_prob(stack), (1.0 - thr) / 2.0
        else:
            probs, tau = to_unit(stack, path), hemd_opts.get("tau", 0.5)
        return hemd(probs, **{**hemd_opts, "tau": tau}).labels
    return np.stack([_single(s, path, kind, method, opts) for s in stack])


def write_labels(path: Path, labels: NDArray) -> None:
    """Write a label TIFF (uint16 when the labels fit, else uint32) atomically."""
    n = int(labels.max()) if labels.size else 0
    write_tiff(path, labels.astype(label_dtype(n)))


def read_labels(inputs: str | Path, *, suffix: str | None = None) -> list[tuple[str, NDArray]]:
    """Label images under a file or folder as ``(name, 2-D array)``; pages of a stack become ``name#t``.

    With ``suffix`` (``"_labels"`` for ``runtime segment`` output), a folder holding files whose names end in it
    is read for those files only, and the suffix is dropped from their names, so ``NAME_labels.tif`` (or a
    slide's ``NAME_labels.ome.tif``) pairs with a ground truth ``NAME.tif`` and the maps beside it
    (``NAME_sdf.tif`` ...) are not mistaken for labels.
    """
    paths = {p: p.stem.removesuffix(".ome") for p in list_images([inputs])}
    tagged = {p: s.removesuffix(suffix) for p, s in paths.items() if suffix and s.endswith(suffix)}
    out = []
    for p, name in (tagged or paths).items():
        a = read_stack(p)
        if a.ndim == 2:
            out.append((name, a))
        elif a.ndim == 3:
            out.extend((f"{name}#{t}", a[t]) for t in range(a.shape[0]))
        else:
            raise InputError(f"label image {p} has shape {a.shape}: expected (H, W) or (T, H, W).")
    return out


def pair_labels(pred: list[tuple[str, NDArray]], gt: list[tuple[str, NDArray]]):
    """Pair predictions with ground truths by name, else in sorted order when the counts agree."""
    gt_names = dict(gt)
    common = [(n, a, gt_names[n]) for n, a in pred if n in gt_names]
    if common:
        return common
    if len(pred) != len(gt):
        raise InputError(f"found {len(pred)} predictions and {len(gt)} ground truths with no common file names: "
                         "name them alike or give the same number of each.")
    return [(f"{pn} ~ {gn}", pa, ga) for (pn, pa), (gn, ga) in zip(pred, gt, strict=True)]
