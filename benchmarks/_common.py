"""Shared by the benchmarks: where the shipped default model is, and exporting a random network."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "flowsdf-small-monuseg.onnx"  # the README's main command runs this one


def default_engine() -> Path | None:
    """The shipped default model (not the hand-built demo engine beside it), if present."""
    return DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None


def export_random(cfg, tile: int, out: Path, **card_fields):
    """Export a randomly initialised network of config ``cfg`` (seed 0) at ``out`` with a card for ``tile``;
    return the PyTorch model (for references run beside the exported graphs)."""
    import torch
    from segflow.export.onnx import export_model
    from segflow.trainer.nets import SegModel

    from segflow.card import ModelCard

    torch.manual_seed(0)
    model = SegModel(cfg).eval()
    card = ModelCard(preset=cfg.name, tile=tile, in_channels=cfg.in_channels, feature_channels=cfg.base,
                     **card_fields)
    export_model(model, card, out, check=False)
    return model
