"""segflow.export: checkpoint -> ONNX graphs (encoder + field) with the model card, parity-checked.

Importing this package does not import torch; ``segflow.export.onnx`` does.
"""

from __future__ import annotations

__all__ = ["export_model", "export_checkpoint", "make_checkpoint", "ExportReport", "ParityError"]


def __getattr__(name: str):
    if name in ("export_model", "export_checkpoint", "make_checkpoint", "ExportReport"):
        from segflow.export import onnx

        return getattr(onnx, name)
    if name == "ParityError":
        from segflow.export.parity import ParityError

        return ParityError
    raise AttributeError(f"module 'segflow.export' has no attribute {name!r}")
