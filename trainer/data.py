"""Training data: image/mask pairs from folders or the synthetic generators, tiles, augmentation, targets.

Sources (``--data``)
--------------------
``synthetic`` / ``synthetic-gray``
    24 H&E-like RGB (or fluorescence-like grayscale) 256² images with nuclei from :mod:`segflow.synthetic`;
    ``synthetic:N`` for N images.
``synthetic-lesions``
    12 (or ``:N``) 64² lesion images, each with 4 annotators' masks (one pair per annotator, ``label`` =
    annotator + 1).
a folder, in one of these layouts (detected in this order)
    * ``DIR/images/*`` with ``DIR/labels/*`` or ``DIR/masks/*``, paired by file stem (a mask stem may end in
      ``_mask``, ``_label``, ``_labels`` or ``_anno``). ``DIR/train/`` is used when ``DIR/images`` is absent
      (MoNuSeg and GlaS in ``/work/shared/data``).
    * Cell Tracking Challenge: ``DIR/NN/tTTT.tif`` with ``DIR/NN_GT/SEG/man_segTTT.tif``.
    * Per-case folders with several annotators (LIDC): ``DIR[/training]/<case>/image*.*`` and
      ``label<k>*.*``.

Masks may be binary (any two values, e.g. 0/255; JPEG masks are thresholded at 127) or instance labels; the
SDF is instance-aware (:func:`segflow.sdf.mask_to_sdf`). It is computed once on the whole image and then
cropped, so tile borders do not create false boundaries. Images are normalised with
:mod:`segflow.normalize` — statistics from the whole image, applied per tile — exactly as the runtime does.

Every tile is a pure function of ``(seed, index)``; batch ``k`` holds indices ``k·B … k·B + B - 1``, so the
data stream resumes exactly from a checkpoint's step and is the same with any number of workers.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from segflow.errors import InputError
from segflow.imageio import IMAGE_SUFFIXES, read_image
from segflow.normalize import apply_norm, channels_and_stats
from segflow.sdf import binary_target, mask_to_sdf
from segflow.synthetic import synthetic_annotators, synthetic_nuclei

__all__ = ["Pair", "load_pairs", "split_pairs", "prepare", "TileDataset", "batches", "val_tiles",
           "describe_data", "KNOWN_DATA"]

# Names and licences from /work/shared/data/README.md, matched against the data path.
KNOWN_DATA = {
    "monuseg": ("MoNuSeg 2018 training split", "CC BY-NC-SA 4.0 (non-commercial)"),
    "glas": ("GlaS 2015 training split", "GlaS terms: research only, no commercial use"),
    "ctc": ("Cell Tracking Challenge Fluo-N2DH-SIM+ 01", "CTC terms: cite; commercial use needs permission"),
    "lidc": ("LIDC-IDRI crops (4 annotators)", "CC BY 3.0"),
    "synthetic": ("segflow synthetic", "MIT (synthetic data)"),
}


@dataclass(frozen=True)
class Pair:
    """One training image with one mask.

    Attributes
    ----------
    name : str
        Image identifier; pairs sharing it (annotators of one image) stay on one side of the split.
    image : ndarray
        (H, W) or (H, W, C), as read.
    labels : ndarray of int32, shape (H, W)
        Instance labels or a 0/1 mask.
    label : int
        Annotator index + 1 for multi-annotator data, 0 otherwise (the net's label input for SSB).
    """

    name: str
    image: NDArray
    labels: NDArray[np.int32]
    label: int = 0


def describe_data(source: str) -> tuple[str, str]:
    """(name, licence) of a data source for the model card, from :data:`KNOWN_DATA` or the folder name."""
    low = source.lower()
    for key, value in KNOWN_DATA.items():
        if key in low:
            return value
    return Path(source).name or source, "unknown: set --data-licence"


def _mask_labels(path: Path) -> NDArray[np.int32]:
    m = read_image(path)
    if m.ndim == 3:
        if not (m == m[..., :1]).all():
            raise InputError(f"mask {path} has differing colour channels: save masks as grayscale or labels.")
        m = m[..., 0]
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return (m > 127).astype(np.int32)
    values = np.unique(m)
    if len(values) <= 2:
        return (m > values.min()).astype(np.int32) if len(values) == 2 else (m > 0).astype(np.int32)
    return m.astype(np.int32)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _paired_folder(root: Path) -> list[Pair]:
    mask_dir = next((root / d for d in ("labels", "masks") if (root / d).is_dir()), None)
    if mask_dir is None:
        raise InputError(f"data folder {root} has images/ but no labels/ or masks/ folder: add the masks.")
    masks = {re.sub(r"_(mask|label|labels|anno)$", "", p.stem): p for p in _images(mask_dir)}
    pairs = []
    for img in _images(root / "images"):
        if img.stem not in masks:
            raise InputError(f"image {img} has no mask with the same stem in {mask_dir}: add it or remove the image.")
        pairs.append(Pair(img.stem, read_image(img), _mask_labels(masks[img.stem])))
    return pairs


def _ctc_folder(root: Path) -> list[Pair]:
    pairs = []
    for seg in sorted(root.glob("[0-9][0-9]_GT/SEG/man_seg*.tif")):
        seq = seg.parent.parent.name[:2]
        img = root / seq / f"t{seg.stem[len('man_seg'):]}.tif"
        if img.is_file():
            pairs.append(Pair(f"{seq}/{img.stem}", read_image(img), read_image(seg).astype(np.int32)))
    return pairs


def _annotator_folder(root: Path) -> list[Pair]:
    pairs = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _images(case)
        images = [p for p in files if p.stem.startswith("image")]
        labels = sorted((int(m.group(1)), p) for p in files if (m := re.match(r"label(\d+)", p.stem)))
        if len(images) == 1 and labels:
            image = read_image(images[0])
            pairs += [Pair(case.name, image, _mask_labels(p), k + 1) for k, p in labels]
    return pairs


@functools.lru_cache(maxsize=4)
def _synthetic_pairs(kind: str, n: int) -> tuple[Pair, ...]:
    """The synthetic sources (cached: they are pure functions of their arguments)."""
    if kind == "synthetic-lesions":
        out = []
        for i in range(n):
            img, masks = synthetic_annotators((64, 64), n_annotators=4, seed=i)
            out += [Pair(f"lesion{i:03d}", img, m.astype(np.int32), k + 1) for k, m in enumerate(masks)]
        return tuple(out)
    return tuple(Pair(f"synth{i:03d}", *synthetic_nuclei((256, 256), rgb=kind == "synthetic", seed=i))
                 for i in range(n))


def load_pairs(source: str) -> list[Pair]:
    """Load all image/mask pairs of ``source`` (see the module docstring for the layouts).

    Raises
    ------
    InputError
        If the folder is missing, matches no layout, or an image has no mask.
    """
    kind, _, count = source.partition(":")
    if kind in ("synthetic", "synthetic-gray", "synthetic-lesions"):
        if count and not (count.isdigit() and int(count) > 0):
            raise InputError(f"data {source!r} has a bad image count: use e.g. {kind}:8.")
        return list(_synthetic_pairs(kind, int(count or (12 if kind == "synthetic-lesions" else 24))))
    root = Path(source)
    if not root.is_dir():
        raise InputError(f"data {root} is not a folder: pass a dataset folder or one of synthetic, "
                         "synthetic-gray, synthetic-lesions.")
    if not (root / "images").is_dir() and (root / "train" / "images").is_dir():
        root = root / "train"
    if (root / "images").is_dir():
        pairs = _paired_folder(root)
    elif any(root.glob("[0-9][0-9]_GT")):
        pairs = _ctc_folder(root)
    else:
        sub = root / "training" if (root / "training").is_dir() else root
        pairs = _annotator_folder(sub)
    if not pairs:
        raise InputError(f"data folder {root} holds no image/mask pairs: lay it out as images/ + labels/ "
                         "(see docs/train.md).")
    return pairs


def split_pairs(pairs: list[Pair], val_images: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole images (all annotators of an image together) for validation.

    ``val_images >= 1`` is a count, ``0 < val_images < 1`` a fraction (at least one image if there are two or
    more), 0 disables validation. The held-out names are a seeded random choice of the sorted names.
    """
    names = sorted({p.name for p in pairs})
    k = int(val_images) if val_images >= 1 else int(round(val_images * len(names)))
    if val_images > 0 and len(names) > 1:
        k = max(k, 1)
    k = min(k, len(names) - 1)
    held = set(np.random.default_rng(seed).permutation(names)[:k].tolist()) if k > 0 else set()
    return [p for p in pairs if p.name not in held], [p for p in pairs if p.name in held]


@dataclass(frozen=True)
class Prepared:
    """A pair ready for tiling: normalised image (H, W, C) float32, target (H, W) and foreground (H, W)."""

    image: NDArray[np.float32]
    target: NDArray[np.float32]
    mask: NDArray[np.bool_]
    label: int


def prepare(pair: Pair, *, in_channels: int, normalisation: dict, target: str, sdf_delta: float) -> Prepared:
    """Normalise the whole image and compute the whole-image target once."""
    img, stats = channels_and_stats(pair.image, in_channels, normalisation, name=f"image {pair.name}")
    if img.shape[:2] != pair.labels.shape:
        raise InputError(f"image {pair.name} is {img.shape[:2]} but its mask is {pair.labels.shape}: "
                         "use masks of the image's size.")
    norm = apply_norm(img, stats)
    tgt = mask_to_sdf(pair.labels, sdf_delta) if target == "sdf" else binary_target(pair.labels)
    return Prepared(norm, tgt, pair.labels != 0, pair.label)


def _pad_to(a: NDArray, tile: int, value: float) -> NDArray:
    ph, pw = max(tile - a.shape[0], 0), max(tile - a.shape[1], 0)
    if ph == 0 and pw == 0:
        return a
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, constant_values=value)


def _jitter(img: NDArray, rng: np.random.Generator, strength: float) -> NDArray:
    x = (img + 1.0) / 2.0
    x = (x - 0.5) * (1 + rng.uniform(-strength, strength)) + 0.5 + rng.uniform(-strength, strength) / 2
    if x.shape[2] == 3:
        x = x * (1 + rng.uniform(-strength, strength, 3) / 2)
    return (np.clip(x, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


class TileDataset(torch.utils.data.Dataset):
    """Random training tiles; item ``i`` depends only on ``(seed, i)``.

    Items are dicts: ``image`` float32 [C, T, T] in [-1, 1], ``target`` float32 [1, T, T], ``mask`` float32
    [1, T, T] (1 = foreground) and ``label`` int64 (annotator + 1, or 0).
    """

    def __init__(self, items: list[Prepared], *, tile: int, augment: bool = True, jitter: float = 0.0,
                 seed: int = 0, length: int = 2**62) -> None:
        if not items:
            raise InputError("the training split holds no images: add data or lower --val-images.")
        self.items, self.tile, self.augment, self.jitter = items, tile, augment, jitter
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        it = self.items[int(rng.integers(len(self.items)))]
        t = self.tile
        img, tgt, msk = _pad_to(it.image, t, -1.0), _pad_to(it.target, t, 1.0), _pad_to(it.mask, t, False)
        y, x = int(rng.integers(img.shape[0] - t + 1)), int(rng.integers(img.shape[1] - t + 1))
        img, tgt, msk = img[y:y + t, x:x + t], tgt[y:y + t, x:x + t], msk[y:y + t, x:x + t]
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            img, tgt, msk = (np.rot90(a, k) for a in (img, tgt, msk))
            if flip:
                img, tgt, msk = img[:, ::-1], tgt[:, ::-1], msk[:, ::-1]
        if self.jitter > 0:
            img = _jitter(img, rng, self.jitter)
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), np.float32)),
                "target": torch.from_numpy(np.ascontiguousarray(tgt[None], np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(msk[None], np.float32)),
                "label": torch.tensor(it.label, dtype=torch.int64)}


def batches(dataset: TileDataset, batch: int, start_step: int, end_step: int, *, workers: int = 0):
    """Yield the batches of steps ``start_step .. end_step - 1`` (indices ``step·batch + j``)."""
    indices = range(start_step * batch, end_step * batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=indices, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0))
    yield from loader


def val_tiles(items: list[Prepared], tile: int, per_image: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Fixed validation tiles: up to ``per_image`` non-overlapping tiles per held-out image, chosen by seed."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for it in items:
        img, msk = _pad_to(it.image, tile, -1.0), _pad_to(it.mask, tile, False)
        h, w = img.shape[:2]
        grid = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
        for j in rng.permutation(len(grid))[:per_image]:
            y, x = grid[j]
            crop = img[y:y + tile, x:x + tile].transpose(2, 0, 1)
            out.append({"image": torch.from_numpy(np.ascontiguousarray(crop)),
                        "mask": torch.from_numpy(msk[y:y + tile, x:x + tile].copy()),
                        "label": torch.tensor(it.label, dtype=torch.int64)})
    return out
