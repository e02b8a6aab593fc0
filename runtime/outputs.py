"""Writing one image's results: TIFF maps, label image and a JSON summary, all or nothing.

Files for input ``NAME.ext`` in ``--out DIR``:

========================  ==========================================================
``NAME_labels.tif``       instance labels, uint16 (uint32 beyond 65534 instances)
``NAME_mask.tif``         binary mask, uint8 0/255
``NAME_sdf.tif``          mean SDF over the K samples, float32
``NAME_std.tif``          per-pixel standard deviation over the K samples, float32
``NAME_prob.tif``         fraction of samples inside (foreground probability), float32
``NAME_samples.tif``      the K samples (K, H, W) float32 — only with ``samples=True``
``NAME.json``             summary: settings, timings, NFE, backend, card, instance table
========================  ==========================================================

Every file is first written to a temporary name in ``DIR``; only when all are complete are they renamed onto
their final names, so a failure leaves no partial set.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from segflow import __version__
from segflow.imageio import atomic_path

__all__ = ["output_paths", "summary", "write_segmentation"]

SUFFIXES = {"labels": "_labels.tif", "mask": "_mask.tif", "mean_sdf": "_sdf.tif", "std": "_std.tif",
            "prob": "_prob.tif", "samples": "_samples.tif", "summary": ".json"}


def output_paths(out_dir: str | Path, stem: str, *, samples: bool = False) -> dict[str, Path]:
    """The files :func:`write_segmentation` writes for ``stem``."""
    d = Path(out_dir)
    return {k: d / f"{stem}{s}" for k, s in SUFFIXES.items() if samples or k != "samples"}


def summary(seg: Any, *, input_path: str | Path | None = None, input_shape: tuple | None = None,
            input_dtype: str | None = None, files: dict[str, Path] | None = None) -> dict[str, Any]:
    """The JSON summary of a :class:`~segflow.runtime.session.Segmentation`."""
    n_tiles = seg.timings.get("tiles", 0)
    return {
        "segflow_version": __version__,
        "input": {"path": str(input_path) if input_path else None,
                  "shape": list(input_shape) if input_shape is not None else list(seg.mean_sdf.shape),
                  "dtype": input_dtype},
        "instances": {"count": seg.n_instances, "method": seg.instance_method},
        "sampling": {"kind": seg.card.kind, "samples": seg.samples, "steps": seg.steps, "method": seg.method,
                     "nfe": seg.nfe, "nfe_total": seg.nfe * seg.samples * n_tiles,
                     "noise_iterations": seg.noise_iterations, "seed": seg.seed, "stride": seg.stride,
                     "tile": seg.card.tile, "blend": seg.blend},
        "foreground_fraction": float(np.mean(seg.mask)) if seg.mask.size else 0.0,
        "timings": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in seg.timings.items()},
        "backend": seg.backend,
        "model_card": seg.card.to_dict(),
        "files": {k: Path(v).name for k, v in (files or {}).items()},
        "instance_table": list(seg.instances),
    }


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | Path):
        return o.tolist() if isinstance(o, np.ndarray) else str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _tiff(path: Path, array: np.ndarray, description: str) -> None:
    import tifffile

    tifffile.imwrite(path, array, compression="zlib", description=description)


def write_segmentation(seg: Any, out_dir: str | Path, stem: str, *, input_path: str | Path | None = None,
                       input_shape: tuple | None = None, input_dtype: str | None = None,
                       samples: bool = False) -> dict[str, Path]:
    """Write every output of one image atomically as a set; return the paths by kind."""
    paths = output_paths(out_dir, stem, samples=samples)
    arrays = {"labels": seg.labels, "mask": seg.mask.astype(np.uint8) * 255,
              "mean_sdf": seg.mean_sdf.astype(np.float32), "std": seg.std.astype(np.float32),
              "prob": seg.prob.astype(np.float32)}
    if samples:
        arrays["samples"] = seg.sample_sdfs.astype(np.float32)
    info = summary(seg, input_path=input_path, input_shape=input_shape, input_dtype=input_dtype, files=paths)
    text = json.dumps(info, indent=2, default=_plain) + "\n"
    with ExitStack() as stack:  # every temp is renamed only if all writes succeed
        for kind, arr in arrays.items():
            tmp = stack.enter_context(atomic_path(paths[kind]))
            _tiff(tmp, arr, f"segflow {kind}")
        stack.enter_context(atomic_path(paths["summary"])).write_text(text)
    return paths
