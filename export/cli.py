"""``trainer export``: checkpoint -> ``NAME.onnx`` + ``NAME.encoder.onnx`` + ``NAME.card.json``.

The trainer command line registers this module as its ``export`` subcommand through :func:`add_arguments`
and :func:`run`; errors are :class:`segflow.errors.SegflowError` and are printed as one sentence there.
"""

from __future__ import annotations

import argparse

HELP = "export a checkpoint to ONNX (encoder + field graphs with the model card), parity-checked"
DESCRIPTION = """\
Export a training checkpoint as two ONNX graphs and a card:

  trainer export --checkpoint runs/lite/last.pt --out models/flowsdf-lite.onnx

writes models/flowsdf-lite.onnx (vector field), models/flowsdf-lite.encoder.onnx (image encoder) and
models/flowsdf-lite.card.json, after checking that ONNX Runtime reproduces PyTorch on random inputs.
`runtime segment --engine models/flowsdf-lite.onnx` then finds all three.
"""


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--batch-sizes {text!r} must be comma-separated integers") from exc
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes {text!r} must list positive integers")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``trainer export`` flags to ``parser``."""
    parser.add_argument("checkpoint_pos", nargs="?", metavar="CKPT", help="checkpoint (.pt) from trainer train")
    parser.add_argument("--checkpoint", dest="checkpoint", metavar="CKPT", help="the same, as a flag")
    parser.add_argument("--out", required=True, metavar="NAME.onnx", help="destination of the field graph")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false",
                        help="export the raw weights instead of the EMA weights")
    parser.add_argument("--kind", choices=("flowsdf", "ssb"), default=None,
                        help="refuse a checkpoint of another kind")
    parser.add_argument("--tol", type=float, default=1e-4, help="parity tolerance, max abs error (default 1e-4)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18, at least 17)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 3),
                        help="batch sizes of the parity check, comma-separated (default 1,3)")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="PyTorch exporter: dynamo (default; torch.export + graph optimiser) or torchscript "
                             "(the older tracer, ~10x faster, deprecated upstream); both are parity-checked")


def run(args: argparse.Namespace) -> int:
    """Export as the parsed ``args`` say; print what was written; return 0."""
    from segflow.export.onnx import export_checkpoint

    from segflow.errors import InputError

    ckpt = args.checkpoint or args.checkpoint_pos
    if not ckpt:
        raise InputError("no checkpoint given: pass `trainer export CKPT --out NAME.onnx`.")
    report = export_checkpoint(
        ckpt, args.out, use_ema=args.use_ema, expect_kind=args.kind, opset=args.opset, tol=args.tol,
        check=args.check, batch_sizes=args.batch_sizes, exporter=args.exporter,
    )
    print(report.summary())
    return 0
