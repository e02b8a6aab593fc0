"""Parity check at export: the ONNX graphs must reproduce PyTorch on random inputs within a tolerance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from segflow.trainer.nets import SegModel

from segflow.errors import ModelCardError

__all__ = ["ParityError", "parity_errors", "check_parity"]


class ParityError(ModelCardError):
    """An exported graph disagrees with the PyTorch model by more than the tolerance."""


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity_errors(
    model: SegModel,
    field_path: str | Path,
    encoder_path: str | Path,
    *,
    tile: int,
    batch_sizes: Sequence[int] = (1, 3),
    extra_sizes: Sequence[int] = (),
    with_label: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Max absolute difference between PyTorch and ONNX Runtime for the encoder and the field graphs.

    Inputs are random: images uniform in [-1, 1], states standard normal, times uniform in [0, 1], labels
    uniform over the label table. The field graph gets the PyTorch encoder's features, so each graph is
    judged on its own.

    Parameters
    ----------
    model : SegModel
        The exported model (evaluated on the CPU in float32).
    field_path, encoder_path : str or Path
        The two ONNX graphs.
    tile : int
        Square side of the test inputs.
    batch_sizes : sequence of int
        Batch sizes tried at ``tile``.
    extra_sizes : sequence of int
        Further square sides tried with batch 1 (to check dynamic height and width).
    with_label : bool
        Feed a ``label`` input to the field graph.
    seed : int
        Seed of the random inputs.

    Returns
    -------
    dict
        ``{"encoder": err, "field": err}``, maxima over all tried shapes.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    enc_sess, field_sess = _session(Path(encoder_path)), _session(Path(field_path))
    errors = {"encoder": 0.0, "field": 0.0}
    shapes = [(b, tile) for b in batch_sizes] + [(1, s) for s in extra_sizes]
    for b, side in shapes:
        image = torch.rand(b, cfg.in_channels, side, side, generator=gen) * 2 - 1
        x = torch.randn(b, cfg.state_channels, side, side, generator=gen)
        t = torch.rand(b, generator=gen)
        label = torch.randint(0, max(cfg.num_labels, 1), (b,), generator=gen) if with_label else None
        with torch.no_grad():
            feats = model.encoder(image)
            out = model.field(x, t, feats, label)
        onnx_feats = enc_sess.run(["features"], {"image": image.numpy()})[0]
        feed = {"x": x.numpy(), "t": t.numpy(), "features": feats.numpy()}
        if with_label:
            feed["label"] = label.numpy()
        onnx_out = field_sess.run(["out"], feed)[0]
        errors["encoder"] = max(errors["encoder"], float(np.abs(onnx_feats - feats.numpy()).max()))
        errors["field"] = max(errors["field"], float(np.abs(onnx_out - out.numpy()).max()))
    return errors


def check_parity(errors: dict[str, float], tol: float, *, where: str) -> None:
    """Raise :class:`ParityError` naming the worst graph if any error exceeds ``tol``."""
    name, err = max(errors.items(), key=lambda kv: kv[1])
    if not err <= tol:  # also catches NaN
        raise ParityError(
            f"{where}: the {name} graph differs from PyTorch by {err:.3g} > tolerance {tol:g}; nothing was "
            f"written: re-export with another --opset, or raise --tol if the difference is acceptable."
        )
