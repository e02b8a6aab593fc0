"""Export a :class:`~segflow.trainer.nets.SegModel` as two ONNX graphs carrying the model card, parity-checked.

Files written for ``out_path = models/NAME.onnx`` (the convention :func:`segflow.card.resolve_engine` reads):

* ``models/NAME.onnx`` — the field: inputs ``x`` [B,1,H,W], ``t`` [B], ``features`` [B,F,H,W] (and ``label``
  int64 [B] for kind ``ssb``), output ``out`` [B,1,H,W];
* ``models/NAME.encoder.onnx`` — the encoder: input ``image`` [B,C,H,W], output ``features`` [B,F,H,W];
* ``models/NAME.card.json`` — the card, also stored in both graphs' metadata under ``segflow.card``.

B is dynamic, and so are H and W as multiples of ``2 ** downsamplings``. Everything is first written into a
temporary folder beside the destination and moved into place only after the parity check passed, so a failed
export leaves nothing behind.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from segflow.export.checkpoint import make_checkpoint, model_from_checkpoint
from segflow.export.parity import check_parity, parity_errors
from segflow.trainer.nets import SegModel
from torch import nn

import segflow
from segflow.card import METADATA_KEY, ModelCard
from segflow.errors import InputError, ModelCardError

__all__ = ["ExportReport", "export_model", "export_checkpoint", "make_checkpoint"]

# protobuf cannot hold a single file above 2 GiB; bigger models keep their weights in NAME.onnx.data
_SINGLE_FILE_LIMIT = 1_800_000_000


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how well the graphs match PyTorch.

    Attributes
    ----------
    field, encoder, card : Path
        The field graph, the encoder graph and the card sidecar.
    max_abs_error : dict
        ``{"encoder": err, "field": err}`` from the parity check (empty if it was skipped).
    batch_sizes : tuple of int
        Batch sizes the parity check tried.
    opset : int
        ONNX opset of both graphs.
    tol : float
        Tolerance of the parity check.
    seconds : float
        Wall time of the export including the check.
    """

    field: Path
    encoder: Path
    card: Path
    max_abs_error: dict = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = ()
    opset: int = 18
    tol: float = 1e-4
    seconds: float = 0.0

    def summary(self) -> str:
        """Human-readable lines for the command line."""
        lines = [f"wrote {self.field}", f"wrote {self.encoder}", f"wrote {self.card}"]
        if self.max_abs_error:
            errs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_error.items())
            lines.append(f"parity (max abs error, batches {list(self.batch_sizes)}): {errs} <= tol {self.tol:g}")
        else:
            lines.append("parity check skipped")
        lines.append(f"opset {self.opset}, {self.seconds:.1f} s")
        return "\n".join(lines)


class _FieldGraph(nn.Module):
    """The field with the graph's fixed input names (and, for SSB, a required label)."""

    def __init__(self, model: SegModel):
        super().__init__()
        self.field = model.field

    def forward(self, x, t, features):
        return self.field(x, t, features)


class _LabelledFieldGraph(_FieldGraph):
    def forward(self, x, t, features, label):
        return self.field(x, t, features, label)


def _check_compatible(model: SegModel, card: ModelCard, out_path: Path) -> bool:
    """Validate card against network; return whether the field graph takes a label."""
    cfg = model.cfg
    if out_path.suffix != ".onnx" or out_path.name.endswith(".encoder.onnx"):
        raise InputError(f"export destination {out_path} must be a NAME.onnx file (not .encoder.onnx).")
    if not out_path.parent.is_dir():
        raise InputError(f"export folder {out_path.parent} does not exist: create it first.")
    if card.in_channels != cfg.in_channels or card.feature_channels != cfg.base:
        raise ModelCardError(
            f"model card of {out_path.name} says in_channels={card.in_channels}, feature_channels="
            f"{card.feature_channels} but the network has {cfg.in_channels}, {cfg.base}: fix the card."
        )
    if card.tile % cfg.size_multiple:
        raise ModelCardError(f"model card tile={card.tile} is not a multiple of {cfg.size_multiple}: fix the card.")
    with_label = card.kind == "ssb"
    if with_label != (cfg.num_labels > 0):
        raise ModelCardError(
            f"a {card.kind!r} model for {out_path.name} needs num_labels "
            f"{'>= 1 (label 0 = null)' if with_label else '= 0'} but the network has {cfg.num_labels}."
        )
    return with_label


EXPORTERS = ("dynamo", "torchscript")


def _export_graph(module: nn.Module, args: tuple, names: list[str], dynamic: dict, path: Path,
                  card_json: str, opset: int, exporter: str = "dynamo") -> None:
    """Export ``module`` with ``exporter`` and save ``path`` with the card in the metadata.

    ``dynamo`` (the default) traces with ``torch.export`` and runs the onnxscript optimiser; ``torchscript``
    uses PyTorch's older tracing exporter, which is ~10x faster on small nets (benchmarks/bench_export.py) but
    deprecated upstream. Both graphs are checked against PyTorch by the same parity check.
    """
    out_name = "out" if names[0] == "x" else "features"
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    # the exporters' own warnings (axis renaming, deprecated internals) are not actionable for a user; the
    # parity check that follows is what tells whether the graph is right
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(
                module, args, input_names=names, output_names=[out_name],
                opset_version=opset, dynamo=True, dynamic_shapes=dynamic, external_data=False, verbose=False,
            )
            prog.model.metadata_props[METADATA_KEY] = card_json
            prog.save(str(path), external_data=n_bytes > _SINGLE_FILE_LIMIT)
            return
        import onnx

        axes = {n: {a: {0: "batch", 2: "height", 3: "width"}[a] for a in d} for n, d in dynamic.items()}
        axes[out_name] = {0: "batch", 2: "height", 3: "width"}
        raw = path.with_name(path.name + ".raw")
        torch.onnx.export(module, args, str(raw), input_names=names, output_names=[out_name],
                          opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    graph = onnx.load(str(raw))
    raw.unlink()
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card_json
    big = n_bytes > _SINGLE_FILE_LIMIT
    onnx.save_model(graph, str(path), save_as_external_data=big, location=f"{path.name}.data" if big else None)


def _write_graphs(model: SegModel, card: ModelCard, tmp: Path, name: str, opset: int, with_label: bool,
                  exporter: str = "dynamo") -> None:
    cfg, side = model.cfg, card.tile
    k = cfg.size_multiple
    batch = torch.export.Dim("batch", min=1, max=4096)
    h = torch.export.Dim("h", min=1, max=16384 // k)
    w = torch.export.Dim("w", min=1, max=16384 // k)
    spatial = {0: batch, 2: k * h, 3: k * w}
    card_json = card.to_json()
    image = torch.rand(2, cfg.in_channels, side, side) * 2 - 1
    _export_graph(model.encoder, (image,), ["image"], {"image": spatial}, tmp / f"{name}.encoder.onnx",
                  card_json, opset, exporter)
    x, t = torch.randn(2, cfg.state_channels, side, side), torch.rand(2)
    feats = torch.randn(2, cfg.base, side, side)
    args, names = (x, t, feats), ["x", "t", "features"]
    dynamic = {"x": spatial, "t": {0: batch}, "features": spatial}
    graph = _FieldGraph(model)
    if with_label:
        args, names, graph = (*args, torch.tensor([0, 1])), [*names, "label"], _LabelledFieldGraph(model)
        dynamic["label"] = {0: batch}
    _export_graph(graph, args, names, dynamic, tmp / f"{name}.onnx", card_json, opset, exporter)
    (tmp / f"{name}.card.json").write_text(card.to_json() + "\n")


def export_model(
    model: SegModel,
    card: ModelCard,
    out_path: str | Path,
    *,
    opset: int = 18,
    tol: float = 1e-4,
    check: bool = True,
    batch_sizes: tuple[int, ...] = (1, 3),
    exporter: str = "dynamo",
) -> ExportReport:
    """Export ``model`` to ``NAME.onnx`` + ``NAME.encoder.onnx`` + ``NAME.card.json`` and check parity.

    Parameters
    ----------
    model : SegModel
        The network (not modified; a CPU float32 copy is exported).
    card : ModelCard
        Its model card; ``version`` is filled with the running segflow version if empty.
    out_path : str or Path
        Destination of the field graph, ``NAME.onnx``.
    opset : int
        ONNX opset (>= 17).
    tol : float
        Largest acceptable max abs difference between PyTorch and ONNX Runtime.
    check : bool
        Run the parity check.
    batch_sizes : tuple of int
        Batch sizes for the parity check (at the card's tile; one more run at a larger tile checks dynamic H/W).
    exporter : {"dynamo", "torchscript"}
        PyTorch exporter: ``dynamo`` (default, ``torch.export`` + onnxscript optimiser) or ``torchscript`` (the
        older tracer: much faster, deprecated upstream). The parity check applies to both.

    Returns
    -------
    ExportReport

    Raises
    ------
    ParityError
        If a graph differs by more than ``tol``; nothing is written then.
    ModelCardError, InputError
        If the card does not fit the network or the destination is unusable.
    """
    start = time.perf_counter()
    out_path = Path(out_path)
    with_label = _check_compatible(model, card, out_path)
    if opset < 17:
        raise InputError(f"opset {opset} is too old for {out_path.name}: use 17 or newer.")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter {exporter!r} for {out_path.name} is unknown: use one of {', '.join(EXPORTERS)}.")
    if not card.version:
        card = card.replace(version=segflow.__version__)
    # the exported network's architecture, so a card alone can rebuild it (benchmarks, audits)
    card = card.replace(extra={**card.extra, "net": model.cfg.to_dict()})
    model = copy.deepcopy(model).float().cpu().eval()
    name = out_path.name[: -len(".onnx")]
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out_path.parent))
    try:
        _write_graphs(model, card, tmp, name, opset, with_label, exporter)
        errors = {}
        if check:
            errors = parity_errors(
                model, tmp / f"{name}.onnx", tmp / f"{name}.encoder.onnx", tile=card.tile,
                batch_sizes=batch_sizes, extra_sizes=(card.tile + model.cfg.size_multiple,), with_label=with_label,
            )
            check_parity(errors, tol, where=f"export of {out_path}")
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == f"{name}.onnx"):  # field graph last
            item.replace(out_path.parent / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    d = out_path.parent
    return ExportReport(
        field=out_path, encoder=d / f"{name}.encoder.onnx", card=d / f"{name}.card.json", max_abs_error=errors,
        batch_sizes=tuple(batch_sizes) if check else (), opset=opset, tol=tol, seconds=time.perf_counter() - start,
    )


def export_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    *,
    use_ema: bool = True,
    expect_kind: str | None = None,
    **kwargs,
) -> ExportReport:
    """Export a training checkpoint: rebuild the network from its ``net`` entry, load weights, export.

    Parameters
    ----------
    ckpt_path : str or Path
        Checkpoint written by ``trainer train`` (loaded with ``weights_only=True``).
    out_path : str or Path
        Destination ``NAME.onnx``.
    use_ema : bool
        Export the EMA weights (default) or the raw ones.
    expect_kind : {"flowsdf", "ssb"} or None
        Refuse checkpoints of another kind.
    **kwargs
        Passed to :func:`export_model` (``opset``, ``tol``, ``check``, ``batch_sizes``, ``exporter``).
    """
    model, card = model_from_checkpoint(ckpt_path, use_ema=use_ema, expect_kind=expect_kind)
    extra = {**card.extra, "checkpoint": Path(ckpt_path).name, "weights": "ema" if use_ema else "raw"}
    return export_model(model, card.replace(extra=extra), out_path, **kwargs)
