"""Shared pieces of the whole-slide tests: a tile-32 test engine and synthetic pyramidal slides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tifffile

MODELS = Path(__file__).resolve().parents[1] / "models"


def make_engine(folder: Path, *, tile: int = 32, blur: int = 5, pixel_size_um: float | None = None) -> Path:
    """A ``dirac``-field RGB engine (sample SDF = normalised channel mean, box-blurred) with a ``tile`` card."""
    sys.path.insert(0, str(MODELS))
    try:
        import make_models as mm
    finally:
        sys.path.remove(str(MODELS))
    cj = json.dumps(mm.card("slide", 3, tile=tile, pixel_size_um=pixel_size_um), sort_keys=True)
    mm._save(mm.field_graph("dirac"), folder / "slide.onnx", cj)
    mm._save(mm.encoder_graph(3, blur), folder / "slide.encoder.onnx", cj)
    return folder / "slide.onnx"


def write_pyramid(path: Path, image: np.ndarray, *, levels: int = 2, tile: int = 64, mpp: float | None = 0.5) -> Path:
    """Write ``image`` (H, W, 3) as a tiled pyramidal OME-TIFF (SubIFDs, each level halved)."""
    meta = {"axes": "YXS"}
    if mpp:
        meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(image, subifds=levels - 1, tile=(tile, tile), metadata=meta, photometric="rgb")
        for k in range(1, levels):
            tw.write(image[:: 2**k, :: 2**k], subfiletype=1, tile=(tile, tile), photometric="rgb")
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images have the same background and the same instances up to renumbering."""
    a, b = np.asarray(a, np.int64).ravel(), np.asarray(b, np.int64).ravel()
    if not ((a > 0) == (b > 0)).all():
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def write_discs(tmp_path: Path) -> Path:
    """A 48² grayscale TIFF with three dark discs (radius 6) on white, for the confidence CLI tests."""
    img = np.full((48, 48), 255, np.uint8)
    yy, xx = np.mgrid[:48, :48]
    for cy, cx in ((12, 12), (12, 34), (34, 20)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 0
    path = tmp_path / "im.tif"
    tifffile.imwrite(path, img)
    return path
