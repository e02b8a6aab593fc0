"""The training configuration: one dataclass, overridable from a TOML file and from command-line flags.

Torch-free, so that ``trainer --help`` works on a machine without the ``train`` extra. Precedence, lowest first:
the dataclass defaults, the checkpoint's config when resuming, the TOML file, the command-line flags.

A TOML file holds the fields at top level and may add a ``[net]`` table of network overrides (any
:class:`segflow.trainer.nets.NetConfig` field) and an ``[objective]`` table of objective-specific settings::

    preset = "lite"
    data = "/work/shared/data/monuseg"
    steps = 20000
    [net]
    base = 32
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.config import apply_overrides, load_toml
from segflow.errors import InputError

__all__ = ["TrainConfig", "load_config"]


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; each scalar field is also a ``trainer train --flag``."""

    kind: str = _f("flowsdf", "objective: flowsdf (flow matching on SDFs) or ssb (Schrödinger bridge)")
    preset: str = _f("lite", "network preset: lite (CPU) or paper (reference size, GPU)")
    data: str = _f("synthetic", "training data: a folder (see docs/train.md) or synthetic, synthetic-gray, "
                                "synthetic-lesions")
    data_name: str = _f("", "training-data name for the model card (default: detected from --data)")
    data_licence: str = _f("", "training-data licence for the model card (default: detected from --data)")
    val_images: float = _f(0.2, "held-out validation images: a count (>= 1) or a fraction of the images (< 1)")
    tile: int = _f(128, "square training tile in pixels (multiple of 8)")
    batch: int = _f(4, "tiles per step")
    lr: float = _f(1e-4, "Adam learning rate")
    warmup: int = _f(0, "linear learning-rate warm-up steps (0 = constant lr)")
    steps: int = _f(1000, "total optimiser steps")
    ema: float = _f(0.999, "EMA decay of the weights that are validated and exported")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)")
    seed: int = _f(0, "random seed (weights, noise, tiles, augmentations, validation split)")
    augment: bool = _f(True, "random flips and 90-degree rotations")
    jitter: float = _f(0.0, "colour jitter strength (0 = off; 0.1 is mild)")
    normalisation: str = _f("dtype", "image normalisation: dtype (uint8/255, uint16/65535) or percentile")
    in_channels: int = _f(0, "image channels of the model (0 = from the data: 3 if RGB else 1)")
    target: str = _f("sdf", "training target: sdf (FlowSDF) or binary (the +-1 mask ablation)")
    sdf_delta: float = _f(8.0, "SDF truncation in pixels")
    sigma_min: float = _f(1e-4, "flow-matching sigma_min")
    threshold: float = _f(0.0, "mask = state <= threshold (written to the model card)")
    pixel_size_um: float = _f(0.0, "micrometres per pixel of the training images, written to the model card so "
                                   "whole slides are read at the matching pyramid level (0 = unknown)")
    val_every: int = _f(500, "validate and checkpoint every N steps (0 = only at the end)")
    val_tiles: int = _f(4, "tiles per held-out image used for validation")
    val_steps: int = _f(4, "integration steps when sampling for validation (and the card's default)")
    val_method: str = _f("euler", "integrator for validation sampling: euler, heun or rk4")
    val_samples: int = _f(1, "samples averaged per validation tile")
    log_every: int = _f(50, "print a loss line every N steps when stderr is not a terminal (0 = never)")
    workers: int = _f(0, "data-loader worker processes")
    out: str = _f("runs/train", "output folder (checkpoint.pt, card.json, log.jsonl)")
    resume: str = _f("", "checkpoint to resume from (its config is the base of this run's config)")
    device: str = _f("cpu", "torch device: cpu or cuda")
    net: dict = _f({}, "network overrides (TOML [net] table), e.g. base = 16")
    objective: dict = _f({}, "objective-specific settings (TOML [objective] table)")

    def __post_init__(self) -> None:
        if self.tile < 8 or self.tile % 8:
            raise InputError(f"tile={self.tile} must be a positive multiple of 8: pick e.g. 128.")
        if self.batch < 1 or self.steps < 0:
            raise InputError(f"batch={self.batch} and steps={self.steps} must be >= 1 and >= 0.")
        if self.target not in ("sdf", "binary"):
            raise InputError(f"target {self.target!r} is unknown: use sdf or binary.")
        if self.normalisation not in ("dtype", "percentile"):
            raise InputError(f"normalisation {self.normalisation!r} is unknown: use dtype or percentile.")
        if self.in_channels not in (0, 1, 3):
            raise InputError(f"in_channels={self.in_channels} is unsupported: use 0 (from data), 1 or 3.")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and the card)."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from ``base`` (a checkpoint's config), a TOML file and flag overrides.

    Raises
    ------
    InputError
        If the file is missing or malformed, or sets an unknown option.
    """
    cfg = TrainConfig()
    if base:
        cfg = apply_overrides(cfg, base, source="checkpoint config")
    if path:
        cfg = apply_overrides(cfg, load_toml(path), source=f"config file {path}")
    return apply_overrides(cfg, overrides or {}, source="command line")
