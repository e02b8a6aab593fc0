"""Inference backends behind one protocol (load, run, close; context manager).

:func:`open_backend` picks the backend from the file type: ``.onnx`` → ONNX Runtime
(:class:`~segflow.runtime.backends.onnxrt.OrtBackend`), ``.plan`` → TensorRT
(``segflow.runtime.backends.tensorrt.TensorRTBackend``, imported only when asked for).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from segflow.runtime.backends.base import Backend, TensorMeta, check_feed

from segflow.errors import CUPY_PACKAGE, BackendError

__all__ = ["Backend", "TensorMeta", "check_feed", "open_backend", "KINDS"]

KINDS = ("auto", "onnxrt", "tensorrt")
_PACKAGES = {"cupy": CUPY_PACKAGE, "tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx-cu13"}  # module -> pip


def _tensorrt_backend(path: Path, **options: Any) -> Backend:
    try:
        mod = importlib.import_module("segflow.runtime.backends.tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name != "segflow.runtime.backends.tensorrt":
            raise BackendError(
                f"running the TensorRT plan {path} needs the module {exc.name!r}, which is not installed: "
                f"run `pip install {_PACKAGES.get(exc.name.split('.')[0], exc.name)}` or pass the .onnx model instead."
            ) from exc
        raise BackendError(
            f"this segflow has no TensorRT backend to run {path}: pass the .onnx model instead."
        ) from exc
    cls = getattr(mod, "TensorRTBackend", None)
    if cls is None:
        raise BackendError(f"segflow's TensorRT backend module lacks TensorRTBackend, so {path} cannot run.")
    return cls(path, **options)


def open_backend(path: str | Path, kind: str = "auto", **options: Any) -> Backend:
    """Create (not activate) the backend for one graph file.

    Parameters
    ----------
    path : str or Path
        ``.onnx`` or ``.plan`` file.
    kind : {"auto", "onnxrt", "tensorrt"}
        ``"auto"`` picks by suffix.
    **options
        Passed to the backend (ONNX Runtime: ``device``, ``threads``, ``allow_spinning``).

    Raises
    ------
    BackendError
        For an unknown kind, a suffix the kind cannot run, or a missing TensorRT module.
    """
    p = Path(path)
    if kind not in KINDS:
        raise BackendError(f"unknown backend kind {kind!r}: choose one of {KINDS}.")
    suffix = p.suffix.lower()
    if kind == "auto":
        kind = {".onnx": "onnxrt", ".plan": "tensorrt", ".engine": "tensorrt"}.get(suffix, "")
        if not kind:
            raise BackendError(f"cannot tell the backend for {p} from its suffix: pass a .onnx or .plan file.")
    if kind == "onnxrt":
        if suffix != ".onnx":
            raise BackendError(f"ONNX Runtime cannot run {p}: pass the .onnx model.")
        from segflow.runtime.backends.onnxrt import OrtBackend

        return OrtBackend(p, **options)
    return _tensorrt_backend(p, **options)
