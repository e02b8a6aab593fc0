"""Shared by the benchmarks: where the shipped default model is."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "flowsdf-small-monuseg.onnx"  # the README's main command runs this one


def default_engine() -> Path | None:
    """The shipped default model (not the hand-built demo engine beside it), if present."""
    return DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None
