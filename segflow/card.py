"""The model card: everything the runtime needs to know about a model, carried inside the model files.

A card is the frozen training configuration that matters at inference: what kind of model it is, the tile it
was trained on, its channels, how images are normalised, the SDF truncation, the mask threshold and the
flow/bridge constants. The trainer writes it into the checkpoint, the exporter writes it as JSON into the ONNX
metadata (key :data:`METADATA_KEY`) of both graphs, and, for TensorRT plans, into a sidecar ``.card.json``.

Engine naming convention (one ``--engine PATH`` finds everything)
-----------------------------------------------------------------
Given ``--engine models/flowsdf.onnx`` (or ``.plan``), the runtime uses

* ``models/flowsdf.onnx`` — the vector-field graph (inputs ``x``, ``t``, ``features`` [, ``label``]);
* ``models/flowsdf.encoder.onnx`` — the image-encoder graph (input ``image``, output ``features``);
* ``models/flowsdf.card.json`` — optional for ONNX (the card is in the metadata), required beside plans.

For a plan, ``flowsdf.plan`` / ``flowsdf.encoder.plan`` / ``flowsdf.card.json``. A path without suffix, or a
directory holding exactly one field graph, is resolved the same way (:func:`resolve_engine`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.errors import ModelCardError, require_onnxruntime

METADATA_KEY = "segflow.card"
KINDS = ("flowsdf", "ssb")
CARD_SCHEMA = 1


@dataclass(frozen=True)
class ModelCard:
    """What a trained model needs at inference.

    Attributes
    ----------
    kind : str
        ``"flowsdf"`` (flow matching on SDFs; the field predicts a velocity) or ``"ssb"`` (Schrödinger bridge;
        the field predicts the bridge noise).
    preset : str
        Network preset it was built from (``"lite"``, ``"paper"`` or ``"custom"``).
    tile : int
        Square tile side the model was trained on, in pixels.
    in_channels : int
        Image channels (1 grayscale, 3 RGB).
    feature_channels : int
        Channels of the encoder output that the field graph takes.
    normalisation : dict
        ``{"mode": "dtype"}`` (uint8/255, uint16/65535, float as is, then to [-1, 1]) or
        ``{"mode": "percentile", "low": 1.0, "high": 99.8}`` (per image).
    sdf_delta : float
        SDF truncation in pixels; the model's state lives in [-1, 1] = [-delta, delta] px.
    threshold : float
        Mask = state <= threshold (FlowSDF) — the reference code uses 0.03.
    target : str
        ``"sdf"`` or ``"binary"`` (the ±1-mask ablation).
    sigma_min : float
        Flow-matching sigma_min.
    pixel_size_um : float or None
        Microns per pixel of the training images (whole-slide level selection).
    training_data : str
        Name of the training data.
    licence : str
        Licence of the training data (weights inherit it).
    version : str
        segflow version that wrote the card.
    bridge : dict
        SSB only: ``{"beta_max", "n_timesteps", "n_labels", "x1": {...}}``.
    sampling : dict
        Default sampling settings (``steps``, ``method``, ``samples``), overridable on the command line.
    extra : dict
        Free-form provenance (training command, time, validation scores).
    """

    kind: str = "flowsdf"
    preset: str = "lite"
    tile: int = 128
    in_channels: int = 3
    feature_channels: int = 32
    normalisation: dict = field(default_factory=lambda: {"mode": "dtype"})
    sdf_delta: float = 8.0
    threshold: float = 0.0
    target: str = "sdf"
    sigma_min: float = 1e-4
    pixel_size_um: float | None = None
    training_data: str = "synthetic"
    licence: str = "MIT (synthetic data)"
    version: str = ""
    bridge: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=lambda: {"steps": 4, "method": "euler", "samples": 4})
    extra: dict = field(default_factory=dict)
    schema: int = CARD_SCHEMA

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelCardError(f"model card kind {self.kind!r} is unknown: expected one of {KINDS}.")
        if self.in_channels not in (1, 3):
            raise ModelCardError(f"model card in_channels={self.in_channels} is unsupported: use 1 or 3.")
        if self.tile < 8 or self.tile % 8:
            raise ModelCardError(f"model card tile={self.tile} must be a positive multiple of 8.")
        if self.sdf_delta <= 0:
            raise ModelCardError(f"model card sdf_delta={self.sdf_delta} must be positive.")
        mode = self.normalisation.get("mode")
        if mode not in ("dtype", "percentile"):
            raise ModelCardError(f"model card normalisation mode {mode!r} is unknown: use 'dtype' or 'percentile'.")

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the card as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the card as canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "model card") -> ModelCard:
        """Build a card from a dict, rejecting unknown keys with a one-sentence error naming ``source``."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{source} is not a JSON object: re-export the model with `trainer export`.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelCardError(
                f"{source} has unknown fields {unknown}: it was written by a newer segflow, upgrade segflow."
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, *, source: str = "model card") -> ModelCard:
        """Parse a card from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{source} is not valid JSON ({exc.msg}): re-export the model.") from exc
        return cls.from_dict(data, source=source)

    def replace(self, **changes: Any) -> ModelCard:
        """Return a copy with fields replaced."""
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """Short SHA-256 of the canonical JSON, used to tell models apart in manifests."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EnginePaths:
    """The files behind one ``--engine`` argument (see the module docstring)."""

    field: Path
    encoder: Path
    card: Path
    format: str  # "onnx" or "plan"


def resolve_engine(path: str | Path) -> EnginePaths:
    """Resolve ``--engine PATH`` into the field graph, encoder graph and card sidecar.

    Raises
    ------
    ModelCardError
        If the field or encoder graph is missing; the message names the missing file.
    """
    p = Path(path)
    if p.is_dir():
        fields = sorted(
            q for q in p.iterdir() if q.suffix in (".onnx", ".plan") and not q.name.endswith(f".encoder{q.suffix}")
        )
        if len(fields) != 1:
            raise ModelCardError(
                f"engine folder {p} holds {len(fields)} field graphs: pass the .onnx or .plan file itself."
            )
        p = fields[0]
    if p.suffix not in (".onnx", ".plan"):
        for suffix in (".onnx", ".plan"):
            if p.with_name(p.name + suffix).exists():
                p = p.with_name(p.name + suffix)
                break
    if not p.exists():
        raise ModelCardError(f"engine {p} does not exist: pass the path of an exported .onnx or built .plan model.")
    if p.suffix not in (".onnx", ".plan"):
        raise ModelCardError(f"engine {p} is neither .onnx nor .plan: pass an exported model.")
    stem = p.name[: -len(p.suffix)]
    if stem.endswith(".encoder"):
        raise ModelCardError(f"engine {p} is an encoder graph: pass the field graph {stem[:-8]}{p.suffix} instead.")
    encoder = p.with_name(f"{stem}.encoder{p.suffix}")
    if not encoder.exists():
        raise ModelCardError(
            f"engine {p} has no companion encoder graph {encoder.name} beside it: copy it next to the model."
        )
    return EnginePaths(field=p, encoder=encoder, card=p.with_name(f"{stem}.card.json"), format=p.suffix[1:])


def card_from_onnx(path: str | Path) -> ModelCard:
    """Read the model card from an ONNX file's metadata using onnxruntime (no ``onnx`` package needed)."""
    ort = require_onnxruntime()

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for corrupt files
        raise ModelCardError(f"{path} is not a readable ONNX model ({type(exc).__name__}): re-export it.") from exc
    meta = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelCardError(f"{path} carries no segflow model card: export it with `trainer export`.")
    return ModelCard.from_json(meta[METADATA_KEY], source=f"model card in {path}")


def load_card(engine: EnginePaths) -> ModelCard:
    """Load the card of a resolved engine: the sidecar JSON if present, else the ONNX metadata."""
    if engine.card.exists():
        return ModelCard.from_json(engine.card.read_text(), source=str(engine.card))
    if engine.format == "onnx":
        return card_from_onnx(engine.field)
    raise ModelCardError(f"plan {engine.field} has no card {engine.card.name} beside it: rebuild with `runtime build`.")
